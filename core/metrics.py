"""Headline and per-class metrics of a predictions table, with stratified (specimen) bootstrap intervals, and the
class distribution.

Everything here is computed from a `PredictionTable` with numpy and pandas (no Streamlit), so the pages only render
it; scores and intervals come from `core.scores`. Samples whose label is not one of the model's classes
(`label_idx == -1`) are excluded from every metric and reported by count; an empty table gives empty results, never
an exception.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from core.confusion import confusion_counts
from core.predictions import PredictionTable
from core.scores import (
    DEFAULT_METHOD,
    METRIC_LABELS,
    BootstrapConfig,
    ClassCounts,
    IntervalMethod,
    ResamplingPlan,
    Tally,
    Unit,
    bootstrap,
    class_interval_bounds,
    class_scores,
    describe_intervals,
    headline_scores,
    top_k_hits,
)

logger = logging.getLogger(__name__)

BottomRank = Literal["f1", "f1_high"]
_TOP_K = (3, 5)


# ----------------------------------------------------------------------------------------------------------------
# Data types


@dataclass(frozen=True)
class MetricEstimate:
    """One headline metric with its bootstrap interval; `value` is None where it is undefined."""

    name: str  # key in METRIC_LABELS
    value: float | None  # point estimate on all evaluated samples (equal to scikit-learn's)
    low: float | None  # lower bound of the bootstrap interval
    high: float | None  # upper bound of the bootstrap interval
    note: str = ""  # why the value is missing (e.g. "only 5 classes"), else empty

    @property
    def label(self) -> str:
        return METRIC_LABELS.get(self.name, self.name)


@dataclass(frozen=True)
class HeadlineMetrics:
    """Headline scores of one table (image or specimen level)."""

    estimates: tuple[MetricEstimate, ...]  # in METRIC_LABELS order
    n_evaluated: int  # samples with a label among the model's classes
    n_excluded: int  # samples left out because their label is not a model class
    excluded_labels: tuple[str, ...]  # the distinct labels of the excluded samples, sorted
    n_classes_present: int  # classes with at least one evaluated sample (macro averages run over these)
    n_boot: int  # bootstrap resamples behind the intervals (0: no intervals)
    confidence_level: float  # e.g. 0.95
    unit: Unit = "image"  # what the bootstrap resampled: "specimen" (whole individuals) or "image"
    n_units: int = 0  # specimens (or images) resampled, stratified by class
    method: IntervalMethod = DEFAULT_METHOD  # "bayes" (default), "bca" or "percentile"
    n_single_specimen_classes: int = 0  # classes with one specimen (of several images), resampled by image
    n_unclustered_classes: int = 0  # classes whose specimens differ no more than their images: resampled by image

    @property
    def caption(self) -> str:
        """How the intervals were made: "95% CI (Bayesian bootstrap, Jeffreys prior per class), 1,000 specimen
        resamples, stratified by class"."""
        if not self.n_boot:
            return "no intervals"
        config = BootstrapConfig(n_boot=self.n_boot, confidence_level=self.confidence_level, method=self.method)
        return describe_intervals(config, self.unit)

    def __getitem__(self, name: str) -> MetricEstimate:
        for estimate in self.estimates:
            if estimate.name == name:
                return estimate
        raise KeyError(f"no metric {name!r}; known: {[e.name for e in self.estimates]}")

    def as_frame(self) -> pd.DataFrame:
        """One row per metric: metric, label, value, low, high, note."""
        return pd.DataFrame(
            [(e.name, e.label, e.value, e.low, e.high, e.note) for e in self.estimates],
            columns=["metric", "label", "value", "low", "high", "note"],
        )


@dataclass(frozen=True)
class ClassMismatch:
    """How a checkpoint's class list differs from the dataset's labels."""

    extra: tuple[str, ...]  # model classes that no dataset sample carries
    missing: tuple[str, ...]  # dataset labels the model cannot predict (their samples are excluded)
    renamed: tuple[tuple[str, str], ...]  # (dataset label, model class) pairs that look like the same class renamed

    @property
    def any(self) -> bool:
        return bool(self.extra or self.missing)


