"""Evaluation along the taxonomy: predictions rolled up to every rank, mistake severity (how far up the tree an error
goes), the folded confusion matrix, and the hierarchy-aware decision rule (conditional risk minimisation).

Metrics at a rank are the `core.scores` scores of the counts rolled up to the rank's groups (probabilities summed
within a group for the "sum" rule). Every interval comes from the one bootstrap (`core.scores.bootstrap` on the
headline metrics' class-stratified specimen `ResamplingPlan`): `rank_bootstrap` resamples a table once and scores every
rank and the mistake severity on the same draws (a group's counts are the sums of its classes' counts).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from core import metrics
from core.confusion import confusion_counts
from core.metrics import HeadlineMetrics, MetricEstimate
from core.predictions import PredictionTable
from core.scores import (
    METRIC_LABELS,
    BootstrapConfig,
    ClassCounts,
    IntervalMethod,
    ResamplingPlan,
    Tally,
    bootstrap,
    describe_intervals,
    headline_scores,
    ratio,
)
from core.taxonomy import Taxonomy

logger = logging.getLogger(__name__)

RollupRule = Literal["sum", "argmax"]
# How the predicted group at a rank is chosen; the pages show the "sum" rule unless the user picks the other.
ROLLUP_RULES: dict[str, str] = {
    "sum": "the group with the largest summed probability of its classes",
    "argmax": "the group of the top-1 class",
}
RANK_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")  # the headline metrics reported per rank
SEVERITY_MEASURES: dict[str, str] = {
    "mistake_severity": "Mistake severity (mean LCA height over errors)",
    "mean_distance": "Mean hierarchical distance (all samples, 0 when right)",
}


# ----------------------------------------------------------------------------------------------------------------
# Rolling up


@dataclass(frozen=True)
class LevelLayout:
    """How a class list sums into the groups of every level: the classes in taxonomic order (every group at every
    level is then one contiguous run) and where each level's groups start in it."""

    order: np.ndarray  # (K,) class indices in taxonomic order
    starts: tuple[np.ndarray, ...]  # per level, (G,) first position of each group in `order` (level 0: every class)
    codes: np.ndarray  # (L, K) each class's group index at each level (`Taxonomy.level_codes`)
    onehots: tuple[np.ndarray, ...]  # per level, (K, G) float64 membership (for count arrays of a few thousand rows)

    @property
    def n_groups(self) -> tuple[int, ...]:
        return tuple(len(starts) for starts in self.starts)


def level_layout(taxonomy: Taxonomy, class_names: Sequence[str]) -> LevelLayout:
    """The `LevelLayout` of `class_names` (all placed by `taxonomy`)."""
    order = taxonomy.taxonomic_order(class_names)
    codes = taxonomy.level_codes(class_names)
    starts = tuple(np.flatnonzero(np.r_[True, np.diff(level_codes[order]) != 0]) if len(order) else
                   np.zeros(0, np.int64) for level_codes in codes)
    onehots = []
    for level_codes, level_starts in zip(codes, starts, strict=True):
        onehot = np.zeros((len(level_codes), len(level_starts)))
        onehot[np.arange(len(level_codes)), level_codes] = 1.0
        onehots.append(onehot)
    return LevelLayout(order, starts, codes, tuple(onehots))


def class_rows(values: np.ndarray, layout: LevelLayout) -> np.ndarray:
    """`(..., K)` per-class `values` as contiguous `(K, ...)` rows in taxonomic order, for `group_sums`."""
    return np.ascontiguousarray(np.asarray(values).T[layout.order])


def group_sums(values: np.ndarray, layout: LevelLayout, level: int, *, rows: np.ndarray | None = None) -> np.ndarray:
    """`(..., G)` sums of `(..., K)` per-class `values` over the groups at `level` (groups in code order): one
    gather and one `np.add.reduceat` over contiguous rows, no `(K, G)` product. `rows`: `class_rows(values, layout)`
    when the caller holds it (several levels of one array)."""
    rows = class_rows(values, layout) if rows is None else rows
    if rows.shape[0] == 0:
        return np.zeros((*rows.shape[1:][::-1], len(layout.starts[level])), dtype=rows.dtype)
    return np.add.reduceat(rows, layout.starts[level], axis=0).T


def rollup_all(table: PredictionTable, taxonomy: Taxonomy, *, rule: RollupRule = "sum"
               ) -> tuple[PredictionTable, ...]:
    """`rollup_table` at every level, class level first."""
    return tuple(rollup_table(table, taxonomy, level, rule=rule) for level in range(len(taxonomy.levels)))


