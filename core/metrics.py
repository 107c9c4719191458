"""Evaluation metrics of a predictions table: headline scores with bootstrap intervals, per-class table, confusion.

Everything here is computed from a `PredictionTable` with numpy, scipy and scikit-learn (no Streamlit), so the
pages only render it. Samples whose label is not one of the model's classes (`label_idx == -1`) are excluded from
every metric and reported by count; an empty table gives empty results, never an exception.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.cluster.hierarchy import leaves_list, linkage
from scipy.spatial.distance import squareform
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    precision_recall_fscore_support,
)

from core.predictions import PredictionTable, build_prediction_table

Normalise = Literal["none", "true", "pred"]
ClassOrder = Literal["frequency", "name", "taxonomy", "similarity"]

METRIC_LABELS: dict[str, str] = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "macro_f1": "Macro-F1",
    "weighted_f1": "Weighted-F1",
    "top3_accuracy": "Top-3 accuracy",
    "top5_accuracy": "Top-5 accuracy",
}
_TOP_K = (3, 5)
_BOOT_CHUNK_CELLS = 4_000_000  # bootstrap draws are made in chunks of about this many cell counts (memory bound)


# ----------------------------------------------------------------------------------------------------------------
# Data types


@dataclass(frozen=True)
class MetricEstimate:
    """One headline metric with its bootstrap percentile interval; `value` is None where it is undefined."""

    name: str  # key in METRIC_LABELS
    value: float | None  # point estimate from scikit-learn on all evaluated samples
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


def compute_headline_metrics(
    table: PredictionTable,
    *,
    n_boot: int = 1000,
    seed: int | None = 0,
    confidence_level: float = 0.95,
) -> HeadlineMetrics:
    """Accuracy, balanced accuracy, macro-F1, weighted-F1, top-3 and top-5 accuracy, each with a bootstrap interval.

    Point estimates come from scikit-learn on the evaluated rows (see `evaluated`). Macro-F1 averages over the
    classes present in the evaluated labels (a model class with no sample in this split would otherwise add a 0);
    weighted-F1 weights by support; balanced accuracy is the mean recall over present classes (as scikit-learn).
    Top-k accuracy equals `top_k_accuracy_score(..., labels=range(K))` and is undefined (None) when the model has
    no more than k classes (it would be trivially 1).

    The interval is the percentile interval of `n_boot` resamples of the evaluated samples with replacement. A
    resample's confusion is drawn directly as a multinomial over the distinct (true, pred, top-3 hit, top-5 hit)
    cells, which is the same distribution as resampling rows and costs O(n_boot x cells) instead of O(n_boot x N).
    `seed` makes it reproducible; `n_boot=0` skips intervals.
    """
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level}")
    excluded = excluded_labels(table)
    table_eval = evaluated(table)
    n = len(table_eval)
    k = len(table.class_names)
    y_true = table_eval.frame["label_idx"].to_numpy(dtype=np.int64)
    y_pred = table_eval.frame["pred_idx"].to_numpy(dtype=np.int64)
    present = np.unique(y_true)
    common = {
        "n_evaluated": n,
        "n_excluded": int(excluded.sum()),
        "excluded_labels": tuple(sorted(excluded.index)),
        "n_classes_present": int(len(present)),
        "confidence_level": confidence_level,
    }
    if n == 0:
        estimates = tuple(MetricEstimate(name, None, None, None, "no evaluated samples") for name in METRIC_LABELS)
        return HeadlineMetrics(estimates=estimates, n_boot=0, **common)

    values: dict[str, float | None] = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(_balanced_accuracy(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=present, average="weighted", zero_division=0)),
    }
    hits: dict[int, np.ndarray] = {}
    for top in _TOP_K:
        if top < k:
            # Equal to sklearn's top_k_accuracy_score(y_true, pred_probs, k=top, labels=range(K)) (tested, ties
            # included), without its full (N, K) argsort: 1.3 s per k at 100,000 x 300 against 0.1 s here.
            hits[top] = top_k_hits(table_eval.pred_probs, y_true, k=top)
            values[f"top{top}_accuracy"] = float(hits[top].mean())
        else:
            values[f"top{top}_accuracy"] = None

    bounds: dict[str, tuple[float | None, float | None]] = {}
    if n_boot:
        draws = _bootstrap_draws(y_true, y_pred, hits, k=k, n_boot=n_boot, seed=seed)
        alpha = (1.0 - confidence_level) / 2.0
        for name, samples in draws.items():
            finite = samples[np.isfinite(samples)]
            if finite.size:
                low, high = np.quantile(finite, [alpha, 1.0 - alpha])
                bounds[name] = (float(low), float(high))
    estimates = []
    for name in METRIC_LABELS:
        value = values[name]
        note = f"undefined: the model has only {k} classes" if value is None else ""
        low, high = bounds.get(name, (None, None))
        estimates.append(MetricEstimate(name, value, low, high, note))
    return HeadlineMetrics(estimates=tuple(estimates), n_boot=n_boot, **common)


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": expected, those classes are skipped
        warnings.simplefilter("ignore", UserWarning)
        return balanced_accuracy_score(y_true, y_pred)


def top_k_hits(pred_probs: np.ndarray, y_true: np.ndarray, *, k: int) -> np.ndarray:
    """Boolean `(N,)`: is `y_true[i]` among the `k` highest scores of row i.

    Ties are broken as scikit-learn's `top_k_accuracy_score` does (a stable ascending argsort reversed, so among
    equal scores the higher class index ranks first), so `hits.mean()` equals that function's result.
    """
    pred_probs = np.asarray(pred_probs)
    y_true = np.asarray(y_true, dtype=np.int64)
    n, n_classes = pred_probs.shape
    if n == 0:
        return np.zeros(0, dtype=bool)
    out = np.empty(n, dtype=bool)
    columns = np.arange(n_classes)
    step = max(1, 2_000_000 // max(n_classes, 1))  # rows per chunk, bounds the temporary boolean arrays
    for start in range(0, n, step):
        probs = pred_probs[start : start + step]
        truth = y_true[start : start + step]
        score = probs[np.arange(len(truth)), truth][:, None]
        ahead = (probs > score).sum(axis=1) + ((probs == score) & (columns[None, :] > truth[:, None])).sum(axis=1)
        out[start : start + step] = ahead < k
    return out


def _bootstrap_draws(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    hits: Mapping[int, np.ndarray],
    *,
    k: int,
    n_boot: int,
    seed: int | None,
) -> dict[str, np.ndarray]:
    """Metric values over `n_boot` resamples, drawn as multinomial counts over the distinct sample cells."""
    code = y_true * k + y_pred
    for top in sorted(hits):  # one bit per top-k hit, appended low
        code = code * 2 + hits[top].astype(np.int64)
    cells, cell_counts = np.unique(code, return_counts=True)
    hit_bits = {}
    rest = cells
    for top in sorted(hits, reverse=True):
        hit_bits[top] = (rest % 2).astype(np.float64)
        rest = rest // 2
    cell_true, cell_pred = rest // k, rest % k
    n = int(cell_counts.sum())
    probabilities = cell_counts / n
    n_cells = len(cells)
    # Sparse (cells x K) indicator matrices turn (B x cells) draws into per-class sums by one product each.
    rows = np.arange(n_cells)
    to_true = sparse.csr_matrix((np.ones(n_cells), (rows, cell_true)), shape=(n_cells, k))
    to_pred = sparse.csr_matrix((np.ones(n_cells), (rows, cell_pred)), shape=(n_cells, k))
    diagonal = (cell_true == cell_pred).astype(np.float64)
    to_tp = sparse.csr_matrix((diagonal, (rows, cell_true)), shape=(n_cells, k))

    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOT_CHUNK_CELLS // max(n_cells, 1))
    names = ["accuracy", "balanced_accuracy", "macro_f1", "weighted_f1"] + [f"top{top}_accuracy" for top in hits]
    out: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        counts = rng.multinomial(n, probabilities, size=size).astype(np.float64)  # (B, cells)
        support = np.asarray((to_true.T @ counts.T).T)
        predicted = np.asarray((to_pred.T @ counts.T).T)
        tp = np.asarray((to_tp.T @ counts.T).T)
        for name, values in _metrics_from_class_counts(tp, support, predicted).items():
            out[name].append(values)
        for top, bits in hit_bits.items():
            out[f"top{top}_accuracy"].append(counts @ bits / n)
    return {name: np.concatenate(parts) for name, parts in out.items()}


def _metrics_from_class_counts(tp: np.ndarray, support: np.ndarray, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy, macro-F1 (over present classes) and weighted-F1 from `(B, K)` class counts."""
    n = support.sum(axis=1)
    present = support > 0
    n_present = present.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, tp / np.where(present, support, 1), 0.0)
        denominator = support + predicted
        f1 = np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1), 0.0)
        return {
            "accuracy": tp.sum(axis=1) / n,
            "balanced_accuracy": recall.sum(axis=1) / n_present,
            "macro_f1": (f1 * present).sum(axis=1) / n_present,
            "weighted_f1": (f1 * support).sum(axis=1) / n,
        }


