"""The dataset index: each image's check result cached under its file stamp (size, mtime_ns), so reopening a
workspace stats its files instead of decoding them, and only new or changed images are checked again; and the parsed
manifest, cached under the manifest's own stamp, so a reopen does not parse the CSV again."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

INDEX_NAME = "dataset-index.parquet"  # in the workspace cache folder (`.taxalens/`)
# How thoroughly a file was checked; a result at one level serves every request at that level or below.
VERIFY_LEVELS = {"none": 0, "header": 1, "full": 2}
INDEX_COLUMNS = ("sample_id", "size", "mtime_ns", "level", "reason", "detail")  # reason "" = usable


def empty_index() -> pd.DataFrame:
    """An index with no rows, in the column types `read_index` returns."""
    return pd.DataFrame({"sample_id": pd.Series([], dtype=object), "size": np.zeros(0, np.int64),
                         "mtime_ns": np.zeros(0, np.int64), "level": np.zeros(0, np.int8),
                         "reason": pd.Series([], dtype=object), "detail": pd.Series([], dtype=object)})


def read_index(path: str | Path | None) -> pd.DataFrame:
    """The index at `path` (`INDEX_COLUMNS`, one row per sample id); empty when there is none or it cannot be read
    (a damaged index only costs a re-check, so it is logged and ignored)."""
    if path is None or not Path(path).is_file():
        return empty_index()
    try:
        frame = _read_parquet(path).to_pandas()
    except (OSError, pa.ArrowException) as exc:
        logger.warning("ignoring the dataset index %s, which cannot be read (%s); every image is checked again",
                       path, exc)
        return empty_index()
    if tuple(frame.columns) != INDEX_COLUMNS:
        logger.warning("ignoring the dataset index %s: columns %s, expected %s", path, list(frame.columns),
                       list(INDEX_COLUMNS))
        return empty_index()
    return frame


def known_results(index: pd.DataFrame, sample_ids: pd.Series, sizes: np.ndarray, mtimes: np.ndarray,
                  level: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Which samples the index already answers: `(hit (N,) bool, reason (N,) object, detail (N,) object, level (N,)
    int8)` for the
    samples `sample_ids` whose current stamps are `sizes`/`mtimes` (int64, -1 for a missing file), checked at
    `level` (a `VERIFY_LEVELS` value). A hit needs the same id, size and mtime, and a check at `level` or above."""
    n = len(sample_ids)
    if index.empty or n == 0:
        return np.zeros(n, bool), np.full(n, "", object), np.full(n, "", object), np.full(n, level, np.int8)
    position = np.arange(n) if same_ids(index["sample_id"], sample_ids) else \
        pd.Index(index["sample_id"]).get_indexer(sample_ids)
    found = position >= 0
    safe = np.where(found, position, 0)
    levels = index["level"].to_numpy(np.int8)[safe]
    hit = (found & (index["size"].to_numpy()[safe] == sizes) & (index["mtime_ns"].to_numpy()[safe] == mtimes)
           & (levels >= level) & (sizes >= 0))
    reasons = np.where(hit, index["reason"].to_numpy(object)[safe], "").astype(object)
    details = np.where(hit, index["detail"].to_numpy(object)[safe], "").astype(object)
    return hit, reasons, details, np.where(hit, levels, np.int8(level)).astype(np.int8)


def same_ids(index_ids: pd.Series | pa.Array | pa.ChunkedArray, sample_ids: pd.Series | pa.Array | pa.ChunkedArray) \
        -> bool:
    """True when `index_ids` are exactly `sample_ids`, in that order (an index of an unchanged dataset, the stamps of
    its load): compared as Arrow strings, without a hash index or a Python string per id (a million ids: a second)."""
    if len(index_ids) != len(sample_ids):
        return False
    try:
        left, right = (pa.array(ids, type=pa.large_string()) for ids in (index_ids, sample_ids))
        same = pc.all(pc.equal(left, right), skip_nulls=False)  # a missing id on either side: not the same
    except (pa.ArrowException, TypeError):
        return False
    return same.as_py() is True


def _read_parquet(path: str | Path) -> pa.Table:
    """One Parquet file as a table (`pq.ParquetFile`: `pq.read_table` would import pyarrow.dataset, a cost on every
    server start's first page)."""
    with pq.ParquetFile(path) as handle:
        return handle.read()


def write_index(path: str | Path, frame: pd.DataFrame) -> bool:
    """Write `frame` (`INDEX_COLUMNS`) to `path` atomically; False (logged) when the folder is not writable, so a
    read-only workspace still opens, only without the speed-up."""
    table = pa.Table.from_pandas(frame.loc[:, list(INDEX_COLUMNS)], preserve_index=False)
    return _write_atomic(path, table, "dataset index")


def _write_atomic(path: str | Path, table: pa.Table, what: str) -> bool:
    """Write `table` to `path` through a temporary file renamed into place; False (logged) on an OSError."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        os.close(fd)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600: others sharing the workspace must read it
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        logger.warning("could not write the %s %s (%s); the next start does that work again", what, path, exc)
        return False
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    logger.debug("%s %s: %d rows", what, path, table.num_rows)
    return True


# The parsed manifest --------------------------------------------------------------------------------------------------
# A manifest's rows as `core.dataset` reads them (cells unguarded, paths normalised and checked as text, splits
# mapped), cached under the manifest's stamp, so a server restart reads one Parquet file instead of parsing the CSV.

MANIFEST_CACHE_NAME = "manifest-cache.parquet"  # in the workspace cache folder (`.taxalens/`)
_MANIFEST_META = b"taxalens-manifest"
_MANIFEST_CACHE_VERSION = 1  # bump when what `core.dataset` reads from a manifest changes


def manifest_cache_key(manifest: str | Path, root: str | Path, taxonomy: tuple[str, ...]) -> dict:
    """What a parsed manifest depends on: the file (path, size, mtime_ns), the dataset root and the taxonomy
    columns. Raises `OSError` when the manifest cannot be stat-ed."""
    info = os.stat(manifest)
    return {"version": _MANIFEST_CACHE_VERSION, "manifest": str(Path(manifest).resolve()), "size": info.st_size,
            "mtime_ns": info.st_mtime_ns, "root": str(root), "taxonomy": list(taxonomy)}


def read_manifest_cache(path: str | Path | None, key: dict) -> tuple[pd.DataFrame, list, list[str]] | None:
    """`(frame, skipped, warnings)` cached at `path` for `key` (`manifest_cache_key`), or None when there is none,
    it was written for another key, or it cannot be read (logged: it only costs a parse)."""
    if path is None or not Path(path).is_file():
        return None
    try:
        table = _read_parquet(path)
        meta = json.loads((table.schema.metadata or {})[_MANIFEST_META])
    except (OSError, KeyError, ValueError, pa.ArrowException) as exc:
        logger.warning("ignoring the manifest cache %s, which cannot be read (%s); the manifest is parsed again",
                       path, exc)
        return None
    if meta.get("key") != key:
        return None
    frame = table.to_pandas()
    return frame, [tuple(row) for row in meta["skipped"]], list(meta["warnings"])


def write_manifest_cache(path: str | Path, key: dict, frame: pd.DataFrame, skipped: list, warnings: list[str]) -> bool:
    """Cache a parsed manifest at `path` (atomically); False (logged) when the folder is not writable."""
    meta = {"key": key, "skipped": [list(row) for row in skipped], "warnings": list(warnings)}
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _MANIFEST_META: json.dumps(meta)})
    return _write_atomic(path, table, "manifest cache")
