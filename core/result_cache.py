"""Results derived from a predictions table (bootstrap intervals, per-class tables) cached on disk under a content
key, so a restarted server shows a page's intervals without bootstrapping them again.

A key covers what the result depends on: the caller's parts (the table's content token, split, label mode, the
bootstrap configuration, the specimen grouping) and the source of the modules that compute it, so a change to the
interval code never serves an old result. Values are written as JSON (dataclasses) or Parquet (DataFrames), never
pickled: a workspace may be shared, and a cache file must not be able to run code.

The Calibration page's results (calibration report, auto-accept thresholds, prediction-set coverage) are cached the
same way (`calibration_result`, `thresholds_result`, `coverage_result`), keyed also by the temperature, the bins
and the source of the calibration modules, so a second visit, a restarted server or a second `python -m core
thresholds` on an unchanged workspace reads them from disk.

The Taxonomy page's metrics at every rank and per-group tables (`rank_bootstrap_result`, `rank_per_class_result`)
are cached the same way, keyed also by the taxonomy and the source of the taxonomy modules.

The leak scan's near-duplicate pairs (`near_duplicate_result`) are cached the same way, keyed by the table and its
embeddings, the settings, the image hashes and the source of `core.leakage`; `python -m cli predict --workspace`
computes them with the interval results (`warm_near_duplicates`), so no page's first visit searches for them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from core import (
    calibration,
    conformal,
    confusion,
    leakage,
    metrics,
    scores,
    specimens,
    taxonomy,
    taxonomy_metrics,
    thresholds,
)
from core.calibration import CalibrationReport, calibrate_table, calibration_report
from core.conformal import ConformalConfig, CoverageReport, evaluate_coverage
from core.errors import TaxaLensError
from core.leakage import DuplicateSettings
from core.metrics import HeadlineMetrics, MetricEstimate
from core.predictions import PredictionTable, table_token
from core.scores import BootstrapConfig, ResamplingPlan
from core.taxonomy import Taxonomy
from core.taxonomy_metrics import MistakeSeverity, RankBootstrap, RankMetrics
from core.thresholds import AutoAcceptThresholds, ThresholdConfig, auto_accept_thresholds

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
    if type(value) in RECORD_TYPES.values():
        return {"type": "record", "value": _encode_field(value)}
    raise TypeError(f"no JSON codec for {type(value).__name__}")


def _read_json(path: Path) -> Any:
    blob = json.loads(path.read_text(encoding="utf-8"))
    if blob["type"] == "none":
        return None
    if blob["type"] == "record":
        return _decode_field(blob["value"])
    fields = blob["value"]
    return HeadlineMetrics(**{**fields, "estimates": tuple(MetricEstimate(**e) for e in fields["estimates"]),
                              "excluded_labels": tuple(fields["excluded_labels"])})


def _encode_field(value: Any) -> Any:
    """A JSON value of a record's field: frozen dataclasses (by `RECORD_TYPES` name), DataFrames (columns, values
    and dtypes), tuples, numpy scalars and plain values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"record": type(value).__name__,
                "fields": {f.name: _encode_field(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, pd.DataFrame):
        return {"frame": {"columns": [str(c) for c in value.columns],
                          "dtypes": [str(t) for t in value.dtypes],
                          "values": [_encode_field(value[c].tolist()) for c in value.columns]}}
    if isinstance(value, tuple):
        return {"tuple": [_encode_field(v) for v in value]}
    if isinstance(value, list):
        return [_encode_field(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode_field(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode_field(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "record" in value:
        cls = RECORD_TYPES[value["record"]]
        return cls(**{name: _decode_field(v) for name, v in value["fields"].items()})
    if "frame" in value:
        frame = value["frame"]
        data = {c: pd.Series(v, dtype=t) for c, v, t in zip(frame["columns"], frame["values"], frame["dtypes"],
                                                              strict=True)}
        return pd.DataFrame(data, columns=frame["columns"])
    if "tuple" in value:
        return tuple(_decode_field(v) for v in value["tuple"])
    raise ValueError(f"unknown field encoding {sorted(value)}")


def _write_frame(value: pd.DataFrame, path: Path) -> None:
    value.to_parquet(path)


# Frozen dataclasses stored as JSON records (their fields: DataFrames, tuples, nested records of this table, plain
# values); a new one is one entry.
RECORD_TYPES: dict[str, type] = {cls.__name__: cls for cls in (
    CalibrationReport, AutoAcceptThresholds, ThresholdConfig, CoverageReport, ConformalConfig, RankBootstrap,
    RankMetrics, MistakeSeverity, HeadlineMetrics, MetricEstimate)}

# Result types and their codecs; a new cached result type is one entry.
CODECS: dict[type, _Codec] = {
    HeadlineMetrics: _Codec(".json", _write_json, _read_json),
    type(None): _Codec(".json", _write_json, _read_json),
    pd.DataFrame: _Codec(".parquet", _write_frame, pd.read_parquet),
    **{cls: _Codec(".json", _write_json, _read_json) for cls in RECORD_TYPES.values() if cls not in (
        ThresholdConfig, ConformalConfig, RankMetrics, MetricEstimate)},
}


def source_digest(modules: tuple) -> str:
    """sha256 (16 hex) of the source files of `modules`, in order."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


@cache
def code_version() -> str:
    """sha256 (16 hex) of the source of the modules that compute cached results."""
    return source_digest(_CODE_MODULES)


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


# Calibration results ---------------------------------------------------------------------------------------------

_CALIBRATION_MODULES = (calibration, thresholds, conformal)  # their source is part of the calibration keys


@cache
def calibration_code_version() -> str:
    """sha256 (16 hex) of the source of the calibration, threshold and prediction-set modules."""
    return source_digest(_CALIBRATION_MODULES)


def _scaled(table: PredictionTable, temperature: float) -> PredictionTable:
    return table if temperature == 1.0 else calibrate_table(table, temperature)


def calibration_result(folder: Path | None, token: str, table: PredictionTable, *, n_bins: int, strategy: str,
                       temperature: float, config: BootstrapConfig) -> CalibrationReport:
    """`core.calibration.calibration_report` of `table` scaled by `temperature` (1: raw), from `folder` when
    cached there, else computed and stored. `token`: the table's content token (`table_token`, with the split and,
    for curated labels, the label store's last event), as the evaluation pages key their intervals."""
    key = result_key("calibration", token, grouping_digest(table.frame), calibration_code_version(), n_bins,
                     strategy, repr(float(temperature)), repr(config))
    return cached_result(folder, key, lambda: calibration_report(_scaled(table, temperature), n_bins=n_bins,
                                                                 strategy=strategy, config=config))


def thresholds_result(folder: Path | None, token: str, table: PredictionTable, *, config: ThresholdConfig,
                      temperature: float = 1.0) -> AutoAcceptThresholds:
    """`core.thresholds.auto_accept_thresholds` of `table` scaled by `temperature`, from `folder` when cached there,
    else computed and stored (the Calibration page and `python -m core thresholds` share the entry)."""
    key = result_key("thresholds", token, grouping_digest(table.frame), calibration_code_version(), repr(config),
                     repr(float(temperature)))
    return cached_result(folder, key, lambda: auto_accept_thresholds(_scaled(table, temperature), config))


def coverage_result(folder: Path | None, token: str, table: PredictionTable, *, config: ConformalConfig,
                    repeats: int) -> CoverageReport:
    """`core.conformal.evaluate_coverage` of `table`, from `folder` when cached there, else computed and stored."""
    key = result_key("coverage", token, grouping_digest(table.frame), calibration_code_version(), repr(config),
                     repeats)
    return cached_result(folder, key, lambda: evaluate_coverage(table, config, repeats=repeats))


# Near-duplicate pairs (the leak scan) --------------------------------------------------------------------------------

SCAN_DIR = "scan"  # under the workspace's cache folder: the image hashes of each predictions table
HASH_FILE_VERSION = "v3"  # v3: with the colour layouts (v2 files, without them, and v1 files of 4 columns unread)


def embedding_token(table: PredictionTable, token: str) -> str:
    """`token` (a `table_token`, which reads labels and probabilities only) extended by the embeddings' shape and
    first MB: the map and the scans depend on the embeddings."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(np.ascontiguousarray(table.embeddings).reshape(-1).view(np.uint8)[:1_000_000].tobytes())
    digest.update(str(table.embeddings.shape).encode())
    return f"{token}|{digest.hexdigest()}"


def hash_file(cache_dir: Path, token: str) -> Path:
    """Where the image hashes (`core.leakage.image_hashes`) of the table whose `table_token` (split "all", the
    checkpoint name) is `token` are kept: `<workspace>/.taxalens/scan/hashes-v3-<token>.npz`."""
    return Path(cache_dir) / SCAN_DIR / f"hashes-{HASH_FILE_VERSION}-{token[:24]}.npz"


def read_hashes(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(hashes, readable) saved at `path`, None when there are none."""
    if not Path(path).is_file():
        return None
    with np.load(path) as saved:
        return saved["hashes"], saved["readable"]


@cache
def leakage_code_version() -> str:
    """sha256 (16 hex) of `core.leakage`'s source (part of the near-duplicate key)."""
    return hashlib.sha256(Path(leakage.__file__).read_bytes()).hexdigest()[:16]


def _array_digest(values: np.ndarray | None) -> str:
    return "none" if values is None else hashlib.blake2b(np.ascontiguousarray(values).tobytes(),
                                                         digest_size=16).hexdigest()


def near_duplicates_key(token: str, settings: DuplicateSettings, hashes: np.ndarray | None,
                        readable: np.ndarray | None) -> str:
    """The disk key of the near-duplicate pairs of the table whose `embedding_token` is `token`, under `settings`
    and the image hashes (None: embeddings only)."""
    return result_key("near-duplicates", token, settings, _array_digest(hashes), _array_digest(readable),
                      leakage_code_version())


def near_duplicate_result(folder: Path | None, token: str, table: PredictionTable, hashes: np.ndarray | None,
                          readable: np.ndarray | None, settings: DuplicateSettings) -> pd.DataFrame:
    """`core.leakage.find_near_duplicates` of `table` (every split; `token`: its `embedding_token`), from `folder`
    when cached there, else computed and stored."""
    return cached_result(folder, near_duplicates_key(token, settings, hashes, readable),
                         lambda: leakage.find_near_duplicates(table, hashes, readable, settings=settings))


def leak_report_result(folder: Path | None, token: str, table: PredictionTable, hashes: np.ndarray | None,
                       readable: np.ndarray | None, settings: DuplicateSettings) -> leakage.LeakReport:
    """The whole scan (`core.leakage.scan_leakage`: pairs, groups of near-identical images, split leaks) of `table`,
    each part from `folder` when cached there, else computed and stored (groups and leaks follow from the pairs,
    under keys derived from theirs)."""
    key = near_duplicates_key(token, settings, hashes, readable)
    pairs = cached_result(folder, key, lambda: leakage.find_near_duplicates(table, hashes, readable,
                                                                            settings=settings))
    groups = cached_result(folder, f"{key}-groups", lambda: leakage.duplicate_groups(table, pairs))
    leaks = cached_result(folder, f"{key}-leaks", lambda: leakage.find_split_leaks(table, pairs))
    return leakage.LeakReport(pairs=pairs, groups=groups, leaks=leaks, settings=settings)


def warm_near_duplicates(table: PredictionTable, folder: Path, *, checkpoint: str, cache_dir: Path,
                         config: BootstrapConfig = PAGE_INTERVALS, settings: DuplicateSettings = DuplicateSettings(),
                         splits: tuple[str, ...] = SPLITS) -> int:
    """Compute and store what the Overview's leak check shows for `table` (every split, checkpoint `checkpoint`):
    the near-duplicate pairs, as the page keys them (the embeddings, plus the image hashes where the Data quality
    page has saved them under `cache_dir`), and per evaluated split with leaks the de-duplicated headline metrics.
    Returns how many results were computed (0: all stored already, or no embeddings and no hashes)."""
    token = table_token(table, "all", checkpoint)
    saved = read_hashes(hash_file(cache_dir, token))
    hashes, readable = saved if saved is not None else (None, None)
    if hashes is None and (table.embeddings.ndim != 2 or table.embeddings.shape[1] == 0):
        return 0
    key = near_duplicates_key(embedding_token(table, token), settings, hashes, readable)
    computed = 0 if has_result(folder, key) else 1
    leaks = leak_report_result(folder, embedding_token(table, token), table, hashes, readable, settings).leaks
    for split in splits:
        part = table.for_split(split)
        leaked = leaked_in(leaks, part) if split != "train" and len(part) else leaks.iloc[:0]
        if leaked.empty:
            continue
        part_token = table_token(part, split)
        if not has_result(folder, dedup_headline_key(part_token, part, leaked, config)):
            dedup_headline_result(folder, part_token, part, leaked, config)
            computed += 1
    return computed


def leaked_in(leaks: pd.DataFrame, table: PredictionTable) -> pd.DataFrame:
    """The rows of `leaks` (`core.leakage.find_split_leaks` over every split) whose image is in `table` (one split)."""
    return leaks[leakage.is_member(leaks["sample_id"], table.frame["sample_id"])]


def dedup_headline_key(token: str, table: PredictionTable, leaked: pd.DataFrame, config: BootstrapConfig) -> str:
    """The disk key of the de-duplicated headline metrics of `table` (content token `token`) without `leaked`."""
    ids = np.sort(leaked["sample_id"].astype(str).to_numpy())
    digest = hashlib.blake2b("\0".join(ids.tolist()).encode(), digest_size=16).hexdigest()
    return result_key("dedup-headline", token, grouping_digest(table.frame), digest, leakage_code_version(),
                      repr(config))


def dedup_headline_result(folder: Path | None, token: str, table: PredictionTable, leaked: pd.DataFrame,
                          config: BootstrapConfig) -> HeadlineMetrics:
    """The headline metrics of `table` without its `leaked` rows (`leaked_in`), from `folder` when cached there,
    else computed and stored. `token`: the table's content token, as the interval results key it."""
    def compute() -> HeadlineMetrics:
        return metrics.compute_headline_metrics(leakage.deduplicated(table, leaked), n_boot=config.n_boot,
                                                seed=config.seed, confidence_level=config.confidence_level,
                                                method=config.method)

    return cached_result(folder, dedup_headline_key(token, table, leaked, config), compute)


# Taxonomy results (the Taxonomy page) --------------------------------------------------------------------------------

_TAXONOMY_MODULES = (taxonomy_metrics, taxonomy, metrics, scores)  # their source is part of the taxonomy keys
ROLLUP_DEFAULT = "sum"  # the Taxonomy page's first view (and the rule of its mistake severity)


@cache
def taxonomy_code_version() -> str:
    """sha256 (16 hex) of the source of the taxonomy, taxonomy-metrics, metrics and scores modules."""
    return source_digest(_TAXONOMY_MODULES)


def taxonomy_token(tree: Taxonomy) -> str:
    """A content hash of `tree` (ranks and every class's ancestors), for cache keys."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update("\0".join(tree.ranks).encode())
    for name in sorted(tree.ancestors):
        digest.update(("\1" + name + "\0" + "\0".join(tree.ancestors[name])).encode())
    return digest.hexdigest()


def rank_bootstrap_key(token: str, table: PredictionTable, tree: Taxonomy, rule: str, config: BootstrapConfig) -> str:
    """The disk key of the metrics at every rank of `table` (content token `token`) under `tree` and `rule`."""
    return result_key("rank-bootstrap", token, taxonomy_token(tree), rule, grouping_digest(table.frame),
                      taxonomy_code_version(), repr(config))


def rank_bootstrap_result(folder: Path | None, token: str, table: PredictionTable, tree: Taxonomy, *, rule: str,
                          config: BootstrapConfig, rolled: Callable[[], Sequence[PredictionTable]] | None = None
                          ) -> taxonomy_metrics.RankBootstrap:
    """`core.taxonomy_metrics.rank_bootstrap` of `table` (metrics at every rank and the mistake severity, one
    resampling), from `folder` when cached there, else computed and stored. `rolled`: returns the table rolled up
    to every level when the computation needs it (default: rolled up here)."""
    def compute() -> taxonomy_metrics.RankBootstrap:
        return taxonomy_metrics.rank_bootstrap(table, tree, rule=rule, n_boot=config.n_boot, seed=config.seed,
                                               confidence_level=config.confidence_level, method=config.method,
                                               rolled=None if rolled is None else rolled())

    return cached_result(folder, rank_bootstrap_key(token, table, tree, rule, config), compute)


def rank_per_class_key(token: str, table: PredictionTable, tree: Taxonomy, rank: str, rule: str) -> str:
    """The disk key of the per-group table of `table` at `rank` under `tree` and `rule`."""
    return result_key("rank-per-class", token, taxonomy_token(tree), rank, rule, grouping_digest(table.frame),
                      taxonomy_code_version())


def rank_per_class_result(folder: Path | None, token: str, table: PredictionTable, tree: Taxonomy, *, rank: str,
                          rule: str, rolled: Callable[[], PredictionTable]) -> pd.DataFrame:
    """`core.metrics.per_class_table` of `table` rolled up to `rank` (`rolled` returns it), from `folder` when cached
    there, else computed and stored."""
    return cached_result(folder, rank_per_class_key(token, table, tree, rank, rule),
                         lambda: metrics.per_class_table(rolled()))


def warm_taxonomy_results(table: PredictionTable, folder: Path, tree: Taxonomy, *, config: BootstrapConfig,
                          splits: tuple[str, ...] = SPLITS, rule: str = ROLLUP_DEFAULT) -> int:
    """Compute and store what the Taxonomy page's first view shows for every split of `table` (under the dataset's
    own labels): the metrics at every rank and the per-group table at every rank, under `rule`. Returns how many
    were computed (0 as well when `tree` does not place every model class: the page shows no taxonomy then)."""
    try:
        tree.require_classes(table.class_names)
    except TaxaLensError as exc:
        logger.info("taxonomy results not warmed: %s", exc)
        return 0
    computed = 0
    for split in splits:
        part = table.for_split(split)
        if not len(part):
            continue
        token = table_token(part, split)
        levels: list[tuple[PredictionTable, ...]] = []

        def rolled(part: PredictionTable = part, levels: list = levels) -> tuple[PredictionTable, ...]:
            if not levels:
                levels.append(taxonomy_metrics.rollup_all(part, tree, rule=rule))
            return levels[0]

        if not has_result(folder, rank_bootstrap_key(token, part, tree, rule, config)):
            rank_bootstrap_result(folder, token, part, tree, rule=rule, config=config, rolled=rolled)
            computed += 1
        for rank in tree.levels:
            if not has_result(folder, rank_per_class_key(token, part, tree, rank, rule)):
                rank_per_class_result(folder, token, part, tree, rank=rank, rule=rule,
                                      rolled=lambda rank=rank, rolled=rolled: rolled()[tree.level_of(rank)])
                computed += 1
    return computed