# ----------------------------------------------------------------------------------------------------------------
# Confusion matrix


def confusion_counts(table: PredictionTable) -> np.ndarray:
    """`(K, K)` int64 counts, rows = true class, columns = predicted class, over the evaluated rows (one bincount)."""
    k = len(table.class_names)
    frame = table.frame
    y_true = frame["label_idx"].to_numpy(dtype=np.int64)
    y_pred = frame["pred_idx"].to_numpy(dtype=np.int64)
    keep = y_true >= 0
    flat = y_true[keep] * k + y_pred[keep]
    return np.bincount(flat, minlength=k * k).reshape(k, k)


def normalise_confusion(counts: np.ndarray, *, by: Normalise = "none") -> np.ndarray:
    """Counts as float, or divided by each true class's total (`"true"`: rows = recall) or each predicted class's
    total (`"pred"`: columns = precision). Rows or columns with no samples stay 0."""
    counts = np.asarray(counts, dtype=np.float64)
    if by == "none":
        return counts
    if by not in ("true", "pred"):
        raise ValueError(f"normalise by must be 'none', 'true' or 'pred', got {by!r}")
    axis = 1 if by == "true" else 0
    totals = counts.sum(axis=axis, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def order_classes(
    counts: np.ndarray,
    class_names: Sequence[str],
    *,
    order: ClassOrder = "frequency",
    taxa: Mapping[str, str] | None = None,
) -> np.ndarray:
    """A permutation of class indices for drawing the confusion matrix.

    `frequency`: most samples first (ties by name); `name`: alphabetical; `taxonomy`: grouped by `taxa[class]`
    (classes without a taxon last), then by name; `similarity`: leaves of an average-linkage clustering of
    `1 - (R + R.T) / 2`, R the row-normalised confusion, so classes confused with each other sit together.
    """
    k = len(class_names)
    names = np.asarray(class_names, dtype=object)
    if order == "name":
        return np.array(sorted(range(k), key=lambda i: names[i]), dtype=np.int64)
    if order == "frequency":
        support = np.asarray(counts).sum(axis=1)
        return np.array(sorted(range(k), key=lambda i: (-support[i], names[i])), dtype=np.int64)
    if order == "taxonomy":
        if taxa is None:
            raise ValueError("order='taxonomy' needs `taxa` (class -> taxon); the dataset has no taxonomy columns")
        return np.array(
            sorted(range(k), key=lambda i: (names[i] not in taxa, str(taxa.get(names[i], "")), names[i])),
            dtype=np.int64,
        )
    if order == "similarity":
        if k < 3:
            return np.arange(k, dtype=np.int64)
        rates = normalise_confusion(counts, by="true")
        similarity = (rates + rates.T) / 2.0
        distance = 1.0 - similarity
        np.fill_diagonal(distance, 0.0)
        tree = linkage(squareform(np.clip(distance, 0.0, None), checks=False), method="average")
        return leaves_list(tree).astype(np.int64)
    raise ValueError(f"order must be one of frequency, name, taxonomy, similarity; got {order!r}")


def rank_confused_pairs(counts: np.ndarray, class_names: Sequence[str], *, top: int | None = None) -> pd.DataFrame:
    """Off-diagonal cells with at least one sample, most samples first.

    Columns: true, pred, true_idx, pred_idx, count, share_of_true (count / samples of the true class).
    """
    counts = np.asarray(counts)
    off = counts.copy()
    np.fill_diagonal(off, 0)
    true_idx, pred_idx = np.nonzero(off)
    cell = off[true_idx, pred_idx]
    order = np.lexsort((pred_idx, true_idx, -cell))
    if top is not None:
        order = order[:top]
    true_idx, pred_idx, cell = true_idx[order], pred_idx[order], cell[order]
    support = counts.sum(axis=1)
    names = np.asarray(class_names, dtype=object)
    return pd.DataFrame(
        {
            "true": names[true_idx] if len(true_idx) else np.array([], dtype=object),
            "pred": names[pred_idx] if len(pred_idx) else np.array([], dtype=object),
            "true_idx": true_idx.astype(np.int64),
            "pred_idx": pred_idx.astype(np.int64),
            "count": cell.astype(np.int64),
            "share_of_true": cell / np.maximum(support[true_idx], 1),
        }
    )


def cell_samples(table: PredictionTable, true_idx: int, pred_idx: int) -> pd.DataFrame:
    """Rows of the evaluated samples with true class `true_idx` predicted as `pred_idx`, most confident first.

    The result keeps the table's columns plus `row` (position in `table`, for looking up `pred_probs`).
    """
    frame = table.frame
    mask = (frame["label_idx"].to_numpy() == true_idx) & (frame["pred_idx"].to_numpy() == pred_idx)
    rows = frame.loc[mask].assign(row=np.flatnonzero(mask))
    return rows.sort_values("confidence", ascending=False, kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------------------------
# Per-class metrics


def per_class_table(table: PredictionTable, *, counts: np.ndarray | None = None) -> pd.DataFrame:
    """One row per model class (model order): class, precision, recall, f1, support, predicted,
    confused_as / confused_as_count (the class its samples are most often predicted as),
    confused_from / confused_from_count (the class most often predicted as it).

    precision/recall/F1 come from `precision_recall_fscore_support(labels=range(K), zero_division=0)`; classes with
    zero support get 0 and `support == 0` (filter on it). Empty `confused_*` when there is no such error.
    """
    k = len(table.class_names)
    names = np.asarray(table.class_names, dtype=object)
    counts = confusion_counts(table) if counts is None else np.asarray(counts)
    table_eval = evaluated(table)
    if len(table_eval):
        precision, recall, f1, support = precision_recall_fscore_support(
            table_eval.frame["label_idx"].to_numpy(),
            table_eval.frame["pred_idx"].to_numpy(),
            labels=np.arange(k),
            zero_division=0,
        )
    else:
        precision = recall = f1 = np.zeros(k)
        support = np.zeros(k, dtype=np.int64)
    off = counts.copy()
    np.fill_diagonal(off, 0)
    as_idx, from_idx = off.argmax(axis=1), off.argmax(axis=0)
    as_count, from_count = off.max(axis=1), off.max(axis=0)
    return pd.DataFrame(
        {
            "class": names,
            "precision": precision.astype(np.float64),
            "recall": recall.astype(np.float64),
            "f1": f1.astype(np.float64),
            "support": np.asarray(support, dtype=np.int64),
            "predicted": counts.sum(axis=0).astype(np.int64),
            "confused_as": np.where(as_count > 0, names[as_idx], ""),
            "confused_as_count": as_count.astype(np.int64),
            "confused_from": np.where(from_count > 0, names[from_idx], ""),
            "confused_from_count": from_count.astype(np.int64),
        }
    )


def bottom_classes(per_class: pd.DataFrame, *, n: int = 10, min_support: int = 1) -> pd.DataFrame:
    """The `n` classes with the lowest F1 among those with `support >= min_support`, worst first (ties: larger
    support first, then name)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rows = per_class[per_class["support"] >= min_support]
    rows = rows.sort_values(["f1", "support", "class"], ascending=[True, False, True], kind="stable")
    return rows.head(n).reset_index(drop=True)


def confusions_of_class(counts: np.ndarray, class_names: Sequence[str], class_idx: int) -> pd.DataFrame:
    """Errors of one class in both directions: `direction` "predicted as" (its samples predicted as `other`) and
    "mistaken for it" (`other`'s samples predicted as it), with count and the cell's (true_idx, pred_idx)."""
    counts = np.asarray(counts)
    names = np.asarray(class_names, dtype=object)
    rows = []
    for other in np.flatnonzero(counts[class_idx]):
        if other != class_idx:
            rows.append(("predicted as", names[other], int(counts[class_idx, other]), class_idx, int(other)))
    for other in np.flatnonzero(counts[:, class_idx]):
        if other != class_idx:
            rows.append(("mistaken for it", names[other], int(counts[other, class_idx]), int(other), class_idx))
    frame = pd.DataFrame(rows, columns=["direction", "other", "count", "true_idx", "pred_idx"])
    return frame.sort_values(["count", "direction", "other"], ascending=[False, True, True], kind="stable").reset_index(
        drop=True
    )


# ----------------------------------------------------------------------------------------------------------------
# Misclassification browser


def filter_predictions(
    table: PredictionTable,
    *,
    true_classes: Sequence[str] = (),
    pred_classes: Sequence[str] = (),
    confidence_range: tuple[float, float] = (0.0, 1.0),
    specimen_ids: Sequence[str] = (),
    taxa: Mapping[str, str] | None = None,
    taxon_values: Sequence[str] = (),
    errors_only: bool = True,
    sort_by: Literal["confidence", "loss"] = "confidence",
    descending: bool = True,
) -> pd.DataFrame:
    """Rows of `table.frame` (plus `row`, the position in the table) passing every filter, sorted.

    Empty filter sequences mean "any". `errors_only` keeps evaluated rows whose prediction differs from the label.
    `taxa` maps a sample's label to its taxon; `taxon_values` keeps labels whose taxon is listed.
    """
    if sort_by not in ("confidence", "loss"):
        raise ValueError(f"sort_by must be 'confidence' or 'loss', got {sort_by!r}")
    frame = table.frame
    mask = np.ones(len(frame), dtype=bool)
    if errors_only:
        mask &= (frame["label_idx"].to_numpy() >= 0) & (frame["label_idx"].to_numpy() != frame["pred_idx"].to_numpy())
    if true_classes:
        mask &= frame["label"].isin(list(true_classes)).to_numpy()
    if pred_classes:
        mask &= frame["pred"].isin(list(pred_classes)).to_numpy()
    low, high = confidence_range
    confidence = frame["confidence"].to_numpy()
    mask &= (confidence >= low) & (confidence <= high)
    if specimen_ids:
        mask &= frame["specimen_id"].isin(list(specimen_ids)).to_numpy()
    if taxon_values:
        if taxa is None:
            raise ValueError("filtering by taxon needs `taxa` (label -> taxon)")
        allowed = {label for label, taxon in taxa.items() if taxon in set(taxon_values)}
        mask &= frame["label"].isin(allowed).to_numpy()
    rows = frame.loc[mask].assign(row=np.flatnonzero(mask))
    return rows.sort_values(sort_by, ascending=not descending, kind="stable", na_position="last").reset_index(drop=True)


def top_predictions(table: PredictionTable, row: int, *, k: int = 5) -> pd.DataFrame:
    """The `k` most probable classes for table row `row`: class, probability (highest first)."""
    probs = table.pred_probs[row]
    k = min(k, len(probs))
    best = np.argsort(-probs, kind="stable")[:k]
    return pd.DataFrame({"class": np.asarray(table.class_names, dtype=object)[best], "probability": probs[best]})


# ----------------------------------------------------------------------------------------------------------------
# Specimen level


def has_specimens(table: PredictionTable) -> bool:
    """True when some specimen has more than one image (specimen-level metrics then differ from image-level)."""
    ids = table.frame["specimen_id"]
    return bool(len(ids)) and ids.nunique() < len(ids)


def specimen_table(table: PredictionTable) -> PredictionTable:
    """One row per specimen: the mean probability vector over its images, the most common label of its images.

    `sample_id` becomes the specimen id; `split` is the split of its first image (splits keep specimens together);
    `meta["n_label_conflicts"]` counts specimens whose images carry more than one label.
    """
    frame = table.frame
    if len(frame) == 0:
        return PredictionTable(
            frame=frame.copy(),
            pred_probs=table.pred_probs[:0],
            embeddings=np.zeros((0, 0), dtype=np.float32),
            class_names=table.class_names,
            meta={**table.meta, "level": "specimen", "n_label_conflicts": 0},
        )
    codes, specimens = pd.factorize(frame["specimen_id"], sort=False)
    n_specimens = len(specimens)
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    sums = np.add.reduceat(table.pred_probs[order].astype(np.float64), starts, axis=0)
    sizes = np.diff(np.r_[starts, len(order)])
    mean_probs = (sums / sizes[:, None]).astype(np.float32)
    label_counts = frame.groupby([codes, frame["label"].to_numpy()], sort=False).size()
    label_counts = label_counts.reset_index().set_axis(["code", "label", "n"], axis=1)
    conflicts = int((label_counts.groupby("code").size() > 1).sum())
    majority = label_counts.sort_values(["code", "n", "label"], ascending=[True, False, True]).drop_duplicates("code")
    labels = majority.set_index("code")["label"].reindex(np.arange(n_specimens)).tolist()
    first_split = frame["split"].to_numpy()[order[starts]]
    return build_prediction_table(
        [str(s) for s in specimens],
        mean_probs,
        np.zeros((n_specimens, 0), dtype=np.float32),
        labels=labels,
        splits=list(first_split),
        specimen_ids=[str(s) for s in specimens],
        class_names=table.class_names,
        meta={**table.meta, "level": "specimen", "n_label_conflicts": conflicts},
    )


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


def class_taxa(samples: pd.DataFrame, column: str) -> dict[str, str]:
    """label -> its most common value in taxonomy `column` of the dataset's `samples` (for ordering and filters)."""
    if column not in samples.columns:
        raise ValueError(f"no taxonomy column {column!r}; the samples have {list(samples.columns)}")
    rows = samples[["label", column]].astype(str)
    counts = rows.groupby(["label", column], sort=True).size().reset_index(name="n")
    best = counts.sort_values(["label", "n"], ascending=[True, False], kind="stable").drop_duplicates("label")
    return dict(zip(best["label"], best[column], strict=True))
