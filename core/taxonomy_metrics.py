"""Evaluation along the taxonomy: predictions rolled up to every rank, mistake severity (how far up the tree an error
goes), the folded confusion matrix, and the hierarchy-aware decision rule (conditional risk minimisation).

Metrics at a rank are those of `core.metrics` on a rolled-up `PredictionTable` whose classes are the rank's groups
(probabilities summed within a group), so their bootstrap intervals come from the one bootstrap there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from core import metrics
from core.compare import compare_predictions
from core.confusion import confusion_counts
from core.metrics import HeadlineMetrics, MetricEstimate
from core.predictions import PredictionTable
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
    n, g = len(table), len(groups)
    onehot = np.zeros((len(codes), g), dtype=np.float32)
    onehot[np.arange(len(codes)), codes] = 1.0
    group_probs = table.pred_probs @ onehot if n else np.zeros((0, g), dtype=np.float32)
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
                    seed: int | None = 0, confidence_level: float = 0.95, method: str | None = None,
                    class_level: HeadlineMetrics | None = None,
                    rolled: Sequence[PredictionTable] | None = None) -> tuple[RankMetrics, ...]:
    """Headline metrics with bootstrap intervals (`core.metrics.compute_headline_metrics`, the one bootstrap: class-
    stratified, of specimens where they have several images) at the class level and at every rank, finest first.
    `method`: "bayes", "bca" or "percentile" (None: that function's default, "bayes").

    `class_level`: the class-level result already computed with the same bootstrap settings (the Overview's), not
    recomputed; `rolled`: the tables rolled up to each level by `rollup_table` with the same `rule` (level 0 first),
    when the caller holds them.
    """
    taxonomy.require_classes(table.class_names)
    if rolled is not None and len(rolled) != len(taxonomy.levels):
        raise ValueError(f"rolled holds {len(rolled)} tables for {len(taxonomy.levels)} levels")
    out = []
    for level, rank in enumerate(taxonomy.levels):
        level_table = rolled[level] if rolled is not None else rollup_table(table, taxonomy, level, rule=rule)
        if level == 0 and class_level is not None:
            headline = class_level
        else:
            options = {} if method is None else {"method": method}
            headline = metrics.compute_headline_metrics(level_table, n_boot=n_boot, seed=seed,
                                                        confidence_level=confidence_level, **options)
        out.append(RankMetrics(rank, level, len(level_table.class_names), headline))
    return tuple(out)


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

    histogram: pd.DataFrame  # level, lca_rank, errors, share (of errors), within (share of errors with LCA <= level)
    mistake_severity: MetricEstimate  # mean LCA height over the errors, with its bootstrap interval
    mean_distance: MetricEstimate  # mean LCA height over all evaluated samples (0 when right), with its interval
    n_errors: int
    n_evaluated: int

    def within_lines(self) -> list[str]:
        """"x% of errors stay within the same <rank>" for every rank, finest first."""
        if not self.n_errors:
            return []
        rows = self.histogram[self.histogram["lca_rank"] != "root"]
        return [f"{row.within:.1%} of errors stay within the same {row.lca_rank}" for row in rows.itertuples()]


def mistake_severity(table: PredictionTable, taxonomy: Taxonomy, *, n_boot: int = 1000, seed: int | None = 0,
                     confidence_level: float = 0.95) -> MistakeSeverity:
    """The histogram of errors by the rank of their lowest common ancestor, and the mean hierarchical distance over
    errors (mistake severity, Bertinetto et al. 2020) and over all samples, with percentile bootstrap intervals
    (resamples of the evaluated rows, drawn as multinomial counts over the distance values)."""
    levels = error_levels(table, taxonomy)
    levels = levels[levels >= 0]
    return _severity_from_levels(levels, taxonomy, n_boot=n_boot, seed=seed, confidence_level=confidence_level)


def _severity_from_levels(levels: np.ndarray, taxonomy: Taxonomy, *, n_boot: int, seed: int | None,
                          confidence_level: float) -> MistakeSeverity:
    top = taxonomy.root_level
    counts = np.bincount(levels, minlength=top + 1)[: top + 1]
    errors = counts[1:]
    n_errors = int(errors.sum())
    histogram = pd.DataFrame({
        "level": np.arange(1, top + 1),
        "lca_rank": [taxonomy.level_name(level) for level in range(1, top + 1)],
        "errors": errors.astype(np.int64),
        "share": errors / max(n_errors, 1),
        "within": np.cumsum(errors) / max(n_errors, 1),
    })
    draws = _level_draws(counts, n_boot=n_boot, seed=seed)
    distances = np.arange(top + 1, dtype=np.float64)
    n = int(counts.sum())
    severity_value = float(counts @ distances / n_errors) if n_errors else None
    distance_value = float(counts @ distances / n) if n else None
    with np.errstate(invalid="ignore", divide="ignore"):
        severity_draws = draws @ distances / draws[:, 1:].sum(axis=1) if draws is not None else None
        distance_draws = draws @ distances / draws.sum(axis=1) if draws is not None else None
    return MistakeSeverity(
        histogram=histogram,
        mistake_severity=_estimate("mistake_severity", severity_value, severity_draws, confidence_level,
                                   "no errors" if not n_errors else ""),
        mean_distance=_estimate("mean_distance", distance_value, distance_draws, confidence_level,
                                "no evaluated samples" if not n else ""),
        n_errors=n_errors,
        n_evaluated=n,
    )


def _level_draws(counts: np.ndarray, *, n_boot: int, seed: int | None) -> np.ndarray | None:
    """`(n_boot, L)` resampled counts per distance value (rows resampled with replacement)."""
    n = int(counts.sum())
    if not n_boot or not n:
        return None
    return np.random.default_rng(seed).multinomial(n, counts / n, size=n_boot).astype(np.float64)


def _estimate(name: str, value: float | None, draws: np.ndarray | None, confidence_level: float,
              note: str) -> MetricEstimate:
    low = high = None
    if value is not None and draws is not None:
        finite = draws[np.isfinite(draws)]
        if finite.size:
            alpha = (1 - confidence_level) / 2
            low, high = (float(v) for v in np.quantile(finite, [alpha, 1 - alpha]))
    return MetricEstimate(name, value, low, high, note)


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
    at level l: one (N, G_l) roll-up per level instead of an (N, K) x (K, K) product. Ties go to the lower index.
    """
    pred_probs = np.asarray(pred_probs, dtype=np.float32)
    codes = taxonomy.level_codes(class_names)
    score = np.zeros(pred_probs.shape, dtype=np.float64)
    for level_codes in codes:
        g = int(level_codes.max()) + 1 if len(level_codes) else 0
        onehot = np.zeros((len(level_codes), g), dtype=np.float32)
        onehot[np.arange(len(level_codes)), level_codes] = 1.0
        score += (pred_probs @ onehot)[:, level_codes]
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
                         before: Sequence[RankMetrics] | None = None) -> DecisionRuleEffect:
    """What the hierarchy-aware decision rule would change: accuracy and macro-F1 at every rank, mistake severity
    and mean distance, before (argmax) and after (`decide_by_risk`). `before`: `metrics_by_rank(table, taxonomy,
    rule="argmax")` with the same `n_boot` and `seed`, when the caller holds it."""
    after = decide_by_risk(table, taxonomy)
    before_ranks = before if before is not None else metrics_by_rank(table, taxonomy, rule="argmax", n_boot=n_boot,
                                                                     seed=seed)
    after_ranks = metrics_by_rank(after, taxonomy, rule="argmax", n_boot=n_boot, seed=seed)
    rows = []
    for b, a in zip(before_ranks, after_ranks, strict=True):
        row = {"rank": b.rank}
        for name in ("accuracy", "macro_f1"):
            for tag, result in (("before", b), ("after", a)):
                estimate = result.headline[name]
                row.update({f"{name}_{tag}": estimate.value, f"{name}_{tag}_low": estimate.low,
                            f"{name}_{tag}_high": estimate.high})
        row["delta_accuracy"] = (row["accuracy_after"] - row["accuracy_before"]
                                 if row["accuracy_after"] is not None and row["accuracy_before"] is not None else None)
        rows.append(row)
    sev_before = mistake_severity(table, taxonomy, n_boot=n_boot, seed=seed)
    sev_after = mistake_severity(after, taxonomy, n_boot=n_boot, seed=seed)
    severity = pd.DataFrame([
        {"measure": name, "label": SEVERITY_MEASURES[name],
         "before": getattr(sev_before, name).value, "before_low": getattr(sev_before, name).low,
         "before_high": getattr(sev_before, name).high,
         "after": getattr(sev_after, name).value, "after_low": getattr(sev_after, name).low,
         "after_high": getattr(sev_after, name).high}
        for name in SEVERITY_MEASURES
    ])
    histogram = pd.DataFrame({"lca_rank": sev_before.histogram["lca_rank"],
                              "errors_before": sev_before.histogram["errors"],
                              "errors_after": sev_after.histogram["errors"]})
    changed = int((after.frame["pred_idx"].to_numpy() != table.frame["pred_idx"].to_numpy()).sum())
    return DecisionRuleEffect(pd.DataFrame(rows), severity, histogram, changed)


# ----------------------------------------------------------------------------------------------------------------
# Two checkpoints


def compare_by_rank(table_a: PredictionTable, table_b: PredictionTable, taxonomy: Taxonomy, *,
                    rule: RollupRule = "sum", n_boot: int = 1000, seed: int | None = 0,
                    cluster: Literal["sample", "specimen"] = "sample") -> pd.DataFrame:
    """B against A at every rank (finest first), from `core.compare.compare_predictions` on both tables rolled up:
    rank, metric (accuracy, macro_f1), a, b, delta, delta_low, delta_high, share_b_better (paired bootstrap)."""
    frames = []
    for level, rank in enumerate(taxonomy.levels):
        result = compare_predictions(rollup_table(table_a, taxonomy, level, rule=rule),
                                     rollup_table(table_b, taxonomy, level, rule=rule),
                                     n_boot=n_boot, seed=seed, cluster=cluster)
        chosen = result.metrics[result.metrics["metric"].isin(["accuracy", "macro_f1"])]
        frames.append(chosen.assign(rank=rank))
    out = pd.concat(frames, ignore_index=True)
    return out[["rank", "metric", "a", "b", "delta", "delta_low", "delta_high", "share_b_better"]]


def compare_severity(table_a: PredictionTable, table_b: PredictionTable, taxonomy: Taxonomy, *, n_boot: int = 1000,
                     seed: int | None = 0, confidence_level: float = 0.95) -> pd.DataFrame:
    """Mistake severity and mean hierarchical distance of A and B on the samples both hold (labels from A), with
    the paired bootstrap of B - A (one resample of the rows scores both): measure, label, a, b, delta, delta_low,
    delta_high, share_b_better (for these a lower value is better, so it is the share where B's is lower)."""
    for table in (table_a, table_b):
        taxonomy.require_classes(table.class_names)
    la, lb = error_levels(table_a, taxonomy), error_levels(table_b, taxonomy)
    pair = pd.DataFrame({"sample_id": table_a.frame["sample_id"].to_numpy(), "a": la}).merge(
        pd.DataFrame({"sample_id": table_b.frame["sample_id"].to_numpy(), "b": lb}), on="sample_id",
        validate="one_to_one")
    pair = pair[(pair["a"] >= 0) & (pair["b"] >= 0)]
    if pair.empty:
        raise ValueError("the two tables share no sample with a label both models know; compare checkpoints "
                         "predicted on the same dataset")
    top = taxonomy.root_level + 1
    cells = np.bincount(pair["a"].to_numpy() * top + pair["b"].to_numpy(), minlength=top * top).astype(np.float64)
    n = int(cells.sum())
    d_a = np.repeat(np.arange(top), top).astype(np.float64)
    d_b = np.tile(np.arange(top), top).astype(np.float64)
    draws = np.random.default_rng(seed).multinomial(n, cells / n, size=n_boot).astype(np.float64) if n_boot else None
    alpha = (1 - confidence_level) / 2
    rows = []
    for name in SEVERITY_MEASURES:
        def value(counts: np.ndarray, d: np.ndarray, measure: str = name) -> np.ndarray:
            with np.errstate(invalid="ignore", divide="ignore"):
                denominator = counts @ (d > 0) if measure == "mistake_severity" else counts.sum(axis=-1)
                return counts @ d / denominator
        a_val, b_val = float(value(cells, d_a)), float(value(cells, d_b))
        row = {"measure": name, "label": SEVERITY_MEASURES[name], "a": a_val, "b": b_val, "delta": b_val - a_val}
        if draws is not None:
            delta = value(draws, d_b) - value(draws, d_a)
            delta = delta[np.isfinite(delta)]
            if delta.size:
                row.update(delta_low=float(np.quantile(delta, alpha)), delta_high=float(np.quantile(delta, 1 - alpha)),
                           share_b_better=float(np.mean(delta < 0)))
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=["measure", "label", "a", "b", "delta", "delta_low", "delta_high",
                                               "share_b_better"])