def rollup_table(table: PredictionTable, taxonomy: Taxonomy, rank: str | int, *,
                 rule: RollupRule = "sum") -> PredictionTable:
    """`table` with the groups at `rank` as its classes: `pred_probs` summed within each group, `label` the label's
    group, `pred` per `rule` (see `ROLLUP_RULES`), `confidence` the summed probability of the predicted group.

    Rows keep their order (row i of the result is row i of `table`); rows whose label is not a model class stay
    excluded (`label_idx == -1`, label unchanged). At level 0 the table is returned as it is.
    """
    if rule not in ROLLUP_RULES:
        raise ValueError(f"rule must be one of {list(ROLLUP_RULES)}, got {rule!r}")
    level = taxonomy.level_of(rank)
    if level == 0:
        return table
    codes, groups = taxonomy.groups(table.class_names, level)
    n = len(table)
    group_probs = group_sums(table.pred_probs, level_layout(taxonomy, table.class_names), level)
    frame = table.frame
    label_idx = frame["label_idx"].to_numpy(dtype=np.int64)
    known = label_idx >= 0
    label_group = np.where(known, codes[np.clip(label_idx, 0, None)], -1)
    if rule == "sum":
        pred_group = group_probs.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    else:
        pred_group = codes[frame["pred_idx"].to_numpy(dtype=np.int64)]
    rows = np.arange(n)
    given = group_probs[rows, np.clip(label_group, 0, None)] if n else np.zeros(0, dtype=np.float32)
    names = np.asarray(groups, dtype=object)
    out = frame.copy()
    out["label"] = np.where(known, names[np.clip(label_group, 0, None)] if n else names[:0], frame["label"].to_numpy())
    out["label_idx"] = label_group
    out["pred"] = names[pred_group] if n else names[:0]
    out["pred_idx"] = pred_group.astype(np.int64)
    out["confidence"] = group_probs[rows, pred_group].astype(np.float32) if n else np.zeros(0, np.float32)
    out["loss"] = np.where(known, -np.log(np.clip(given, 1e-12, 1.0)), np.nan).astype(np.float32)
    meta = {**table.meta, "rank": taxonomy.levels[level], "rollup": rule}
    return PredictionTable(out, group_probs.astype(np.float32), table.embeddings, tuple(groups), meta)


def with_predictions(table: PredictionTable, pred_idx: np.ndarray) -> PredictionTable:
    """`table` with other predicted classes (`pred_idx`, shape `(N,)`); `confidence` becomes the probability of the
    new prediction, `pred_probs` stay."""
    pred_idx = np.asarray(pred_idx, dtype=np.int64)
    if pred_idx.shape != (len(table),):
        raise ValueError(f"pred_idx has shape {pred_idx.shape}, expected ({len(table)},)")
    frame = table.frame.copy()
    frame["pred_idx"] = pred_idx
    frame["pred"] = np.asarray(table.class_names, dtype=object)[pred_idx] if len(table) else frame["pred"]
    frame["confidence"] = table.pred_probs[np.arange(len(table)), pred_idx].astype(np.float32) if len(table) \
        else frame["confidence"]
    return PredictionTable(frame, table.pred_probs, table.embeddings, table.class_names, table.meta)


# ----------------------------------------------------------------------------------------------------------------
# Metrics at every rank


@dataclass(frozen=True)
class RankMetrics:
    """The headline metrics of the table rolled up to one rank."""

    rank: str  # "class" or a rank name
    level: int  # 0 for the class level
    n_groups: int  # groups at this rank among the model's classes
    headline: HeadlineMetrics  # from core.metrics on the rolled-up table


def metrics_by_rank(table: PredictionTable, taxonomy: Taxonomy, *, rule: RollupRule = "sum", n_boot: int = 1000,
                    seed: int | None = 0, confidence_level: float = 0.95, method: IntervalMethod | None = None,
                    class_level: HeadlineMetrics | None = None,
                    rolled: Sequence[PredictionTable] | None = None) -> tuple[RankMetrics, ...]:
    """Accuracy, balanced accuracy and macro-F1 with bootstrap intervals at the class level and at
    every rank, finest first: `rank_bootstrap(...).ranks` (every rank scored on the same resamples of the headline
    metrics' class-stratified specimen plan). `method`: "bayes", "bca" or "percentile" (None: the product's default).

    `class_level`: a class-level result to show in place of level 0's (e.g. the Overview's, with top-k accuracy);
    `rolled`: the tables rolled up to each level by `rollup_table` with the same `rule` (level 0 first), when held.
    """
    if rolled is not None and len(rolled) != len(taxonomy.levels):
        raise ValueError(f"rolled holds {len(rolled)} tables for {len(taxonomy.levels)} levels")
    ranks = rank_bootstrap(table, taxonomy, rule=rule, n_boot=n_boot, seed=seed, confidence_level=confidence_level,
                           method=method, rolled=rolled).ranks
    if class_level is None:
        return ranks
    return (RankMetrics(ranks[0].rank, 0, ranks[0].n_groups, class_level), *ranks[1:])


def rank_metrics_frame(results: Sequence[RankMetrics]) -> pd.DataFrame:
    """One row per rank (finest first): rank, groups, n_evaluated, and for each of `RANK_METRICS` the value with
    `_low` / `_high` interval columns."""
    rows = []
    for result in results:
        row = {"rank": result.rank, "groups": result.n_groups, "n_evaluated": result.headline.n_evaluated}
        for name in RANK_METRICS:
            estimate = result.headline[name]
            row.update({name: estimate.value, f"{name}_low": estimate.low, f"{name}_high": estimate.high})
        rows.append(row)
    columns = ["rank", "groups", "n_evaluated"] + [f"{m}{s}" for m in RANK_METRICS for s in ("", "_low", "_high")]
    return pd.DataFrame(rows, columns=columns)


def breakdown_lines(frame: pd.DataFrame) -> list[str]:
    """"Where accuracy breaks down": one line per rank of `rank_metrics_frame`, coarsest first, with the accuracy
    lost from the rank above; the rank with the largest loss is marked."""
    rows = frame.iloc[::-1].reset_index(drop=True)
    if rows.empty or rows["accuracy"].isna().all():
        return []
    drops = [0.0] + [float(rows.at[i - 1, "accuracy"] - rows.at[i, "accuracy"]) for i in range(1, len(rows))]
    worst = int(np.argmax(drops)) if max(drops) > 0 else -1
    lines = []
    for i, row in rows.iterrows():
        text = (f"{row['rank']} ({row['groups']} groups): accuracy {row['accuracy']:.1%}"
                + (f" [{row['accuracy_low']:.1%}, {row['accuracy_high']:.1%}]" if pd.notna(row["accuracy_low"]) else "")
                + f", macro-F1 {row['macro_f1']:.3f}")
        if i:
            verb = "lost" if drops[i] >= 0 else "gained"
            text += f" — {abs(drops[i]):.1%} {verb} from {rows.at[i - 1, 'rank']}"
        if i == worst:
            text += " ← accuracy breaks down most here"
        lines.append(text)
    return lines


