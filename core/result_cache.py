"""Results derived from a predictions table (bootstrap intervals, per-class tables) cached on disk under a content
key, so a restarted server shows a page's intervals without bootstrapping them again.

A key covers what the result depends on: the caller's parts (the table's content token, split, label mode, the
bootstrap configuration, the specimen grouping) and the source of the modules that compute it, so a change to the
interval code never serves an old result. Values are written as JSON (dataclasses) or Parquet (DataFrames), never
pickled: a workspace may be shared, and a cache file must not be able to run code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from core import confusion, metrics, scores, specimens
from core.metrics import HeadlineMetrics, MetricEstimate
from core.predictions import PredictionTable, table_token
from core.scores import BootstrapConfig, ResamplingPlan

logger = logging.getLogger(__name__)

RESULTS_DIR = "results"  # under the workspace's predictions folder
SPLITS = ("val", "train", "test", "all")  # the splits the pages offer
PAGE_INTERVALS = BootstrapConfig()  # every interval the evaluation pages show (the defaults: 1,000 draws, 95%)
_CODE_MODULES = (metrics, scores, specimens)  # their source is part of every key
T = TypeVar("T")


@dataclass(frozen=True)
class _Codec:
    """How one type of result is written and read back."""

    suffix: str  # file suffix
    write: Callable[[Any, Path], None]
    read: Callable[[Path], Any]


def _write_json(value: Any, path: Path) -> None:
    path.write_text(json.dumps(_encode(value)), encoding="utf-8")


def _encode(value: Any) -> Any:
    if value is None:
        return {"type": "none"}
    if isinstance(value, HeadlineMetrics):
        return {"type": "headline", "value": dataclasses.asdict(value)}
    raise TypeError(f"no JSON codec for {type(value).__name__}")


def _read_json(path: Path) -> Any:
    blob = json.loads(path.read_text(encoding="utf-8"))
    if blob["type"] == "none":
        return None
    fields = blob["value"]
    return HeadlineMetrics(**{**fields, "estimates": tuple(MetricEstimate(**e) for e in fields["estimates"]),
                              "excluded_labels": tuple(fields["excluded_labels"])})


def _write_frame(value: pd.DataFrame, path: Path) -> None:
    value.to_parquet(path)


# Result types and their codecs; a new cached result type is one entry.
CODECS: dict[type, _Codec] = {
    HeadlineMetrics: _Codec(".json", _write_json, _read_json),
    type(None): _Codec(".json", _write_json, _read_json),
    pd.DataFrame: _Codec(".parquet", _write_frame, pd.read_parquet),
}


@cache
def code_version() -> str:
    """sha256 (16 hex) of the source of the modules that compute cached results."""
    digest = hashlib.sha256()
    for module in _CODE_MODULES:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


def grouping_digest(table_frame: pd.DataFrame) -> str:
    """A digest of the table's specimen grouping (which rows share a specimen), which the bootstrap resamples by
    and the content token does not cover."""
    codes = pd.factorize(table_frame["specimen_id"])[0].astype(np.int64)
    return hashlib.blake2b(codes.tobytes(), digest_size=8).hexdigest()


def result_key(kind: str, *parts: object) -> str:
    """The file stem of a result: `kind` and a sha256 over `parts` and `code_version()`."""
    blob = json.dumps([kind, code_version(), *[str(p) for p in parts]])
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:24]}"


def has_result(folder: Path | None, key: str) -> bool:
    """Whether a result is stored under `key` in `folder` (a page shows it at once instead of offering to compute)."""
    return folder is not None and any((folder / f"{key}{suffix}").is_file()
                                      for suffix in {c.suffix for c in CODECS.values()})


def cached_result(folder: Path | None, key: str, compute: Callable[[], T]) -> T:
    """The result stored under `key` in `folder`, else `compute()` (stored when `folder` is writable; a folder that
    is not, or None, only costs the computation)."""
    if folder is not None:
        for codec in {c.suffix: c for c in CODECS.values()}.values():
            path = folder / f"{key}{codec.suffix}"
            if path.is_file():
                try:
                    return codec.read(path)
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    logger.warning("ignoring the cached result %s (%s); computing it again", path, exc)
    value = compute()
    if folder is not None:
        _store(folder, key, value)
    return value


def _store(folder: Path, key: str, value: Any) -> None:
    codec = CODECS.get(type(value))
    if codec is None:
        logger.debug("no codec for %s: %s not cached on disk", type(value).__name__, key)
        return
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".result-", suffix=".tmp")
        os.close(fd)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600: others sharing the workspace must read it
        codec.write(value, Path(tmp))
        os.replace(tmp, folder / f"{key}{codec.suffix}")
        tmp = None
    except OSError as exc:
        logger.warning("could not cache %s in %s (%s)", key, folder, exc)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


# Interval results ----------------------------------------------------------------------------------------------------

def resampling_plan_of(table: PredictionTable) -> ResamplingPlan | None:
    """The table's bootstrap plan (shared by the headline and per-class intervals), None without evaluated rows."""
    return metrics.resampling_plan(table)[0] if len(metrics.evaluated(table)) else None