# ----------------------------------------------------------------------------------------------------------------
# Evaluated rows


def evaluated(table: PredictionTable) -> PredictionTable:
    """The rows metrics run on: those whose label is one of the model's classes (`label_idx >= 0`)."""
    keep = table.frame["label_idx"].to_numpy() >= 0
    return table if keep.all() else table.subset(keep)


def excluded_labels(table: PredictionTable) -> pd.Series:
    """Counts of samples per label that is not a model class (excluded from metrics), largest first."""
    frame = table.frame
    return frame.loc[frame["label_idx"].to_numpy() < 0, "label"].value_counts()


def compare_class_lists(model_classes: Sequence[str], dataset_classes: Sequence[str]) -> ClassMismatch:
    """Compare a checkpoint's classes with the dataset's labels.

    A missing dataset label and an extra model class are reported as `renamed` when they are equal ignoring case,
    spaces and punctuation, or nearly equal as strings (difflib ratio >= 0.8); they still count as extra/missing.
    """
    model_set, data_set = set(model_classes), set(dataset_classes)
    extra = tuple(sorted(model_set - data_set))
    missing = tuple(sorted(data_set - model_set))
    renamed: list[tuple[str, str]] = []
    candidates = list(extra)
    for label in missing:
        key = _name_key(label)
        match = next((c for c in candidates if _name_key(c) == key), None)
        if match is None:
            close = difflib.get_close_matches(label, candidates, n=1, cutoff=0.8)
            match = close[0] if close else None
        if match is not None:
            renamed.append((label, match))
            candidates.remove(match)
    return ClassMismatch(extra=extra, missing=missing, renamed=tuple(renamed))


def _name_key(name: str) -> str:
    return re.sub(r"[\W_]+", "", name.casefold())


# ----------------------------------------------------------------------------------------------------------------
# Headline metrics with bootstrap intervals


def resampling_plan(table: PredictionTable) -> tuple[ResamplingPlan, Unit]:
    """The bootstrap plan of a table's evaluated rows (not empty) and the unit its captions name.

    Images of one specimen are resampled together when some specimen has several images; the rows of a
    specimen-level table (`meta["level"] == "specimen"`) are specimens themselves.
    """
    table_eval = evaluated(table)
    frame = table_eval.frame
    y_true = frame["label_idx"].to_numpy(dtype=np.int64)
    flags = {}
    for top in _TOP_K:
        if top < len(table.class_names):
            # Equal to sklearn's top_k_accuracy_score(y_true, pred_probs, k=top, labels=range(K)) (tested, ties
            # included), without its full (N, K) argsort: 1.3 s per k at 100,000 x 300 against 0.1 s here.
            flags[f"top{top}"] = top_k_hits(table_eval.pred_probs, y_true, k=top)
    plan = ResamplingPlan(y_true, {"pred": frame["pred_idx"].to_numpy(dtype=np.int64)}, k=len(table.class_names),
                          flags=flags, groups=frame["specimen_id"].to_numpy())
    unit: Unit = "specimen" if table.meta.get("level") == "specimen" else plan.unit
    return plan, unit


def resampling_unit(table: PredictionTable) -> Unit:
    """What the bootstrap of `table` resamples (`resampling_plan`'s unit), without building the plan."""
    if table.meta.get("level") == "specimen":
        return "specimen"
    ids = evaluated(table).frame["specimen_id"]
    return "specimen" if ids.nunique() < len(ids) else "image"


def _headline_statistic(tally: Tally) -> dict[str, np.ndarray]:
    out = headline_scores(tally.counts("pred"))
    for name in tally.flags:
        out[f"{name}_accuracy"] = tally.rate(name)
    return out