def per_class_by_rank(table: PredictionTable, taxonomy: Taxonomy, rank: str | int, *,
                      rule: RollupRule = "sum") -> pd.DataFrame:
    """`core.metrics.per_class_table` of the table rolled up to `rank` (one row per group)."""
    return metrics.per_class_table(rollup_table(table, taxonomy, rank, rule=rule))


def bottom_by_rank(table: PredictionTable, taxonomy: Taxonomy, *, rule: RollupRule = "sum",
                   n: int = 10) -> dict[str, pd.DataFrame]:
    """rank -> the `n` groups with the lowest F1 at that rank (`core.metrics.bottom_classes`), finest first."""
    return {rank: metrics.bottom_classes(per_class_by_rank(table, taxonomy, level, rule=rule), n=n)
            for level, rank in enumerate(taxonomy.levels)}


# ----------------------------------------------------------------------------------------------------------------
# Mistake severity


def error_levels(table: PredictionTable, taxonomy: Taxonomy) -> np.ndarray:
    """`(N,)` int: per row, the level of the lowest common ancestor of label and prediction (0 when right,
    `taxonomy.root_level` when they share no rank), -1 for rows whose label is not a model class."""
    taxonomy.require_classes(table.class_names)
    lca = taxonomy.lca_levels(table.class_names)
    label_idx = table.frame["label_idx"].to_numpy(dtype=np.int64)
    pred_idx = table.frame["pred_idx"].to_numpy(dtype=np.int64)
    known = label_idx >= 0
    return np.where(known, lca[np.clip(label_idx, 0, None), pred_idx], -1) if len(table) else np.zeros(0, np.int64)


@dataclass(frozen=True)
class MistakeSeverity:
    """How far up the taxonomy the errors of one table go."""

    # level, lca_rank, errors, share (of errors), within (share of errors with LCA <= level) with within_low/_high
    histogram: pd.DataFrame
    mistake_severity: MetricEstimate  # mean LCA height over the errors, with its bootstrap interval
    mean_distance: MetricEstimate  # mean LCA height over all evaluated samples (0 when right), with its interval
    n_errors: int
    n_evaluated: int
    caption: str = "no intervals"  # how the intervals were made (core.scores.describe_intervals)

    def within_lines(self) -> list[str]:
        """"x% of errors stay within the same <rank> [low, high]" for every rank, finest first."""
        if not self.n_errors:
            return []
        rows = self.histogram[self.histogram["lca_rank"] != "root"]
        return [f"{row.within:.1%} of errors stay within the same {row.lca_rank}"
                + ("" if pd.isna(row.within_low) else f" [{row.within_low:.1%}, {row.within_high:.1%}]")
                for row in rows.itertuples()]


def mistake_severity(table: PredictionTable, taxonomy: Taxonomy, *, n_boot: int = 1000, seed: int | None = 0,
                     confidence_level: float = 0.95, method: IntervalMethod | None = None) -> MistakeSeverity:
    """The histogram of errors by the rank of their lowest common ancestor; the mean hierarchical distance over
    errors (mistake severity, Bertinetto et al. 2020) and over all samples, and the share of errors within each rank,
    with intervals from the headline metrics' bootstrap (`rank_bootstrap`: class-stratified, of specimens where they
    have several images). Of the top-1 class (`pred`)."""
    return rank_bootstrap(table, taxonomy, rule="argmax", n_boot=n_boot, seed=seed,
                          confidence_level=confidence_level, method=method).severity


def severity_per_class(table: PredictionTable, taxonomy: Taxonomy) -> pd.DataFrame:
    """Per model class with samples: support, errors, mistake_severity (mean LCA height of its errors), the share
    of its errors outside each rank (`beyond_<rank>`: the prediction is in another group at that rank), and
    `worst_error` (the prediction furthest up the tree, most frequent first). Sorted wildest first."""
    levels = error_levels(table, taxonomy)
    frame = table.frame
    keep = levels >= 0
    label_idx = frame["label_idx"].to_numpy()[keep]
    pred_idx = frame["pred_idx"].to_numpy()[keep]
    levels = levels[keep]
    k = len(table.class_names)
    support = np.bincount(label_idx, minlength=k)
    wrong = levels > 0
    errors = np.bincount(label_idx[wrong], minlength=k)
    height = np.bincount(label_idx[wrong], weights=levels[wrong], minlength=k)
    out = pd.DataFrame({"class": list(table.class_names), "support": support, "errors": errors})
    out["error_rate"] = np.divide(errors, support, out=np.zeros(k), where=support > 0)
    out["mistake_severity"] = np.divide(height, errors, out=np.full(k, np.nan), where=errors > 0)
    for level, rank in enumerate(taxonomy.ranks, start=1):
        beyond = np.bincount(label_idx[levels > level], minlength=k)
        out[f"beyond_{rank}"] = np.divide(beyond, errors, out=np.full(k, np.nan), where=errors > 0)
    names = np.asarray(table.class_names, dtype=object)
    worst = pd.DataFrame({"y": label_idx[wrong], "p": pred_idx[wrong], "level": levels[wrong]})
    worst = worst.groupby(["y", "level", "p"]).size().reset_index(name="n")
    worst = worst.sort_values(["y", "level", "n"], ascending=[True, False, False]).drop_duplicates("y")
    out["worst_error"] = ""
    out.loc[worst["y"].to_numpy(), "worst_error"] = [
        f"{names[p]} (LCA {taxonomy.level_name(int(level))}, {n}×)"
        for p, level, n in zip(worst["p"], worst["level"], worst["n"], strict=True)]
    out = out[out["support"] > 0]
    return out.sort_values(["mistake_severity", "errors", "class"], ascending=[False, False, True],
                           na_position="last", kind="stable").reset_index(drop=True)


