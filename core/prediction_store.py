"""The per-sample prediction store: each image's probabilities and embedding under its file stamp (size, mtime_ns),
one folder per checkpoint + preprocessing, so a grown or changed dataset predicts only its new or changed images.

A store folder holds append-only Parquet parts (one per prediction run and rank); reading keeps each sample's latest
row. The predictions table the pages read (`core.predictions`) is assembled from it for the current dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

STORE_DIR = "store"  # under `<workspace>/.taxalens/predictions/`
PART_GLOB = "part-*.parquet"
_META_KEY = b"taxalens-store"


@dataclass(frozen=True)
class StoredPredictions:
    """Rows of a store, one per sample id (its latest). `reason` is "" for a decoded image, else why it failed
    (`detail` says more) and its probabilities are zeros."""

    sample_ids: np.ndarray  # (M,) object
    sizes: np.ndarray  # (M,) int64 file size when predicted
    mtimes: np.ndarray  # (M,) int64 file mtime_ns when predicted
    pred_probs: np.ndarray  # (M, K) float32
    embeddings: np.ndarray  # (M, D) float32
    reasons: np.ndarray  # (M,) object
    details: np.ndarray  # (M,) object
    class_names: tuple[str, ...]  # output order of `pred_probs`

    def __len__(self) -> int:
        return len(self.sample_ids)

    def positions(self, sample_ids: Sequence[str] | pd.Series, sizes: np.ndarray, mtimes: np.ndarray) -> np.ndarray:
        """For each given sample, its row here when the stamp matches (same size and mtime), else -1: `(N,)` int."""
        found = pd.Index(self.sample_ids).get_indexer(pd.Index(sample_ids))
        safe = np.where(found >= 0, found, 0)
        fresh = (found >= 0) & (self.sizes[safe] == sizes) & (self.mtimes[safe] == mtimes) if len(self) else \
            np.zeros(len(found), bool)
        return np.where(fresh, found, -1)

    def take(self, rows: np.ndarray) -> StoredPredictions:
        """The rows at positions `rows`."""
        return StoredPredictions(self.sample_ids[rows], self.sizes[rows], self.mtimes[rows], self.pred_probs[rows],
                                 self.embeddings[rows], self.reasons[rows], self.details[rows], self.class_names)


def model_cache_key(checkpoint_sha256: str, preprocessing: dict) -> str:
    """Key of a store: checkpoint content + preprocessing (no dataset), as one sha256 (first 24 hex)."""
    blob = json.dumps({"checkpoint": checkpoint_sha256, "preprocessing": preprocessing}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def store_folder(predictions_dir: str | Path, file_stem: str, model_key: str) -> Path:
    """The store of one checkpoint (`file_stem`: its name made file-safe) under one model key."""
    return Path(predictions_dir) / STORE_DIR / f"{file_stem}-{model_key}"


def file_stamps(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(sizes, mtime_ns) of `paths` as int64 arrays; -1 for a file that cannot be stat-ed."""
    sizes = np.full(len(paths), -1, np.int64)
    mtimes = np.full(len(paths), -1, np.int64)
    for i, path in enumerate(paths):
        try:
            info = os.stat(path)
        except OSError:
            continue
        sizes[i], mtimes[i] = info.st_size, info.st_mtime_ns
    return sizes, mtimes


def empty_store(class_names: Sequence[str], embedding_dim: int = 0) -> StoredPredictions:
    """A store with no rows."""
    return StoredPredictions(np.zeros(0, object), np.zeros(0, np.int64), np.zeros(0, np.int64),
                             np.zeros((0, len(class_names)), np.float32), np.zeros((0, embedding_dim), np.float32),
                             np.zeros(0, object), np.zeros(0, object), tuple(class_names))


