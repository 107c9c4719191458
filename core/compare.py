"""Comparing two checkpoints on the same samples: paired bootstrap of F1 deltas, per-class deltas, flipped samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from scipy import sparse

from core.predictions import PredictionTable

Cluster = Literal["sample", "specimen"]
METRICS = ("macro_f1", "weighted_f1", "accuracy")
FLIP_COLUMNS = ("sample_id", "split", "specimen_id", "label", "pred_a", "pred_b", "confidence_a", "confidence_b",
                "p_label_a", "p_label_b", "direction")
_BOOT_CHUNK_CELLS = 4_000_000  # bootstrap counts are drawn in chunks of about this many numbers (memory bound)


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
    cluster: Cluster  # what was resampled: images, or whole specimens with all their images
    notes: tuple[str, ...] = field(default_factory=tuple)  # e.g. labels that differ between the two tables

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
    cluster: Cluster = "sample",
) -> Comparison:
    """Compare B with A on the rows both tables hold (matched by `sample_id`), in `split` (None: all rows).

    Rows whose label is not a class of both models are left out (neither could be right on them by the same rules).
    Point values: macro-F1 over the classes present in the compared labels, weighted-F1, accuracy. Intervals: the
    paired bootstrap, i.e. the same resample scores both models, so the delta's interval reflects only their
    disagreement; with `cluster="specimen"` whole specimens are resampled (images of one individual are not
    independent). Draws are multinomial counts over the distinct (true, pred A, pred B) cells, equivalent to
    resampling rows. `share_b_better` is the share of resamples where B's value exceeds A's.
    Raises `ValueError` when the tables share no sample.
    """
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level}")
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

    point_a, point_b = _scores(_class_counts(y, pa, k)), _scores(_class_counts(y, pb, k))
    boot_a = boot_b = None
    if n_boot:
        groups = paired["specimen_id"].to_numpy() if cluster == "specimen" else None
        boot_a, boot_b = _paired_bootstrap(y, pa, pb, k, n_boot=n_boot, seed=seed, groups=groups)
    alpha = (1 - confidence_level) / 2
    rows = []
    for name in METRICS:
        row = {"metric": name, "a": point_a[name], "b": point_b[name], "delta": point_b[name] - point_a[name]}
        if boot_a is not None:
            delta = boot_b[name] - boot_a[name]
            row.update(
                delta_low=float(np.quantile(delta, alpha)), delta_high=float(np.quantile(delta, 1 - alpha)),
                a_low=float(np.quantile(boot_a[name], alpha)), a_high=float(np.quantile(boot_a[name], 1 - alpha)),
                b_low=float(np.quantile(boot_b[name], alpha)), b_high=float(np.quantile(boot_b[name], 1 - alpha)),
                share_b_better=float(np.mean(delta > 0)),
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
    )


def per_class_delta(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray,
                    class_names: Sequence[str]) -> pd.DataFrame:
    """Per class present in `y_true`: support, F1/precision/recall of A and B, and `delta = f1_b - f1_a`.

    `y_true`, `pred_a`, `pred_b`: integer arrays of shape `(N,)` indexing `class_names`. Sorted by delta, worst first.
    """
    k = len(class_names)
    counts_a, counts_b = _class_counts(y_true, pred_a, k), _class_counts(y_true, pred_b, k)
    frame = pd.DataFrame({"class": list(class_names), "support": counts_a[1].astype(np.int64)})
    for suffix, (tp, support, predicted) in (("a", counts_a), ("b", counts_b)):
        frame[f"f1_{suffix}"] = _ratio(2 * tp, support + predicted)
        frame[f"precision_{suffix}"] = _ratio(tp, predicted)
        frame[f"recall_{suffix}"] = _ratio(tp, support)
    frame["delta"] = frame["f1_b"] - frame["f1_a"]
    frame = frame[frame["support"] > 0]
    return frame.sort_values(["delta", "class"], kind="stable").reset_index(drop=True)


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


def _class_counts(y: np.ndarray, pred: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tp, support, predicted) per class, each `(K,)`."""
    support = np.bincount(y, minlength=k).astype(np.float64)
    predicted = np.bincount(pred, minlength=k).astype(np.float64)
    tp = np.bincount(y[y == pred], minlength=k).astype(np.float64)
    return tp, support, predicted


def _scores(counts: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, float]:
    tp, support, predicted = (c[None, :] for c in counts)
    return {name: float(values[0]) for name, values in _scores_batch(tp, support, predicted).items()}