def rows_beyond_rank(rows: pd.DataFrame, levels: np.ndarray, rank_level: int) -> pd.DataFrame:
    """The rows (with a `row` column indexing `levels`, as `core.queries.filter_predictions` returns them) whose
    error crosses `rank_level`: label and prediction in different groups at that level (LCA above it)."""
    positions = rows["row"].to_numpy(dtype=np.int64)
    return rows[levels[positions] > rank_level].reset_index(drop=True)


# ----------------------------------------------------------------------------------------------------------------
# Folded confusion matrix


@dataclass(frozen=True)
class FoldedConfusion:
    """The confusion matrix at one rank, groups in taxonomic order."""

    rank: str
    level: int
    counts: np.ndarray  # (G, G) int64, rows = true group, columns = predicted group
    group_names: tuple[str, ...]  # in taxonomic order
    blocks: tuple[tuple[str, int, int], ...]  # runs of groups sharing a parent at the next rank up: (parent, a, b)


def fold_confusion(table: PredictionTable, taxonomy: Taxonomy, rank: str | int, *, rule: RollupRule = "sum",
                   rolled: PredictionTable | None = None) -> FoldedConfusion:
    """The confusion of `table` rolled up to `rank` (`rollup_table`; or `rolled`, that table when the caller holds
    it), with the parent blocks for outlines."""
    level = taxonomy.level_of(rank)
    rolled = rolled if rolled is not None else rollup_table(table, taxonomy, level, rule=rule)
    if level == 0:
        order = taxonomy.taxonomic_order(table.class_names)
        names = tuple(table.class_names[i] for i in order)
        counts = confusion_counts(rolled)[np.ix_(order, order)]
    else:
        names, counts = rolled.class_names, confusion_counts(rolled)
    return FoldedConfusion(taxonomy.levels[level], level, counts, names,
                           tuple(taxonomy.parent_blocks(names, level)))


