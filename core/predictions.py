"""The predictions table: one row per sample for one checkpoint, stored as Parquet under a content cache key."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

SCALAR_COLUMNS = ("sample_id", "split", "label", "label_idx", "pred", "pred_idx", "confidence", "loss", "specimen_id")
_META_KEY = b"taxalens"


@dataclass(frozen=True)
class PredictionTable:
    """Predictions of one checkpoint on one dataset.

    `frame` holds the scalar columns (`sample_id`, `split`, `label`, `label_idx` (-1 when the dataset's label is not
    one of the model's classes), `pred`, `pred_idx`, `confidence`, `loss` (cross-entropy of the given label, NaN when
    `label_idx` is -1), `specimen_id`); `pred_probs` has shape `(N, K)` in `class_names` order; `embeddings` has
    shape `(N, D)` (penultimate features; D may be 0).
    """

    frame: pd.DataFrame
    pred_probs: np.ndarray  # (N, K) float32, rows sum to 1
    embeddings: np.ndarray  # (N, D) float32
    class_names: tuple[str, ...]  # the checkpoint's classes, in output order
    meta: dict  # checkpoint name/sha256, dataset fingerprint, preprocessing, created time

    def __len__(self) -> int:
        return len(self.frame)

    def subset(self, mask: np.ndarray | pd.Series) -> PredictionTable:
        """Rows where boolean `mask` (length N) is true, arrays sliced alike."""
        mask = np.asarray(mask, dtype=bool)
        return PredictionTable(
            frame=self.frame[mask].reset_index(drop=True),
            pred_probs=self.pred_probs[mask],
            embeddings=self.embeddings[mask],
            class_names=self.class_names,
            meta=self.meta,
        )

    def for_split(self, split: str | None) -> PredictionTable:
        """Rows of one split; `None` or `"all"` keeps every row."""
        if split in (None, "all"):
            return self
        return self.subset(self.frame["split"].to_numpy() == split)


def build_prediction_table(
    sample_ids: list[str],
    pred_probs: np.ndarray,
    embeddings: np.ndarray,
    *,
    labels: list[str],
    splits: list[str],
    specimen_ids: list[str],
    class_names: tuple[str, ...] | list[str],
    meta: dict | None = None,
) -> PredictionTable:
    """Assemble a table from model outputs; derives `pred`, `confidence`, `label_idx` and `loss`."""
    pred_probs = np.asarray(pred_probs, dtype=np.float32)
    n, k = pred_probs.shape
    if len(class_names) != k:
        raise ValueError(f"pred_probs has {k} columns but {len(class_names)} class names were given")
    index = {name: i for i, name in enumerate(class_names)}
    label_idx = np.array([index.get(label, -1) for label in labels], dtype=np.int64)
    pred_idx = pred_probs.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    safe = np.clip(label_idx, 0, None)
    given = pred_probs[np.arange(n), safe] if n else np.zeros(0, dtype=np.float32)
    loss = np.where(label_idx >= 0, -np.log(np.clip(given, 1e-12, 1.0)), np.nan)
    frame = pd.DataFrame(
        {
            "sample_id": list(sample_ids),
            "split": list(splits),
            "label": list(labels),
            "label_idx": label_idx,
            "pred": [class_names[i] for i in pred_idx],
            "pred_idx": pred_idx.astype(np.int64),
            "confidence": pred_probs.max(axis=1) if n else np.zeros(0, dtype=np.float32),
            "loss": loss.astype(np.float32),
            "specimen_id": list(specimen_ids),
        }
    )
    embeddings = np.asarray(embeddings, dtype=np.float32)
    width = embeddings.shape[-1] if embeddings.ndim == 2 else 0
    embeddings = embeddings.reshape(n, -1) if n else embeddings.reshape(0, width)
    return PredictionTable(frame, pred_probs, embeddings, tuple(class_names), dict(meta or {}))


def table_for_samples(
    samples: pd.DataFrame,
    pred_probs: np.ndarray,
    embeddings: np.ndarray,
    *,
    class_names: tuple[str, ...] | list[str],
    meta: dict | None = None,
) -> PredictionTable:
    """A table whose `sample_id`, `label`, `split` and `specimen_id` come from the dataset rows `samples`, one row per
    row of `pred_probs` `(N, K)` and `embeddings` `(N, D)`, in the same order."""
    return build_prediction_table(
        samples["sample_id"].tolist(),
        pred_probs,
        embeddings,
        labels=samples["label"].tolist(),
        splits=samples["split"].tolist(),
        specimen_ids=samples["specimen_id"].tolist(),
        class_names=class_names,
        meta=meta,
    )


def relabel_table(table: PredictionTable, samples: pd.DataFrame) -> PredictionTable:
    """Refresh `label`, `split` and `specimen_id` from the dataset's current `samples` (labels change, images don't).

    Rows whose sample is no longer in the dataset are dropped.
    """
    current = samples.set_index("sample_id")
    keep = table.frame["sample_id"].isin(current.index).to_numpy()
    table = table.subset(keep) if not keep.all() else table
    rows = current.loc[table.frame["sample_id"]].reset_index()
    return table_for_samples(rows, table.pred_probs, table.embeddings, class_names=table.class_names, meta=table.meta)


def table_token(table: PredictionTable, *parts: str) -> str:
    """A content hash of a predictions table for cache keys (pass the table itself unhashed, as `_table`): labels,
    predictions, confidences, the first MB of the probabilities, the class names and `parts` (split, checkpoint
    name). Numeric columns only: about 20 ms at 100,000 rows, where hashing the sample-id strings too would take
    ten times that on every rerun, and the whole probability matrix far more."""
    digest = hashlib.blake2b(digest_size=16)
    frame = table.frame
    for column in ("label_idx", "pred_idx", "confidence"):
        digest.update(np.ascontiguousarray(frame[column].to_numpy()).tobytes())
    digest.update(np.ascontiguousarray(table.pred_probs).reshape(-1).view(np.uint8)[:1_000_000].tobytes())
    digest.update("\0".join((*parts, *table.class_names, str(len(table)))).encode())
    return digest.hexdigest()


def prediction_cache_key(checkpoint_sha256: str, dataset_fingerprint: str, preprocessing: dict) -> str:
    """Key of a cached table: checkpoint content + dataset content + preprocessing, as one sha256 (first 24 hex)."""
    blob = json.dumps(
        {"checkpoint": checkpoint_sha256, "dataset": dataset_fingerprint, "preprocessing": preprocessing},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


PROBS_DTYPES = {"float32": np.float32, "float16": np.float16}  # how probabilities may be stored


def save_predictions(table: PredictionTable, path: str | Path, *, probs_dtype: str = "float32") -> Path:
    """Write `table` to Parquet atomically (a temp file renamed into place); returns the path.

    `probs_dtype`: "float32", or "float16" for large tables (half the bytes; every probability kept to about 3
    significant digits, so the full vector stays available for ranking and top-k). `load_predictions` returns
    float32 either way."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n, k = table.pred_probs.shape
    arrow = predictions_arrow(table, probs_dtype=probs_dtype)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".parquet.tmp")
    os.close(fd)
    try:
        pq.write_table(arrow, tmp)
        os.replace(tmp, path)
        logger.debug("wrote %d predictions (%d classes) to %s", n, k, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def predictions_arrow(table: PredictionTable, *, probs_dtype: str = "float32") -> pa.Table:
    """`table` as the Arrow table `save_predictions` writes (also for writing a large table in row groups with a
    `pyarrow.parquet.ParquetWriter`: every part of one table gets the same schema)."""
    if probs_dtype not in PROBS_DTYPES:
        raise ValueError(f"probs_dtype must be one of {sorted(PROBS_DTYPES)}, got {probs_dtype!r}")
    n, k = table.pred_probs.shape
    d = table.embeddings.shape[1]
    columns = {name: pa.array(table.frame[name].to_numpy()) for name in SCALAR_COLUMNS}
    flat = table.pred_probs.reshape(-1).astype(PROBS_DTYPES[probs_dtype], copy=False)
    columns["probs"] = pa.FixedSizeListArray.from_arrays(pa.array(flat), k)
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(table.embeddings.reshape(-1)), max(d, 1)) \
        if d else pa.array([None] * n, type=pa.null())
    meta = {"class_names": list(table.class_names), "embedding_dim": d, **table.meta}
    schema = pa.schema([(name, col.type) for name, col in columns.items()], metadata={_META_KEY: json.dumps(meta)})
    return pa.Table.from_arrays(list(columns.values()), schema=schema)