def _scores_batch(tp: np.ndarray, support: np.ndarray, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """Macro-F1 (over classes present in the resample), weighted-F1 and accuracy from `(B, K)` counts."""
    n = support.sum(axis=1)
    present = support > 0
    f1 = _ratio(2 * tp, support + predicted)
    return {
        "macro_f1": (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1),
        "weighted_f1": (f1 * support).sum(axis=1) / np.maximum(n, 1),
        "accuracy": tp.sum(axis=1) / np.maximum(n, 1),
    }


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros(np.broadcast(numerator, denominator).shape),
                     where=denominator > 0)


def _paired_bootstrap(y: np.ndarray, pa: np.ndarray, pb: np.ndarray, k: int, *, n_boot: int, seed: int | None,
                      groups: np.ndarray | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Both models' metrics over the same `n_boot` resamples (of rows, or of `groups` with all their rows)."""
    codes = (y * k + pa) * k + pb
    cells, cell_of_row = np.unique(codes, return_inverse=True)
    n_cells = len(cells)
    cell_y, cell_a, cell_b = cells // (k * k), (cells // k) % k, cells % k
    rows = np.arange(n_cells)
    ones = np.ones(n_cells)
    to_true = sparse.csr_matrix((ones, (rows, cell_y)), shape=(n_cells, k))
    to_a = sparse.csr_matrix((ones, (rows, cell_a)), shape=(n_cells, k))
    to_b = sparse.csr_matrix((ones, (rows, cell_b)), shape=(n_cells, k))
    tp_a = sparse.csr_matrix(((cell_y == cell_a).astype(float), (rows, cell_y)), shape=(n_cells, k))
    tp_b = sparse.csr_matrix(((cell_y == cell_b).astype(float), (rows, cell_y)), shape=(n_cells, k))

    rng = np.random.default_rng(seed)
    if groups is None:
        units = np.bincount(cell_of_row, minlength=n_cells).astype(np.float64)
        n_units = len(y)
        probabilities = units / n_units
        by_unit = None
    else:  # each specimen contributes all its rows' cells; specimens are drawn with replacement
        _, unit_of_row = np.unique(groups, return_inverse=True)
        n_units = int(unit_of_row.max()) + 1
        by_unit = sparse.csr_matrix((np.ones(len(y)), (unit_of_row, cell_of_row)), shape=(n_units, n_cells))
        probabilities = np.full(n_units, 1.0 / n_units)
    chunk = max(1, _BOOT_CHUNK_CELLS // max(len(probabilities), 1))
    out_a: dict[str, list[np.ndarray]] = {name: [] for name in METRICS}
    out_b: dict[str, list[np.ndarray]] = {name: [] for name in METRICS}
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        draws = rng.multinomial(n_units, probabilities, size=size).astype(np.float64)  # (B, units)
        counts = draws if by_unit is None else np.asarray((by_unit.T @ draws.T).T)  # (B, cells)
        support = np.asarray((to_true.T @ counts.T).T)
        for out, to_pred, to_tp in ((out_a, to_a, tp_a), (out_b, to_b, tp_b)):
            predicted = np.asarray((to_pred.T @ counts.T).T)
            tp = np.asarray((to_tp.T @ counts.T).T)
            for name, values in _scores_batch(tp, support, predicted).items():
                out[name].append(values)
    return ({n: np.concatenate(v) for n, v in out_a.items()}, {n: np.concatenate(v) for n, v in out_b.items()})


def build_f1_delta_figure(per_class: pd.DataFrame, *, name_a: str = "A", name_b: str = "B",
                          max_classes: int = 60):
    """Horizontal bars of per-class F1 delta (B - A), worst first; `per_class` from `per_class_delta`.

    With more than `max_classes` classes, the `max_classes` largest changes either way are shown.
    """
    import plotly.graph_objects as go

    frame = per_class
    if len(frame) > max_classes:
        order = frame["delta"].abs().sort_values(ascending=False, kind="stable").index[:max_classes]
        frame = frame.loc[order].sort_values("delta", kind="stable")
    colours = ["#c0392b" if d < 0 else "#2e86c1" if d > 0 else "#999999" for d in frame["delta"]]
    hover = [f"{c}<br>F1 {name_a}: {a:.3f}<br>F1 {name_b}: {b:.3f}<br>support {s}"
             for c, a, b, s in zip(frame["class"], frame["f1_a"], frame["f1_b"], frame["support"], strict=True)]
    figure = go.Figure(go.Bar(x=frame["delta"], y=frame["class"], orientation="h", marker_color=colours,
                              hovertext=hover, hoverinfo="text"))
    figure.update_layout(
        title=f"Per-class F1 change: {name_b} − {name_a}", xaxis_title="F1 delta", yaxis_title=None,
        height=max(300, 22 * len(frame) + 120), margin={"l": 10, "r": 10, "t": 50, "b": 40},
        yaxis={"categoryorder": "array", "categoryarray": list(frame["class"])},
    )
    figure.add_vline(x=0, line_color="#555555", line_width=1)
    return figure