def folded_cell_rows(table: PredictionTable, taxonomy: Taxonomy, rank: str | int, true_group: str, pred_group: str,
                     *, rule: RollupRule = "sum", rolled: PredictionTable | None = None) -> pd.DataFrame:
    """Every evaluated row of `table` whose label is under `true_group` and whose prediction (per `rule`) is under
    `pred_group` at `rank`; class-level columns of `table.frame` plus `row`, most confident first. `rolled`: the
    table rolled up to `rank` with `rule`, when the caller holds it."""
    rolled = rolled if rolled is not None else rollup_table(table, taxonomy, rank, rule=rule)
    names = rolled.class_names
    if true_group not in names or pred_group not in names:
        level_name = taxonomy.levels[taxonomy.level_of(rank)]
        raise ValueError(f"no group {true_group!r} or {pred_group!r} at rank {level_name}; known: {list(names)}")
    frame = rolled.frame
    mask = ((frame["label_idx"].to_numpy() == names.index(true_group))
            & (frame["pred_idx"].to_numpy() == names.index(pred_group)))
    rows = table.frame.loc[mask].assign(row=np.flatnonzero(mask))
    return rows.sort_values("confidence", ascending=False, kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------------------------
# Better mistakes: conditional risk minimisation


def risk_decisions(pred_probs: np.ndarray, taxonomy: Taxonomy, class_names: Sequence[str]) -> np.ndarray:
    """`(N,)` class indices minimising the expected hierarchical cost `sum_i p_i * d(i, j)` (Karthik et al., ICLR
    2021, with d the LCA height), for `pred_probs` of shape `(N, K)` in `class_names` order.

    The LCA height of two classes counts the levels 0..R at which their groups differ (the groups are nested), so
    the expected cost of choosing j is `(R + 1) - sum_l P_l(group_l(j))` with `P_l` the summed probability of a group
    at level l: one (N, G_l) roll-up per level (`group_sums`) instead of an (N, K) x (K, K) product. Ties go to the
    lower index.
    """
    pred_probs = np.asarray(pred_probs, dtype=np.float32)
    layout = level_layout(taxonomy, class_names)
    rows = class_rows(pred_probs, layout)
    score = np.zeros(pred_probs.shape, dtype=np.float64)
    for level, level_codes in enumerate(layout.codes):
        score += group_sums(pred_probs, layout, level, rows=rows)[:, level_codes]
    return score.argmax(axis=1).astype(np.int64) if len(pred_probs) else np.zeros(0, dtype=np.int64)


def decide_by_risk(table: PredictionTable, taxonomy: Taxonomy) -> PredictionTable:
    """`table` with each prediction replaced by the hierarchy-aware decision (`risk_decisions`)."""
    taxonomy.require_classes(table.class_names)
    return with_predictions(table, risk_decisions(table.pred_probs, taxonomy, table.class_names))


@dataclass(frozen=True)
class DecisionRuleEffect:
    """Top-1 (argmax) against the hierarchy-aware decision on the same rows; predicted groups are the ancestors of
    the predicted class under both rules (the `argmax` roll-up)."""

    per_rank: pd.DataFrame  # rank, accuracy_before/_after (+ _low/_high), macro_f1_before/_after, delta_accuracy
    severity: pd.DataFrame  # measure, label, before, before_low, before_high, after, after_low, after_high
    histogram: pd.DataFrame  # lca_rank, errors_before, errors_after
    n_changed: int  # rows whose prediction the rule changed


def decision_rule_effect(table: PredictionTable, taxonomy: Taxonomy, *, n_boot: int = 1000, seed: int | None = 0,
                         confidence_level: float = 0.95, method: IntervalMethod | None = None,
                         before: Sequence[RankMetrics] | None = None,
                         severity_before: MistakeSeverity | None = None) -> DecisionRuleEffect:
    """What the hierarchy-aware decision rule would change: accuracy and macro-F1 at every rank, mistake severity
    and mean distance, before (argmax) and after (`decide_by_risk`), each from `rank_bootstrap` (one resampling of
    each table scores every rank and the severity). `before`: `metrics_by_rank(table, taxonomy, rule="argmax")` with
    the same bootstrap settings, and `severity_before`: `mistake_severity(table, taxonomy)`, when the caller holds
    them."""
    options = dict(n_boot=n_boot, seed=seed, confidence_level=confidence_level, method=method)
    after_table = decide_by_risk(table, taxonomy)
    after = rank_bootstrap(after_table, taxonomy, rule="argmax", **options)
    if before is None:
        held = rank_bootstrap(table, taxonomy, rule="argmax", **options)
        before, severity_before = held.ranks, severity_before or held.severity
    elif severity_before is None:
        severity_before = mistake_severity(table, taxonomy, **options)
    rows = []
    for b, a in zip(before, after.ranks, strict=True):
        row = {"rank": b.rank}
        for name in ("accuracy", "macro_f1"):
            for tag, result in (("before", b), ("after", a)):
                estimate = result.headline[name]
                row.update({f"{name}_{tag}": estimate.value, f"{name}_{tag}_low": estimate.low,
                            f"{name}_{tag}_high": estimate.high})
        row["delta_accuracy"] = (row["accuracy_after"] - row["accuracy_before"]
                                 if row["accuracy_after"] is not None and row["accuracy_before"] is not None else None)
        rows.append(row)
    sev_after = after.severity
    severity = pd.DataFrame([
        {"measure": name, "label": SEVERITY_MEASURES[name],
         "before": getattr(severity_before, name).value, "before_low": getattr(severity_before, name).low,
         "before_high": getattr(severity_before, name).high,
         "after": getattr(sev_after, name).value, "after_low": getattr(sev_after, name).low,
         "after_high": getattr(sev_after, name).high}
        for name in SEVERITY_MEASURES
    ])
    histogram = pd.DataFrame({"lca_rank": severity_before.histogram["lca_rank"],
                              "errors_before": severity_before.histogram["errors"],
                              "errors_after": sev_after.histogram["errors"]})
    changed = int((after_table.frame["pred_idx"].to_numpy() != table.frame["pred_idx"].to_numpy()).sum())
    return DecisionRuleEffect(pd.DataFrame(rows), severity, histogram, changed)


# ----------------------------------------------------------------------------------------------------------------
# Two checkpoints


@dataclass(frozen=True)
class TaxonomyComparison:
    """B against A along the taxonomy, from one paired bootstrap (each resample scores both on the same units)."""

    by_rank: pd.DataFrame  # rank, metric (accuracy, macro_f1), a, b, delta, delta_low, delta_high, share_b_better
    severity: pd.DataFrame  # measure, label, a, b, delta, delta_low, delta_high, share_b_better (B's lower)
    n: int  # paired rows
    caption: str  # how the intervals were made


def compare_taxonomy(table_a: PredictionTable, table_b: PredictionTable, taxonomy: Taxonomy, *,
                     rule: RollupRule = "sum", n_boot: int = 1000, seed: int | None = 0,
                     confidence_level: float = 0.95, method: IntervalMethod | None = None,
                     cluster: Literal["sample", "specimen"] = "specimen") -> TaxonomyComparison:
    """Accuracy and macro-F1 of A and B at every rank (finest first; groups per `rule`) and their mistake severity
    and mean hierarchical distance (of the top-1 class), on the samples both hold (labels from A; rows whose label is
    not a class of both models are left out), with the paired bootstrap of B - A: the headline metrics' class-
    stratified plan (`core.scores`), of specimens with `cluster="specimen"` where they have several images, else of
    images. `share_b_better`: share of resamples where B's metric is higher (for the severity measures: lower).
    Raises `ValueError` when the tables share no such sample."""
    if cluster not in ("sample", "specimen"):
        raise ValueError(f"cluster must be 'sample' or 'specimen', got {cluster!r}")
    for table in (table_a, table_b):
        taxonomy.require_classes(table.class_names)
    config = BootstrapConfig(n_boot=n_boot, confidence_level=confidence_level, seed=seed,
                             **({} if method is None else {"method": method}))
    class_names = tuple(dict.fromkeys((*table_a.class_names, *table_b.class_names)))
    union = pd.Index(class_names)
    known = set(table_a.class_names) & set(table_b.class_names)
    fa = table_a.frame[["sample_id", "label", "specimen_id", "pred"]].assign(_row_a=np.arange(len(table_a)))
    fb = table_b.frame[["sample_id", "pred"]].assign(_row_b=np.arange(len(table_b)))
    pair = fa.merge(fb, on="sample_id", suffixes=("_a", "_b"), validate="one_to_one")
    pair = pair[pair["label"].isin(known)]
    if pair.empty:
        raise ValueError("the two tables share no sample with a label both models know; compare checkpoints "
                         "predicted on the same dataset")
    y = union.get_indexer(pair["label"]).astype(np.int64)
    layout = level_layout(taxonomy, class_names)
    codes = layout.codes
    columns, hits, levels = {}, {}, {}
    for model, table, rows in (("a_", table_a, pair["_row_a"].to_numpy()), ("b_", table_b, pair["_row_b"].to_numpy())):
        own = level_predictions(table, taxonomy, rule=rule)
        preds = [union.get_indexer(np.asarray(table.class_names, dtype=object)[own[0][rows]]).astype(np.int64)]
        for level in range(1, len(codes)):
            to_union = pd.Index(taxonomy.groups(class_names, level)[1]).get_indexer(
                taxonomy.groups(table.class_names, level)[1])
            preds.append(to_union[own[level][rows]].astype(np.int64))
        columns[model] = [preds[0]] + [_level_column(y, preds[level], codes[level]) for level in range(1, len(codes))]
        hits[model] = _hits(y, preds[0], codes)
        levels[model] = taxonomy.lca_levels(class_names)[y, preds[0]]
    groups = pair["specimen_id"].to_numpy() if cluster == "specimen" else None
    boot = _bootstrap_levels(y, columns, hits, k=len(class_names), layout=layout, groups=groups, config=config)

    def delta_row(key: str, better: Literal["higher", "lower"]) -> dict:
        share = boot.share_positive[f"delta_{key}"]
        if share is not None and better == "lower":
            share = boot.share_negative[f"delta_{key}"]
        return {"a": boot.values[f"a_{key}"], "b": boot.values[f"b_{key}"], "delta": boot.values[f"delta_{key}"],
                "delta_low": boot.low[f"delta_{key}"], "delta_high": boot.high[f"delta_{key}"],
                "share_b_better": share}

    by_rank = pd.DataFrame([{"rank": rank, "metric": name, **delta_row(f"{name}@{level}", "higher")}
                            for level, rank in enumerate(taxonomy.levels) for name in ("accuracy", "macro_f1")])
    severity = pd.DataFrame([{"measure": name, "label": SEVERITY_MEASURES[name], **delta_row(name, "lower")}
                             for name in SEVERITY_MEASURES])
    for model in ("a", "b"):  # no errors: severity is undefined (the bootstrap's statistic reads 0 there)
        if not (levels[f"{model}_"] > 0).any():
            severity.loc[severity["measure"] == "mistake_severity", [model, "delta", "delta_low", "delta_high",
                                                                     "share_b_better"]] = np.nan
    return TaxonomyComparison(by_rank, severity, len(pair), boot.caption)


def compare_by_rank(table_a: PredictionTable, table_b: PredictionTable, taxonomy: Taxonomy, *,
                    rule: RollupRule = "sum", n_boot: int = 1000, seed: int | None = 0,
                    cluster: Literal["sample", "specimen"] = "specimen") -> pd.DataFrame:
    """`compare_taxonomy(...).by_rank`: B against A at every rank with the paired bootstrap of B - A."""
    return compare_taxonomy(table_a, table_b, taxonomy, rule=rule, n_boot=n_boot, seed=seed, cluster=cluster).by_rank


def compare_severity(table_a: PredictionTable, table_b: PredictionTable, taxonomy: Taxonomy, *, n_boot: int = 1000,
                     seed: int | None = 0, confidence_level: float = 0.95,
                     cluster: Literal["sample", "specimen"] = "specimen") -> pd.DataFrame:
    """`compare_taxonomy(...).severity`: mistake severity and mean hierarchical distance of A and B with the paired
    bootstrap of B - A (lower is better, so `share_b_better` is the share of resamples where B's is lower)."""
    return compare_taxonomy(table_a, table_b, taxonomy, n_boot=n_boot, seed=seed, confidence_level=confidence_level,
                            cluster=cluster).severity


# ----------------------------------------------------------------------------------------------------------------
# The rank bootstrap: every rank and the mistake severity from one set of resamples


_CODE_BITS = 62  # a ResamplingPlan packs a row's label, predictions and flags into one int64 code


def level_predictions(table: PredictionTable, taxonomy: Taxonomy, *, rule: RollupRule = "sum",
                      rolled: Sequence[PredictionTable] | None = None) -> tuple[np.ndarray, ...]:
    """Per level (class level first), the `(N,)` predicted group code of every row: at level 0 `pred_idx`, above it
    the index into `taxonomy.groups(table.class_names, level)[1]` chosen by `rule` (`rollup_table`'s `pred_idx`,
    without building the tables). `rolled`: the tables of `rollup_all(table, taxonomy, rule=rule)` when held."""
    if rule not in ROLLUP_RULES:
        raise ValueError(f"rule must be one of {list(ROLLUP_RULES)}, got {rule!r}")
    pred_idx = table.frame["pred_idx"].to_numpy(dtype=np.int64)
    if rolled is not None:
        return tuple(r.frame["pred_idx"].to_numpy(dtype=np.int64) for r in rolled)
    layout = level_layout(taxonomy, table.class_names)
    if rule == "argmax" or not len(table):
        return tuple(level_codes[pred_idx] if level else pred_idx for level, level_codes in enumerate(layout.codes))
    rows = class_rows(table.pred_probs, layout)
    out = [pred_idx]
    for level in range(1, len(layout.codes)):  # the sums rollup_table takes, so ties resolve alike
        out.append(group_sums(table.pred_probs, layout, level, rows=rows).argmax(axis=1).astype(np.int64))
    return tuple(out)


def _level_column(y: np.ndarray, pred_group: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """A prediction column in class indices whose class-level counts sum to the group-level counts at one level:
    the label itself where the predicted group is the label's group (a group hit: a true positive of the label's
    class), else the first class of the predicted group (a miss: predicted, never a true positive, since that class
    is in another group than the label)."""
    first = np.zeros(int(codes.max()) + 1, dtype=np.int64)
    first[codes[::-1]] = np.arange(len(codes))[::-1]
    return np.where(codes[y] == pred_group, y, first[pred_group])


def _key(model: str, level: int) -> str:
    return f"{model}l{level}"


def _level_chunks(k: int, n_levels: int, n_models: int, n_flags: int) -> list[list[int]]:
    """Levels split so each plan's packed code fits an int64: (1 + columns) x log2(k) bits plus one per flag; the
    flags (and level 0) go in the first plan. One plan in the usual case (300 classes, 4 ranks, one model)."""
    bits = np.log2(max(k, 2))
    chunks: list[list[int]] = [[]]
    for level in range(n_levels):
        flags = n_flags if len(chunks) == 1 else 0
        if chunks[-1] and (1 + n_models * (len(chunks[-1]) + 1)) * bits + flags > _CODE_BITS:
            chunks.append([])
        chunks[-1].append(level)
    return chunks


def _level_statistic(models: tuple[str, ...], levels: Sequence[int], layout: LevelLayout, severity: bool
                     ) -> Callable[[Tally], dict[str, np.ndarray]]:
    """The statistic of one plan: `RANK_METRICS` at each of `levels` for each model (`<model><score>@<level>`), with
    `severity` the mistake severity, mean distance and share of errors within each rank (from the level-0 column and
    the argmax-hit flags `<model>h<level>`), and for two models every B - A (`delta_...`). A resample without errors
    scores 0 severity and 0 shares (`ratio`'s convention); the point value is then reported as undefined instead."""
    n_levels = len(layout.codes)

    def statistic(tally: Tally) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for model in models:
            for level in levels:
                counts = tally.counts(_key(model, level))
                if level:  # (R, K) @ (K, G): faster than a gather + reduceat for the tallies' strided rows
                    onehot = layout.onehots[level]
                    counts = ClassCounts(tp=counts.tp @ onehot, support=counts.support @ onehot,
                                         predicted=counts.predicted @ onehot)
                for name, value in headline_scores(counts, RANK_METRICS).items():
                    out[f"{model}{name}@{level}"] = value
            if severity:
                n = tally.n
                misses = [n - tally.tp[_key(model, 0)].sum(axis=-1)]
                misses += [n - tally.flags[f"{model}h{level}"] for level in range(1, n_levels)]
                total = np.sum(misses, axis=0)  # LCA heights summed: a row misses at every level below its LCA
                out[f"{model}mean_distance"] = ratio(total, n)
                out[f"{model}mistake_severity"] = ratio(total, misses[0])
                for level in range(1, n_levels):
                    out[f"{model}within@{level}"] = ratio(misses[0] - misses[level], misses[0])
        if len(models) == 2:
            a, b = models
            for name in [name[len(a):] for name in out if name.startswith(a)]:
                out[f"delta_{name}"] = out[f"{b}{name}"] - out[f"{a}{name}"]
        return out

    return statistic


@dataclass(frozen=True)
class _LevelBootstrap:
    """Point values and intervals of `_level_statistic`'s named statistics, and what was resampled."""

    values: dict[str, float]
    low: dict[str, float | None]
    high: dict[str, float | None]
    share_positive: dict[str, float | None]  # share of resamples with the statistic > 0 (for deltas)
    share_negative: dict[str, float | None]  # share of resamples with the statistic < 0
    unit: str
    n_units: int
    n_image_units: int
    caption: str


def _bootstrap_levels(y: np.ndarray, columns: Mapping[str, Sequence[np.ndarray]], hits: Mapping[str, np.ndarray],
                      *, k: int, layout: LevelLayout, groups: np.ndarray | None,
                      config: BootstrapConfig) -> _LevelBootstrap:
    """Every level's scores (and the severity) of one or two models from `core.scores.bootstrap` on the class-
    stratified (specimen) `ResamplingPlan` of the rows: `columns[model][level]` is `_level_column`'s column,
    `hits[model]` the `(levels, N)` argmax hits. Usually one plan; more only when the packed codes would overflow."""
    models = tuple(columns)
    n_levels = len(layout.codes)
    values: dict[str, float] = {}
    low: dict[str, float | None] = {}
    high: dict[str, float | None] = {}
    share: dict[str, float | None] = {}
    share_negative: dict[str, float | None] = {}
    plan = None
    for index, chunk in enumerate(_level_chunks(k, n_levels, len(models), len(models) * (n_levels - 1))):
        predictions = {_key(model, level): columns[model][level] for model in models for level in chunk}
        flags = {f"{model}h{level}": hits[model][level] for model in models for level in range(1, n_levels)} \
            if index == 0 else None
        plan = ResamplingPlan(y, predictions, k=k, flags=flags, groups=groups)
        result = bootstrap(plan, _level_statistic(models, chunk, layout, index == 0), config)
        for name, value in result.values.items():
            values[name] = float(value)
            low[name] = float(result.low[name]) if config.n_boot else None
            high[name] = float(result.high[name]) if config.n_boot else None
            share[name] = float(np.mean(result.draws[name] > 0)) if config.n_boot else None
            share_negative[name] = float(np.mean(result.draws[name] < 0)) if config.n_boot else None
    return _LevelBootstrap(values, low, high, share, share_negative, plan.unit, plan.n_units, plan.n_image_units,
                           describe_intervals(config, plan.unit))


def _hits(y: np.ndarray, pred: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """`(L, N)` bool: label and (class-level) prediction in one group at each level (the argmax roll-up)."""
    return codes[:, y] == codes[:, pred]


@dataclass(frozen=True)
class RankBootstrap:
    """The metrics at every rank and the mistake severity of one table, all scored on the same resamples."""

    ranks: tuple[RankMetrics, ...]  # class level first
    severity: MistakeSeverity


def rank_bootstrap(table: PredictionTable, taxonomy: Taxonomy, *, rule: RollupRule = "sum", n_boot: int = 1000,
                   seed: int | None = 0, confidence_level: float = 0.95, method: IntervalMethod | None = None,
                   rolled: Sequence[PredictionTable] | None = None) -> RankBootstrap:
    """Accuracy, balanced accuracy and macro-F1 (`RANK_METRICS`) at every level (groups per `rule`), and the
    mistake severity (of the top-1 class: `mistake_severity`), with intervals from one `core.scores.bootstrap` of
    the table's class-stratified specimen (or image) `ResamplingPlan`, the headline metrics' plan: each resample is
    scored at every rank at once (a group's counts are the sums of its classes' counts), so the ranks' intervals
    come from the same draws. `method`: "bayes", "bca" or "percentile" (None: the product's default). `rolled`: as in
    `level_predictions`. Weighted-F1 and top-k accuracy are not computed at the ranks (None)."""
    taxonomy.require_classes(table.class_names)
    config = BootstrapConfig(n_boot=n_boot, confidence_level=confidence_level, seed=seed,
                             **({} if method is None else {"method": method}))
    frame = table.frame
    keep = frame["label_idx"].to_numpy() >= 0
    y = frame["label_idx"].to_numpy(dtype=np.int64)[keep]
    layout = level_layout(taxonomy, table.class_names)
    codes, n_groups = layout.codes, layout.n_groups
    preds = [p[keep] for p in level_predictions(table, taxonomy, rule=rule, rolled=rolled)]
    levels = error_levels(table, taxonomy)[keep]
    if not len(y):
        boot = None
    else:
        columns = [preds[0]] + [_level_column(y, preds[level], codes[level]) for level in range(1, len(codes))]
        boot = _bootstrap_levels(y, {"": columns}, {"": _hits(y, preds[0], codes)}, k=len(table.class_names),
                                 layout=layout, groups=frame["specimen_id"].to_numpy()[keep], config=config)
    excluded = metrics.excluded_labels(table)
    ranks = []
    for level, rank in enumerate(taxonomy.levels):
        present = len(np.unique(codes[level][y])) if len(y) else 0
        estimates = tuple(_estimate(boot, "", name, level) if name in RANK_METRICS else
                          MetricEstimate(name, None, None, None, "not computed per rank")
                          for name in METRIC_LABELS)
        unit = "specimen" if table.meta.get("level") == "specimen" else (boot.unit if boot else "image")
        headline = HeadlineMetrics(
            estimates=estimates, n_evaluated=int(len(y)), n_excluded=int(excluded.sum()),
            excluded_labels=tuple(sorted(excluded.index)), n_classes_present=present,
            n_boot=n_boot if boot else 0, confidence_level=confidence_level, unit=unit,
            n_units=boot.n_units if boot else 0, method=config.method,
            n_single_specimen_classes=boot.n_image_units if boot else 0)
        ranks.append(RankMetrics(rank, level, n_groups[level], headline))
    return RankBootstrap(tuple(ranks), _severity(levels, taxonomy, boot, ""))


def _estimate(boot: _LevelBootstrap | None, model: str, name: str, level: int | None = None,
              statistic: str | None = None) -> MetricEstimate:
    key = f"{model}{statistic or name}" + ("" if level is None else f"@{level}")
    if boot is None:
        return MetricEstimate(name, None, None, None, "no evaluated samples")
    return MetricEstimate(name, boot.values[key], boot.low[key], boot.high[key])


def _severity(levels: np.ndarray, taxonomy: Taxonomy, boot: _LevelBootstrap | None, model: str) -> MistakeSeverity:
    """The histogram of `levels` (LCA levels of the evaluated rows) with the intervals of `boot`."""
    top = taxonomy.root_level
    counts = np.bincount(levels, minlength=top + 1)[: top + 1]
    errors = counts[1:]
    n_errors, n = int(errors.sum()), int(counts.sum())
    intervals = bool(n_errors) and boot is not None and boot.low[f"{model}mean_distance"] is not None

    def bound(side: str, level: int) -> float | None:
        if not intervals:
            return None
        return 1.0 if level == top else getattr(boot, side)[f"{model}within@{level}"] + 0.0  # + 0.0: no "-0.0%"

    bounds = {side: [bound(side, level) for level in range(1, top + 1)] for side in ("low", "high")}
    histogram = pd.DataFrame({
        "level": np.arange(1, top + 1),
        "lca_rank": [taxonomy.level_name(level) for level in range(1, top + 1)],
        "errors": errors.astype(np.int64),
        "share": errors / max(n_errors, 1),
        "within": np.cumsum(errors) / max(n_errors, 1),
        "within_low": pd.array(bounds["low"], dtype="Float64").astype(float),
        "within_high": pd.array(bounds["high"], dtype="Float64").astype(float),
    })
    severity = (_estimate(boot, model, "mistake_severity") if n_errors else
                MetricEstimate("mistake_severity", None, None, None, "no errors"))
    return MistakeSeverity(histogram=histogram, mistake_severity=severity,
                           mean_distance=_estimate(boot, model, "mean_distance"), n_errors=n_errors, n_evaluated=n,
                           caption=boot.caption if boot is not None and boot.low[f"{model}mean_distance"]
                           is not None else "no intervals")