def read_store(folder: str | Path, class_names: Sequence[str] | None = None) -> StoredPredictions | None:
    """Every part of the store `folder`, each sample's latest row; None when the folder holds no part. Parts
    written for other class names than `class_names` (when given) are ignored with a warning."""
    parts = sorted(Path(folder).glob(PART_GLOB))
    if not parts:
        return None
    frames, probs, feats, names = [], [], [], None
    for part in parts:
        try:
            arrow = pq.read_table(part)
            meta = json.loads(arrow.schema.metadata[_META_KEY])
        except (OSError, KeyError, ValueError, pa.ArrowException) as exc:
            logger.warning("ignoring the damaged prediction store part %s (%s); its samples are predicted again",
                           part, exc)
            continue
        part_names = tuple(meta["class_names"])
        if (class_names is not None and part_names != tuple(class_names)) or (names and part_names != names):
            logger.warning("ignoring prediction store part %s: written for other class names", part)
            continue
        names = part_names
        n, k, d = arrow.num_rows, len(part_names), int(meta["embedding_dim"])
        frames.append(arrow.select(["sample_id", "file_size", "file_mtime_ns", "reason", "detail"]).to_pandas())
        probs.append(arrow.column("probs").combine_chunks().flatten().to_numpy(zero_copy_only=False)
                     .reshape(n, k).astype(np.float32, copy=False))
        feats.append(arrow.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
                     .reshape(n, d).astype(np.float32, copy=False) if d else np.zeros((n, 0), np.float32))
    if not frames:
        return None
    frame = pd.concat(frames, ignore_index=True)
    width = max(f.shape[1] for f in feats)  # a part of failures only has no embedding width: zeros
    embeddings = np.concatenate([f if f.shape[1] == width else np.zeros((len(f), width), np.float32) for f in feats])
    latest = ~pd.Index(frame["sample_id"]).duplicated(keep="last")
    return StoredPredictions(frame["sample_id"].to_numpy(object)[latest], frame["file_size"].to_numpy()[latest],
                             frame["file_mtime_ns"].to_numpy()[latest], np.concatenate(probs)[latest],
                             embeddings[latest], frame["reason"].to_numpy(object)[latest],
                             frame["detail"].to_numpy(object)[latest], names)


def write_part(folder: str | Path, rows: StoredPredictions, *, tag: str = "0") -> Path | None:
    """Append `rows` to the store `folder` as a new part (atomically: written aside, then renamed); None when
    `rows` is empty. `tag` tells parts written at the same moment apart (the rank under torchrun)."""
    if not len(rows):
        return None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"part-{time.time_ns():020d}-{tag}.parquet"
    _write(path, rows)
    logger.debug("stored %d predictions in %s", len(rows), path)
    return path


def compact_store(folder: str | Path, keep: StoredPredictions) -> Path | None:
    """Replace every part of `folder` by one part holding `keep` (the folder is removed when `keep` is empty)."""
    folder = Path(folder)
    old = sorted(folder.glob(PART_GLOB))
    path = write_part(folder, keep, tag="compact") if len(keep) else None
    for part in old:
        part.unlink(missing_ok=True)
    if path is None and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return path


def _write(path: Path, rows: StoredPredictions) -> None:
    n, k = rows.pred_probs.shape
    d = rows.embeddings.shape[1]
    columns = {
        "sample_id": pa.array(rows.sample_ids.astype(str), pa.string()),
        "file_size": pa.array(rows.sizes, pa.int64()),
        "file_mtime_ns": pa.array(rows.mtimes, pa.int64()),
        "reason": pa.array(rows.reasons.astype(str), pa.string()),
        "detail": pa.array(rows.details.astype(str), pa.string()),
        "probs": pa.FixedSizeListArray.from_arrays(pa.array(rows.pred_probs.astype(np.float32).reshape(-1)), k),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(rows.embeddings.astype(np.float32).reshape(-1)), d)
        if d else pa.array([None] * n, type=pa.null()),
    }
    meta = {"class_names": list(rows.class_names), "embedding_dim": d}
    schema = pa.schema([(name, col.type) for name, col in columns.items()], metadata={_META_KEY: json.dumps(meta)})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600: others sharing the workspace must read it
    try:
        pq.write_table(pa.Table.from_arrays(list(columns.values()), schema=schema), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
