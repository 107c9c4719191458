"""What the workspace's prediction cache holds, what of it is stale, and removing the stale part
(`python -m cli cache --workspace DIR [--prune]`)."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.dataset import Dataset as SampleSet
from core.errors import USER_ERRORS
from core.prediction_store import STORE_DIR, compact_store, file_stamps, read_store
from core.probs_sidecar import COMPACT_SUFFIX, PROBS32_SUFFIX, PROBS_SUFFIX
from core.result_cache import RESULTS_DIR
from core.workspace import Workspace
from models.inference import TABLE_KEY_LENGTH, predictions_dir, predictions_path, safe_file_name, store_path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheEntry:
    """One table, side file or store of the prediction cache."""

    path: Path  # the file or store folder
    kind: str  # "table", "side file" (skipped list, cross-validation), "result" (intervals) or "store"
    checkpoint: str  # the workspace checkpoint it belongs to ("" when none does any more)
    stale: bool  # True when nothing current reads it (or, for a store, some of its rows)
    rows: int  # table rows, or store rows (-1 for a side file)
    stale_rows: int  # store rows of images no longer in the dataset or changed since (0 for files)
    size_bytes: int  # on disk


def cache_report(workspace: Workspace, *, dataset: SampleSet | None = None) -> list[CacheEntry]:
    """Every table, side file and store under the workspace's prediction cache, current or stale.

    Current: the table (and its side files) of each checkpoint for the present weights, preprocessing and dataset,
    and the store of each checkpoint's present weights and preprocessing (its rows stale when their image left the
    dataset or changed). Files of a checkpoint whose weights cannot be read are reported as current (kept).
    """
    folder = predictions_dir(workspace)
    if not folder.is_dir():
        return []
    dataset = dataset if dataset is not None else workspace.load_dataset()
    current_stems, current_stores, unreadable = {}, {}, []
    for spec in workspace.checkpoints:
        try:
            current_stems[predictions_path(workspace, spec.name, dataset=dataset).name.removesuffix(".parquet")] = \
                spec.name
            current_stores[store_path(workspace, spec.name, dataset=dataset)] = spec.name
        except USER_ERRORS as exc:  # weights gone or unreadable: its files are not judged
            logger.warning("checkpoint %s cannot be read (%s); its cached predictions are kept", spec.name, exc)
            unreadable.append(safe_file_name(spec.name) + "-")
    entries = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        stem = _table_stem(path.name)
        owner = current_stems.get(stem, "") if stem else ""
        kept = bool(owner) or any(path.name.startswith(prefix) for prefix in unreadable)
        is_table = path.name.endswith(".parquet") and ".cv-" not in path.name
        entries.append(CacheEntry(path, "table" if is_table else "side file", owner or _checkpoint_of(path, workspace),
                                  not kept, _parquet_rows(path) if is_table else -1, 0, path.stat().st_size))
    entries += _result_entries(folder, [folder / f"{stem}.parquet" for stem in current_stems])
    stores = folder / STORE_DIR
    if stores.is_dir():
        current = current_samples(workspace, dataset)
        sample_ids = current["sample_id"]
        sizes, mtimes = file_stamps(current["path"].tolist())
        for store in sorted(p for p in stores.iterdir() if p.is_dir()):
            size = sum(p.stat().st_size for p in store.iterdir() if p.is_file())
            owner = current_stores.get(store, "")
            stored = read_store(store)
            rows = len(stored) if stored is not None else 0
            if not owner:
                kept = any(store.name.startswith(prefix) for prefix in unreadable)
                entries.append(CacheEntry(store, "store", _checkpoint_of(store, workspace), not kept, rows,
                                          0 if kept else rows, size))
                continue
            fresh = stored.positions(sample_ids, sizes, mtimes) if stored is not None else np.zeros(0, int)
            used = int((fresh >= 0).sum())
            entries.append(CacheEntry(store, "store", owner, rows > used, rows, rows - used, size))
    return entries


def prune_cache(workspace: Workspace, *, dataset: SampleSet | None = None) -> list[CacheEntry]:
    """Remove what `cache_report` marks stale: stale tables and side files, stores of old weights, and the stale
    rows of current stores (compacted into one part). Returns the entries it acted on."""
    dataset = dataset if dataset is not None else workspace.load_dataset()
    done = []
    for entry in cache_report(workspace, dataset=dataset):
        if not entry.stale:
            continue
        if entry.kind != "store":
            entry.path.unlink(missing_ok=True)
        elif entry.stale_rows == entry.rows or not entry.checkpoint or entry.path != store_path(
                workspace, entry.checkpoint, dataset=dataset):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            stored = read_store(entry.path)
            current = current_samples(workspace, dataset)
            sizes, mtimes = file_stamps(current["path"].tolist())
            fresh = stored.positions(current["sample_id"], sizes, mtimes)
            compact_store(entry.path, stored.take(np.sort(fresh[fresh >= 0])))
            logger.info("dropped %d stale rows from %s", entry.stale_rows, entry.path)
            done.append(entry)
            continue
        logger.info("removed %s", entry.path)
        done.append(entry)
    return done


def current_samples(workspace: Workspace, dataset: SampleSet) -> pd.DataFrame:
    """`sample_id, path` of every image a store row may belong to: the dataset's and every pool's (`[[pools]]`)."""
    from core.pools import load_pools

    frames = [dataset.samples[["sample_id", "path"]]]
    frames += [pool.samples[["sample_id", "path"]] for pool in load_pools(workspace)]
    return pd.concat(frames, ignore_index=True)


def _result_entries(folder: Path, current_tables: list[Path]) -> list[CacheEntry]:
    """Interval results (`core.result_cache`): stale when older than every current table (so computed from none
    of them); the content keys do not name their table."""
    results = folder / RESULTS_DIR
    if not results.is_dir():
        return []
    stamps = [p.stat().st_mtime_ns for p in current_tables if p.is_file()]
    oldest = min(stamps) if stamps else None
    entries = []
    for path in sorted(p for p in results.iterdir() if p.is_file() and not p.name.startswith(".")):
        info = path.stat()
        stale = oldest is None or info.st_mtime_ns < oldest
        entries.append(CacheEntry(path, "result", "", stale, -1, 0, info.st_size))
    return entries


def _table_stem(name: str) -> str | None:
    """`<checkpoint>-<key>` of a table or side-file name, or None for another file."""
    for suffix in (".parquet", ".skipped.csv", PROBS_SUFFIX, PROBS32_SUFFIX, COMPACT_SUFFIX):  # last three: sidecars
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            break
    else:
        return None
    stem = stem.split(".cv-", 1)[0]
    key = stem[-TABLE_KEY_LENGTH:]
    if len(stem) <= TABLE_KEY_LENGTH or stem[-TABLE_KEY_LENGTH - 1] != "-" or not all(c in "0123456789abcdef"
                                                                                      for c in key):
        return None
    return stem


def _checkpoint_of(path: Path, workspace: Workspace) -> str:
    """The workspace checkpoint whose file-name prefix `path` carries, or "" (longest name first)."""
    for spec in sorted(workspace.checkpoints, key=lambda s: -len(s.name)):
        if path.name.startswith(safe_file_name(spec.name) + "-"):
            return spec.name
    return ""


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except OSError:
        return -1
