"""Large predictions tables without their float32 matrix: float16 probabilities memory-mapped from a `.npy` beside
the Parquet file, and the compact columns the pages need (prediction, confidence, the label's probability) derived
from them once and stored beside it too.

A table stored with float16 probabilities (`save_predictions(probs_dtype="float16")`, the million-image format)
takes 46 s to decode from Parquet at 1M x 1,000 and 4 GB as float32; memory-mapped it opens at once, and only the
rows a page reads (a gallery's 24, a cell's images) come from disk. A large float32 table (from
`MEMMAP_MIN_VALUES` probabilities: 100,000 images x 200 classes) is memory-mapped the same way, as float32: reading
its matrix out of Parquet was most of a page's first visit after a restart (0.8 s at 100,000 x 300). Smaller float32
tables load as before. The sidecars are written on the first open (or by `write_sidecars` right after predicting),
atomically, and are valid while the Parquet file keeps its size and mtime; a folder that cannot be written falls
back to reading the probabilities into memory (float16 tables as float16).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.predictions import PredictionTable, load_predictions, read_frame_and_embeddings

logger = logging.getLogger(__name__)

TABLE_META_KEY = b"taxalens"  # the schema metadata key `core.predictions.save_predictions` writes
PROBS_SUFFIX = ".probs16.npy"  # beside `<name>.parquet`: the (N, K) float16 probabilities, row order of the table
PROBS32_SUFFIX = ".probs32.npy"  # the same for a large float32 table
MEMMAP_MIN_VALUES = 20_000_000  # a float32 table is memory-mapped from this many probabilities (N x K)
_STORED = {pa.float16(): np.float16, pa.float32(): np.float32}  # Parquet value type -> the memory map's dtype
COMPACT_SUFFIX = ".compact.npz"  # beside it: CompactColumns plus the Parquet file's (size, mtime_ns)
CHUNK_ROWS = 20_000  # rows per pass when deriving columns (20,000 x 1,000 float32: 80 MB)


@dataclass(frozen=True)
class CompactColumns:
    """What the pages need of an `(N, K)` probability matrix, derived in one chunked pass."""

    pred_idx: np.ndarray  # (N,) int64: argmax of each row (the first on ties, as numpy's argmax)
    confidence: np.ndarray  # (N,) float32: the row's largest probability
    label_idx: np.ndarray  # (N,) int64: the class index `label_prob` was read at (-1: no such class)
    label_prob: np.ndarray  # (N,) float32: probability of `label_idx` (NaN where it is -1)

    def loss(self) -> np.ndarray:
        """(N,) float32 cross-entropy of the label, NaN where `label_idx` is -1 (as `build_prediction_table`)."""
        safe = np.clip(np.nan_to_num(self.label_prob, nan=1.0), 1e-12, 1.0)
        return np.where(self.label_idx >= 0, -np.log(safe), np.nan).astype(np.float32)


def compact_columns(pred_probs: np.ndarray, label_idx: np.ndarray, *, chunk: int = CHUNK_ROWS) -> CompactColumns:
    """Compact columns of `pred_probs` `(N, K)` (any float dtype, a memory map too) for labels `label_idx` `(N,)`
    (-1: not a model class), reading `chunk` rows at a time."""
    label_idx = np.asarray(label_idx, dtype=np.int64)
    n = len(pred_probs)
    if len(label_idx) != n:
        raise ValueError(f"label_idx has {len(label_idx)} rows but pred_probs has {n}")
    pred_idx = np.zeros(n, np.int64)
    confidence = np.zeros(n, np.float32)
    label_prob = np.full(n, np.nan, np.float32)
    for start in range(0, n, chunk):
        block = np.asarray(pred_probs[start:start + chunk], dtype=np.float32)
        rows = np.arange(len(block))
        best = block.argmax(axis=1)
        pred_idx[start:start + len(block)] = best
        confidence[start:start + len(block)] = block[rows, best]
        labels = label_idx[start:start + len(block)]
        known = labels >= 0
        label_prob[start:start + len(block)][known] = block[rows[known], labels[known]]
    return CompactColumns(pred_idx, confidence, label_idx, label_prob)


def sidecar_paths(path: str | Path, *, dtype: type = np.float16) -> tuple[Path, Path]:
    """(probabilities `.npy`, compact columns `.npz`) beside the predictions Parquet file `path` whose probabilities
    are stored as `dtype` (float16, or float32 for a large float32 table)."""
    path = Path(path)
    stem = path.name.removesuffix(".parquet")
    suffix = PROBS32_SUFFIX if np.dtype(dtype) == np.float32 else PROBS_SUFFIX
    return path.with_name(stem + suffix), path.with_name(stem + COMPACT_SUFFIX)


def _stamp(path: Path) -> np.ndarray:
    info = path.stat()
    return np.array([info.st_size, info.st_mtime_ns], dtype=np.int64)


def _read_meta(path: Path) -> tuple[dict, pa.DataType]:
    schema = pq.read_schema(path)
    return json.loads(schema.metadata[TABLE_META_KEY]), schema.field("probs").type.value_type


def stores_float16(path: str | Path) -> bool:
    """Whether the predictions file at `path` holds its probabilities as float16 (the memory-mapped format)."""
    return _read_meta(Path(path))[1] == pa.float16()


def write_sidecars(path: str | Path, *, chunk: int = CHUNK_ROWS) -> tuple[Path, Path]:
    """Write the probabilities (as stored: float16 or float32) and the compact columns of the predictions file `path`
    beside it (once per file: about a minute at 1M x 1,000, reading the Parquet file in batches of `chunk` rows).
    Raises `OSError` when the folder cannot be written, `ValueError` for a file of another probability type."""
    path = Path(path)
    meta, value_type = _read_meta(path)
    if value_type not in _STORED:
        raise ValueError(f"{path} stores {value_type} probabilities; sidecars are for float16 or float32 tables")
    dtype = _STORED[value_type]
    k = len(meta["class_names"])
    parquet = pq.ParquetFile(path)
    n = parquet.metadata.num_rows
    stamp = _stamp(path)
    probs_path, compact_path = sidecar_paths(path, dtype=dtype)
    tmp_probs = probs_path.with_name(f"{probs_path.name}.{os.getpid()}.tmp")
    tmp_compact = compact_path.with_name(f"{compact_path.name}.{os.getpid()}.tmp.npz")
    try:
        out = np.lib.format.open_memmap(tmp_probs, mode="w+", dtype=dtype, shape=(n, k))
        start = 0
        for batch in parquet.iter_batches(batch_size=chunk, columns=["probs"]):
            values = batch.column(0).flatten().to_numpy(zero_copy_only=False).reshape(-1, k)
            out[start:start + len(values)] = values
            start += len(values)
        out.flush()
        label_idx = parquet.read(columns=["label_idx"]).column(0).to_numpy()
        compact = compact_columns(out, label_idx, chunk=chunk)
        del out
        np.savez(tmp_compact, stamp=stamp, pred_idx=compact.pred_idx, confidence=compact.confidence,
                 label_idx=compact.label_idx, label_prob=compact.label_prob)
        os.replace(tmp_probs, probs_path)
        os.replace(tmp_compact, compact_path)  # last: its stamp makes the pair valid
    finally:
        for tmp in (tmp_probs, tmp_compact):
            if tmp.exists():
                tmp.unlink()
    logger.info("wrote memory-mapped probabilities and compact columns of %s (%d x %d)", path.name, n, k)
    return probs_path, compact_path


def _read_sidecars(path: Path, n: int, k: int, dtype: type = np.float16) -> tuple[np.ndarray, CompactColumns] | None:
    """The memory-mapped probabilities and compact columns when both are present and belong to `path` as it is."""
    probs_path, compact_path = sidecar_paths(path, dtype=dtype)
    if not (probs_path.is_file() and compact_path.is_file()):
        return None
    try:
        with np.load(compact_path) as stored:
            if not np.array_equal(stored["stamp"], _stamp(path)):
                return None
            compact = CompactColumns(stored["pred_idx"], stored["confidence"], stored["label_idx"],
                                     stored["label_prob"])
        probs = np.load(probs_path, mmap_mode="r")
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("ignoring unreadable sidecars of %s (%s)", path.name, exc)
        return None
    if probs.shape != (n, k) or probs.dtype != dtype or len(compact.pred_idx) != n:
        return None
    return probs, compact


def load_table(path: str | Path) -> PredictionTable:
    """The predictions table at `path`. A float16 file comes with `pred_probs` a read-only float16 memory map
    (sidecars written on the first open) and `pred`, `pred_idx`, `confidence`, `loss` from the compact columns:
    the same values `load_predictions` derives from the whole matrix. A float32 file of at least `MEMMAP_MIN_VALUES`
    probabilities the same way with a float32 memory map; a smaller one: `load_predictions(path)`."""
    path = Path(path)
    meta, value_type = _read_meta(path)
    dtype = _STORED.get(value_type)
    class_names = tuple(meta.pop("class_names"))
    d = int(meta.pop("embedding_dim"))
    n, k = pq.ParquetFile(path).metadata.num_rows, len(class_names)
    if dtype is None or (dtype is np.float32 and n * k < MEMMAP_MIN_VALUES):
        return load_predictions(path)
    found = _read_sidecars(path, n, k, dtype)
    if found is None:
        try:
            write_sidecars(path)
            found = _read_sidecars(path, n, k, dtype)
        except OSError as exc:
            logger.warning("cannot write the sidecars of %s (%s); reading its probabilities into memory", path, exc)
    if found is None and dtype is np.float32:  # not writable: as before
        return load_predictions(path)
    if found is None:  # not writable: float16 in memory, derived here
        table = load_predictions(path)
        probs = table.pred_probs.astype(np.float16)
        compact = compact_columns(probs, table.frame["label_idx"].to_numpy())
        found = (probs, compact)
    probs, compact = found
    frame, embeddings = read_frame_and_embeddings(path, n, d)
    frame["pred_idx"] = compact.pred_idx
    frame["pred"] = pd.Series(np.asarray(class_names, dtype=object)[compact.pred_idx], dtype=frame["label"].dtype)
    frame["confidence"] = compact.confidence
    frame["loss"] = compact.loss()
    return PredictionTable(frame, probs, embeddings, class_names, meta)


def relabel(table: PredictionTable, samples: pd.DataFrame) -> PredictionTable:
    """`core.predictions.relabel_table` without touching the probability matrix: `label`, `split`, `specimen_id`
    from the dataset's `samples`, `label_idx` and `loss` recomputed only for rows whose label changed (a few
    probabilities read), `pred`, `pred_idx` and `confidence` kept (they depend on the probabilities alone).
    `table`'s frame must agree with its probabilities (as a loaded table's does). Rows no longer in the dataset
    are dropped."""
    ids = table.frame["sample_id"]
    given = samples["sample_id"]
    if len(given) == len(ids) and _same(given, ids):
        rows = samples.reset_index(drop=True)  # the usual case: the table was predicted in the dataset's order
    else:
        current = samples.set_index("sample_id")
        keep = ids.isin(current.index).to_numpy()
        table = table.subset(keep) if not keep.all() else table
        rows = current.loc[table.frame["sample_id"]].reset_index()
    old = table.frame
    label_idx = old["label_idx"].to_numpy(dtype=np.int64).copy()
    relabelled = np.flatnonzero(~_equal(rows["label"], old["label"]))
    label_idx[relabelled] = pd.Index(table.class_names).get_indexer(rows["label"].iloc[relabelled])
    loss = old["loss"].to_numpy(dtype=np.float32).copy()
    changed = relabelled[label_idx[relabelled] != old["label_idx"].to_numpy()[relabelled]]
    if len(changed):
        known = changed[label_idx[changed] >= 0]
        loss[changed] = np.nan
        given_prob = np.asarray(table.pred_probs[known, label_idx[known]], dtype=np.float32)
        loss[known] = -np.log(np.clip(given_prob, 1e-12, 1.0))
    frame = pd.DataFrame({  # string columns passed as their arrays: no conversion of a million strings
        "sample_id": rows["sample_id"].array,
        "split": rows["split"].array,
        "label": rows["label"].array,
        "label_idx": label_idx,
        "pred": old["pred"].array,
        "pred_idx": old["pred_idx"].to_numpy(dtype=np.int64),
        "confidence": old["confidence"].to_numpy(),
        "loss": loss,
        "specimen_id": rows["specimen_id"].array,
    })
    return PredictionTable(frame, table.pred_probs, table.embeddings, table.class_names, table.meta)


def _equal(a: pd.Series, b: pd.Series) -> np.ndarray:
    """Element-wise equality of two equally long columns as a bool array (missing values never equal)."""
    return (a.reset_index(drop=True) == b.reset_index(drop=True)).fillna(False).to_numpy(dtype=bool)


def _same(a: pd.Series, b: pd.Series) -> bool:
    return bool(_equal(a, b).all())


def open_table(path: str | Path, samples: pd.DataFrame) -> PredictionTable:
    """The table at `path` under the dataset's current labels (`load_table`, then `relabel`)."""
    return relabel(load_table(path), samples)