def _headline(table: PredictionTable, config: BootstrapConfig, plan: ResamplingPlan | None) -> HeadlineMetrics:
    return metrics.compute_headline_metrics(table, n_boot=config.n_boot, seed=config.seed, plan=plan,
                                            confidence_level=config.confidence_level, method=config.method)


def _specimen_headline(table: PredictionTable, config: BootstrapConfig, plan: ResamplingPlan | None
                       ) -> HeadlineMetrics | None:
    if not specimens.has_specimens(table):
        return None
    return metrics.compute_headline_metrics(specimens.specimen_table(table), n_boot=config.n_boot, seed=config.seed,
                                            confidence_level=config.confidence_level, method=config.method)


def _per_class(table: PredictionTable, config: BootstrapConfig, plan: ResamplingPlan | None) -> pd.DataFrame:
    return metrics.per_class_table(table, counts=confusion.confusion_counts(table), intervals=config, plan=plan)


# The interval results the evaluation pages show: kind -> compute(table, config, plan). One entry per result.
INTERVAL_RESULTS: dict[str, Callable[[PredictionTable, BootstrapConfig, ResamplingPlan | None], Any]] = {
    "headline": _headline,
    "specimen-headline": _specimen_headline,
    "per-class": _per_class,
}


def interval_key(kind: str, token: str, table: PredictionTable, config: BootstrapConfig) -> str:
    """The disk key of interval result `kind` for `table` whose content token (`table_token`, with the split and,
    for curated labels, the label store's last event) is `token`."""
    return result_key(kind, token, grouping_digest(table.frame), repr(config))


def interval_result(folder: Path | None, kind: str, token: str, table: PredictionTable, config: BootstrapConfig,
                    *, plan: Callable[[], ResamplingPlan | None] | None = None) -> Any:
    """Interval result `kind` (`INTERVAL_RESULTS`) of `table`, from `folder` when cached there, else computed and
    stored. `plan`: returns the table's resampling plan when a computation needs it (default: built here)."""
    make_plan = plan or (lambda: resampling_plan_of(table))
    return cached_result(folder, interval_key(kind, token, table, config),
                         lambda: INTERVAL_RESULTS[kind](table, config, make_plan()))


def warm_interval_results(table: PredictionTable, folder: Path, *, config: BootstrapConfig,
                          splits: tuple[str, ...] = SPLITS) -> int:
    """Compute and store every interval result of `table` (all splits) under the dataset's own labels, as the
    evaluation pages key them, so even a page's first visit reads them from disk. Returns how many were computed."""
    computed = 0
    for split in splits:
        part = table.for_split(split)
        if not len(part):
            continue
        token = table_token(part, split)
        plan = None
        for kind in INTERVAL_RESULTS:
            key = interval_key(kind, token, part, config)
            if any((folder / f"{key}{suffix}").is_file() for suffix in (".json", ".parquet")):
                continue
            if plan is None and kind != "specimen-headline":
                plan = resampling_plan_of(part)
            cached_result(folder, key, lambda kind=kind, part=part, plan=plan: INTERVAL_RESULTS[kind](part, config,
                                                                                                     plan))
            computed += 1
    logger.debug("warmed %d interval results in %s", computed, folder)
    return computed