def compute_headline_metrics(
    table: PredictionTable,
    *,
    n_boot: int = 1000,
    seed: int | None = 0,
    confidence_level: float = 0.95,
    method: IntervalMethod = DEFAULT_METHOD,
    plan: ResamplingPlan | None = None,
) -> HeadlineMetrics:
    """Accuracy, balanced accuracy, macro-F1, weighted-F1, top-3 and top-5 accuracy, each with a bootstrap interval.

    Point values equal scikit-learn's on the evaluated rows (see `evaluated`). Macro-F1 averages over the classes
    present in the evaluated labels (a model class with no sample in this split would otherwise add a 0);
    weighted-F1 weights by support; balanced accuracy is the mean recall over present classes (as scikit-learn).
    Top-k accuracy equals `top_k_accuracy_score(..., labels=range(K))` and is undefined (None) when the model has
    no more than k classes (it would be trivially 1).

    Intervals come from `n_boot` resamples stratified by class, of specimens when specimens have several images,
    else of images (`core.scores.ResamplingPlan`); `method` "bayes" (default: the Bayesian bootstrap with a
    Jeffreys prior per class, see `core.scores`), "bca" or "percentile". `seed` makes them
    reproducible; `n_boot=0` skips intervals. `plan`: `resampling_plan(table)[0]` when the caller holds it already
    (it costs about a second at 100,000 images).
    """
    config = BootstrapConfig(n_boot=n_boot, confidence_level=confidence_level, seed=seed, method=method)
    excluded = excluded_labels(table)
    table_eval = evaluated(table)
    n = len(table_eval)
    k = len(table.class_names)
    present = np.unique(table_eval.frame["label_idx"].to_numpy())
    common = {
        "n_evaluated": n,
        "n_excluded": int(excluded.sum()),
        "excluded_labels": tuple(sorted(excluded.index)),
        "n_classes_present": int(len(present)),
        "confidence_level": confidence_level,
        "method": method,
    }
    if n == 0:
        estimates = tuple(MetricEstimate(name, None, None, None, "no evaluated samples") for name in METRIC_LABELS)
        return HeadlineMetrics(estimates=estimates, n_boot=0, unit="image", n_units=0, **common)
    if plan is None:
        plan, unit = resampling_plan(table)
    else:
        unit = "specimen" if table.meta.get("level") == "specimen" else plan.unit
    result = bootstrap(plan, _headline_statistic, config)
    estimates = []
    for name in METRIC_LABELS:
        if name not in result.values:
            estimates.append(MetricEstimate(name, None, None, None, f"undefined: the model has only {k} classes"))
            continue
        low, high = (None, None) if n_boot == 0 else (float(result.low[name]), float(result.high[name]))
        estimates.append(MetricEstimate(name, float(result.values[name]), low, high))
    return HeadlineMetrics(estimates=tuple(estimates), n_boot=n_boot, unit=unit, n_units=plan.n_units,
                           n_single_specimen_classes=plan.n_image_units,
                           n_unclustered_classes=plan.n_unclustered_classes, **common)


# ----------------------------------------------------------------------------------------------------------------
# Per-class metrics


def per_class_table(
    table: PredictionTable,
    *,
    counts: np.ndarray | None = None,
    intervals: BootstrapConfig | None = None,
    plan: ResamplingPlan | None = None,
) -> pd.DataFrame:
    """One row per model class (model order): class, precision, recall, f1, support, predicted,
    confused_as / confused_as_count (the class its samples are most often predicted as),
    confused_from / confused_from_count (the class most often predicted as it).

    precision/recall/F1 equal `precision_recall_fscore_support(labels=range(K), zero_division=0)`; classes with
    zero support get 0 and `support == 0` (filter on it). Empty `confused_*` when there is no such error.
    With `intervals`, `precision_low/high`, `recall_low/high`, `f1_low/high` hold per-class intervals from the
    same stratified (specimen) bootstrap as the headline metrics (`core.scores.class_interval_bounds`: the Jeffreys
    prior per class keeps a score of 0 or 1 open), NaN for classes without samples. `plan`:
    `resampling_plan(table)[0]` when held already.
    """
    k = len(table.class_names)
    names = np.asarray(table.class_names, dtype=object)
    counts = confusion_counts(table) if counts is None else np.asarray(counts)
    scores = class_scores(ClassCounts.from_confusion(counts))
    support = counts.sum(axis=1)
    off = counts.copy()
    np.fill_diagonal(off, 0)
    as_idx, from_idx = off.argmax(axis=1), off.argmax(axis=0)
    as_count, from_count = off.max(axis=1), off.max(axis=0)
    frame = pd.DataFrame(
        {
            "class": names,
            "precision": scores["precision"],
            "recall": scores["recall"],
            "f1": scores["f1"],
            "support": np.asarray(support, dtype=np.int64),
            "predicted": counts.sum(axis=0).astype(np.int64),
            "confused_as": np.where(as_count > 0, names[as_idx], ""),
            "confused_as_count": as_count.astype(np.int64),
            "confused_from": np.where(from_count > 0, names[from_idx], ""),
            "confused_from_count": from_count.astype(np.int64),
        }
    )
    if intervals is None:
        return frame
    bounds = {f"{name}_{side}": np.full(k, np.nan) for name in ("precision", "recall", "f1")
              for side in ("low", "high")}
    if intervals.n_boot and len(evaluated(table)):
        bounds.update(class_interval_bounds(plan if plan is not None else resampling_plan(table)[0], intervals))
    for name in ("precision", "recall", "f1"):
        position = frame.columns.get_loc(name) + 1
        frame.insert(position, f"{name}_high", bounds[f"{name}_high"])
        frame.insert(position, f"{name}_low", bounds[f"{name}_low"])
    return frame


