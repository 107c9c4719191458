"""Comparing two checkpoints on the same samples: paired bootstrap of F1 deltas, per-class deltas, flipped samples."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from core.predictions import PredictionTable
from core.scores import (
    DEFAULT_METHOD,
    BootstrapConfig,
    ClassCounts,
    IntervalMethod,
    ResamplingPlan,
    Tally,
    Unit,
    bootstrap,
    class_scores,
    describe_intervals,
    headline_scores,
)

logger = logging.getLogger(__name__)

Cluster = Literal["sample", "specimen"]
METRICS = ("macro_f1", "weighted_f1", "accuracy")
FLIP_COLUMNS = ("sample_id", "split", "specimen_id", "label", "pred_a", "pred_b", "confidence_a", "confidence_b",
                "p_label_a", "p_label_b", "direction")


@dataclass(frozen=True)
class Comparison:
    """Model B against model A on the samples both predicted whose label both models know."""

    metrics: pd.DataFrame  # metric, a, b, delta, delta_low, delta_high, a_low, a_high, b_low, b_high, share_b_better
    per_class: pd.DataFrame  # class, support, f1_a, f1_b, delta, precision_a/b, recall_a/b; sorted by delta
    flips: pd.DataFrame  # FLIP_COLUMNS; direction "right_to_wrong" or "wrong_to_right"
    n: int  # samples compared
    n_dropped: int  # samples of either table left out (not in both, or a label one model lacks)
    class_names: tuple[str, ...]  # the union of both models' classes, A's order first
    n_boot: int  # paired bootstrap resamples behind the intervals
    confidence_level: float  # e.g. 0.95
    cluster: Cluster  # what was asked for: images, or whole specimens with all their images
    notes: tuple[str, ...] = field(default_factory=tuple)  # e.g. labels that differ between the two tables
    unit: Unit = "image"  # what was resampled ("specimen" only where some specimen has several images)
    method: IntervalMethod = DEFAULT_METHOD  # "bayes" (default), "bca" or "percentile"

    @property
    def caption(self) -> str:
        """How the intervals were made: "paired 95% CI (Bayesian bootstrap, Jeffreys prior per class), 1,000
        specimen resamples, stratified by class"."""
        config = BootstrapConfig(n_boot=self.n_boot, confidence_level=self.confidence_level, method=self.method)
        return "paired " + describe_intervals(config, self.unit) if self.n_boot else "no intervals"

    def metric(self, name: str) -> pd.Series:
        """The row of `metrics` for `name` (`macro_f1`, `weighted_f1`, `accuracy`)."""
        rows = self.metrics[self.metrics["metric"] == name]
        if rows.empty:
            raise KeyError(f"no metric {name!r}; known: {list(self.metrics['metric'])}")
        return rows.iloc[0]

    def flip_counts(self) -> dict[str, int]:
        """Counts of `right_to_wrong` and `wrong_to_right` samples."""
        counts = self.flips["direction"].value_counts()
        return {d: int(counts.get(d, 0)) for d in ("right_to_wrong", "wrong_to_right")}


def compare_predictions(
    table_a: PredictionTable,
    table_b: PredictionTable,
    *,
    split: str | None = None,
    n_boot: int = 1000,
    confidence_level: float = 0.95,
    seed: int | None = 0,
    cluster: Cluster = "specimen",
    method: IntervalMethod = DEFAULT_METHOD,
) -> Comparison:
    """Compare B with A on the rows both tables hold (matched by `sample_id`), in `split` (None: all rows).

    Rows whose label is not a class of both models are left out (neither could be right on them by the same rules).
    Point values: macro-F1 over the classes present in the compared labels, weighted-F1, accuracy. Intervals: the
    paired bootstrap of `core.scores` (stratified by class), i.e. the same resample scores both models, so the
    delta's interval reflects only their disagreement; with `cluster="specimen"` (default) whole specimens are
    resampled where specimens have several images (images of one individual are not independent), with "sample"
    images. `share_b_better` is the share of resamples where B's value exceeds A's.
    Raises `ValueError` when the tables share no sample.
    """
    config = BootstrapConfig(n_boot=n_boot, confidence_level=confidence_level, seed=seed, method=method)
    if cluster not in ("sample", "specimen"):
        raise ValueError(f"cluster must be 'sample' or 'specimen', got {cluster!r}")
    a, b = table_a.for_split(split), table_b.for_split(split)
    paired, class_names, notes = _pair(a, b)
    n_total = len(set(a.frame["sample_id"]) | set(b.frame["sample_id"]))
    if paired.empty:
        raise ValueError(f"the two tables share no sample with a label both models know (split {split!r}: "
                         f"{len(a)} and {len(b)} rows); compare checkpoints predicted on the same dataset")
    k = len(class_names)
    y = paired["y"].to_numpy(np.int64)
    pa, pb = paired["pa"].to_numpy(np.int64), paired["pb"].to_numpy(np.int64)
    groups = paired["specimen_id"].to_numpy() if cluster == "specimen" else None
    plan = ResamplingPlan(y, {"a": pa, "b": pb}, k=k, groups=groups)
    result = bootstrap(plan, _paired_statistic, config)
    rows = []
    for name in METRICS:
        value_a, value_b = float(result.values[f"a_{name}"]), float(result.values[f"b_{name}"])
        row = {"metric": name, "a": value_a, "b": value_b, "delta": value_b - value_a}
        if n_boot:
            row.update(
                delta_low=float(result.low[f"delta_{name}"]), delta_high=float(result.high[f"delta_{name}"]),
                a_low=float(result.low[f"a_{name}"]), a_high=float(result.high[f"a_{name}"]),
                b_low=float(result.low[f"b_{name}"]), b_high=float(result.high[f"b_{name}"]),
                share_b_better=float(np.mean(result.draws[f"delta_{name}"] > 0)),
            )
        rows.append(row)
    metric_columns = ["metric", "a", "b", "delta", "delta_low", "delta_high", "a_low", "a_high", "b_low", "b_high",
                      "share_b_better"]
    metrics = pd.DataFrame(rows).reindex(columns=metric_columns)
    return Comparison(
        metrics=metrics,
        per_class=per_class_delta(y, pa, pb, class_names),
        flips=_flips(paired),
        n=len(paired),
        n_dropped=n_total - len(paired),
        class_names=class_names,
        n_boot=n_boot,
        confidence_level=confidence_level,
        cluster=cluster,
        notes=tuple(notes),
        unit=plan.unit,
        method=method,
    )