def load_predictions(path: str | Path) -> PredictionTable:
    """Read a table written by `save_predictions`."""
    meta = json.loads(pq.read_schema(path).metadata[_META_KEY])
    class_names = tuple(meta.pop("class_names"))
    d = int(meta.pop("embedding_dim"))
    probs_column = pq.read_table(path, columns=["probs"]).column("probs")
    n = len(probs_column)
    pred_probs = np.empty((n, len(class_names)), dtype=np.float32)
    start = 0
    for chunk in probs_column.chunks:  # float16 or float32 on disk; never the whole matrix twice in memory
        values = chunk.flatten().to_numpy(zero_copy_only=False).reshape(-1, len(class_names))
        pred_probs[start:start + len(values)] = values
        start += len(values)
    del probs_column
    frame, embeddings = read_frame_and_embeddings(path, n, d)
    return PredictionTable(frame, pred_probs, embeddings, class_names, meta)


def read_frame_and_embeddings(path: str | Path, n: int, d: int) -> tuple[pd.DataFrame, np.ndarray]:
    """The scalar columns and the `(n, d)` float32 embeddings of the predictions file `path` (its probabilities
    are not read)."""
    arrow = pq.read_table(path, columns=[*SCALAR_COLUMNS, "embedding"])
    if d:
        flat = arrow.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        embeddings = flat.reshape(n, d).astype(np.float32, copy=False)
    else:
        embeddings = np.zeros((n, 0), dtype=np.float32)
    return arrow.select(list(SCALAR_COLUMNS)).to_pandas(), embeddings