def bottom_classes(per_class: pd.DataFrame, *, n: int = 10, min_support: int = 1, rank_by: BottomRank = "f1"
                   ) -> pd.DataFrame:
    """The `n` classes with the lowest F1 among those with `support >= min_support`, worst first (ties: larger
    support first, then name). `rank_by="f1_high"` ranks by the upper bound of the F1 interval instead (needs the
    interval columns of `per_class_table(..., intervals=...)`), so a class whose F1 is low for sure comes before
    one whose F1 is low on three images."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if rank_by not in ("f1", "f1_high"):
        raise ValueError(f"rank_by must be 'f1' or 'f1_high', got {rank_by!r}")
    if rank_by not in per_class.columns:
        raise ValueError("rank_by='f1_high' needs the interval columns: per_class_table(..., intervals=...)")
    rows = per_class[per_class["support"] >= min_support]
    keys = ["f1", "support", "class"] if rank_by == "f1" else ["f1_high", "f1", "support", "class"]
    ascending = [True, False, True] if rank_by == "f1" else [True, True, False, True]
    rows = rows.sort_values(keys, ascending=ascending, kind="stable")
    return rows.head(n).reset_index(drop=True)


# ----------------------------------------------------------------------------------------------------------------
# Class distribution


# ----------------------------------------------------------------------------------------------------------------
# Class distribution


def class_distribution(table: PredictionTable, *, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Samples per class (rows) and split (columns), plus `total`.

    Rows are the model's classes followed by dataset labels the model lacks (or `class_names` when given), so
    classes with zero samples appear as 0.
    """
    frame = table.frame
    if class_names is None:
        extra = sorted(set(frame["label"]) - set(table.class_names))
        class_names = list(table.class_names) + extra
    splits = sorted(frame["split"].unique(), key=_split_rank)
    counts = pd.crosstab(frame["label"], frame["split"]) if len(frame) else pd.DataFrame()
    counts = counts.reindex(index=list(class_names), columns=splits, fill_value=0).fillna(0).astype(np.int64)
    counts.index.name = "class"
    counts.columns.name = None
    counts["total"] = counts.sum(axis=1) if splits else 0
    return counts


def imbalance_ratios(distribution: pd.DataFrame) -> pd.Series:
    """Per column of `class_distribution`: largest class count / smallest non-zero count (NaN when no samples)."""
    ratios = {}
    for column in distribution.columns:
        values = distribution[column].to_numpy()
        nonzero = values[values > 0]
        ratios[column] = float(nonzero.max() / nonzero.min()) if nonzero.size else float("nan")
    return pd.Series(ratios, name="imbalance_ratio")


def _split_rank(name: str) -> tuple[int, str]:
    return ({"train": 0, "val": 1, "test": 2}.get(name, 3), str(name))