def per_class_delta(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray,
                    class_names: Sequence[str]) -> pd.DataFrame:
    """Per class present in `y_true`: support, F1/precision/recall of A and B, and `delta = f1_b - f1_a`.

    `y_true`, `pred_a`, `pred_b`: integer arrays of shape `(N,)` indexing `class_names`. Sorted by delta, worst first.
    """
    k = len(class_names)
    counts_a, counts_b = ClassCounts.from_labels(y_true, pred_a, k), ClassCounts.from_labels(y_true, pred_b, k)
    frame = pd.DataFrame({"class": list(class_names), "support": counts_a.support.astype(np.int64)})
    for suffix, counts in (("a", counts_a), ("b", counts_b)):
        scores = class_scores(counts)
        for name in ("f1", "precision", "recall"):
            frame[f"{name}_{suffix}"] = scores[name]
    frame["delta"] = frame["f1_b"] - frame["f1_a"]
    frame = frame[frame["support"] > 0]
    return frame.sort_values(["delta", "class"], kind="stable").reset_index(drop=True)


def _paired_statistic(tally: Tally) -> dict[str, np.ndarray]:
    """Both models' METRICS and their deltas (B - A) on one tally."""
    a, b = headline_scores(tally.counts("a"), METRICS), headline_scores(tally.counts("b"), METRICS)
    out = {f"a_{name}": a[name] for name in METRICS} | {f"b_{name}": b[name] for name in METRICS}
    return out | {f"delta_{name}": b[name] - a[name] for name in METRICS}


# ---------------------------------------------------------------------------------------------------- plumbing


def _pair(a: PredictionTable, b: PredictionTable) -> tuple[pd.DataFrame, tuple[str, ...], list[str]]:
    """Rows in both tables with a label both models know, with labels/preds indexed in the union class list."""
    class_names = tuple(a.class_names) + tuple(c for c in b.class_names if c not in set(a.class_names))
    index = {name: i for i, name in enumerate(class_names)}
    known_by_both = set(a.class_names) & set(b.class_names)
    fa = a.frame.assign(_row_a=np.arange(len(a)))
    fb = b.frame[["sample_id", "label", "pred", "confidence"]].assign(_row_b=np.arange(len(b)))
    merged = fa.merge(fb, on="sample_id", suffixes=("_a", "_b"), validate="one_to_one")
    notes = []
    differ = merged["label_a"] != merged["label_b"]
    if differ.any():
        notes.append(f"{int(differ.sum())} sample(s) carry another label in the second table (e.g. "
                     f"{merged.loc[differ, 'sample_id'].iloc[0]!r}); the first table's labels are used")
    merged = merged[merged["label_a"].isin(known_by_both)]
    lacking = sorted(set(a.frame["label"]) - known_by_both)
    if lacking:
        notes.append(f"labels {lacking[:10]} are not classes of both models; their samples are left out")
    row_a, row_b = merged["_row_a"].to_numpy(), merged["_row_b"].to_numpy()
    col_a = np.array([a.class_names.index(c) for c in merged["label_a"]], dtype=np.int64) if len(merged) else \
        np.zeros(0, np.int64)
    col_b = np.array([b.class_names.index(c) for c in merged["label_a"]], dtype=np.int64) if len(merged) else \
        np.zeros(0, np.int64)
    paired = pd.DataFrame({
        "sample_id": merged["sample_id"].to_numpy(),
        "split": merged["split"].to_numpy(),
        "specimen_id": merged["specimen_id"].to_numpy(),
        "label": merged["label_a"].to_numpy(),
        "pred_a": merged["pred_a"].to_numpy(),
        "pred_b": merged["pred_b"].to_numpy(),
        "confidence_a": merged["confidence_a"].to_numpy(),
        "confidence_b": merged["confidence_b"].to_numpy(),
        "p_label_a": a.pred_probs[row_a, col_a] if len(merged) else np.zeros(0, np.float32),
        "p_label_b": b.pred_probs[row_b, col_b] if len(merged) else np.zeros(0, np.float32),
        "y": [index[c] for c in merged["label_a"]],
        "pa": [index[c] for c in merged["pred_a"]],
        "pb": [index[c] for c in merged["pred_b"]],
    })
    return paired, class_names, notes


def _flips(paired: pd.DataFrame) -> pd.DataFrame:
    right_a = paired["pa"] == paired["y"]
    right_b = paired["pb"] == paired["y"]
    flips = paired[right_a != right_b].copy()
    flips["direction"] = np.where(right_a[right_a != right_b], "right_to_wrong", "wrong_to_right")
    flips["_change"] = (flips["p_label_b"] - flips["p_label_a"]).abs()
    flips = flips.sort_values(["direction", "_change"], ascending=[True, False], kind="stable")
    return flips[list(FLIP_COLUMNS)].reset_index(drop=True)
