"""The confusion matrix of a predictions table: counts, normalisation, class order, confused pairs, cell samples."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from core.predictions import PredictionTable

logger = logging.getLogger(__name__)

Normalise = Literal["none", "true", "pred"]
ClassOrder = Literal["frequency", "name", "taxonomy", "similarity"]


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
        # imported here: scipy.cluster (with scipy.spatial) costs about a second of a server's first page otherwise
        from scipy.cluster.hierarchy import leaves_list, linkage
        from scipy.spatial.distance import squareform

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


@dataclass(frozen=True)
class CellIndex:
    """The evaluated rows of a table grouped by confusion cell, so a cell's rows are a slice, not a pass over every
    row (one per click otherwise: a million rows compared twice)."""

    order: np.ndarray  # (M,) row positions sorted by cell (true * K + pred), each cell's rows in position order
    starts: np.ndarray  # (K * K + 1,) where each cell's rows start in `order`
    n_classes: int

    def rows(self, true_idx: int, pred_idx: int) -> np.ndarray:
        """Positions (ascending) of the rows with true class `true_idx` predicted as `pred_idx`."""
        cell = int(true_idx) * self.n_classes + int(pred_idx)
        return self.order[self.starts[cell]:self.starts[cell + 1]]


def cell_index(table: PredictionTable) -> CellIndex:
    """The `CellIndex` of `table` (one stable sort of the evaluated rows by cell)."""
    k = len(table.class_names)
    y_true = table.frame["label_idx"].to_numpy(dtype=np.int64)
    y_pred = table.frame["pred_idx"].to_numpy(dtype=np.int64)
    kept = np.flatnonzero(y_true >= 0)
    flat = y_true[kept] * k + y_pred[kept]
    order = kept[np.argsort(flat, kind="stable")]
    starts = np.concatenate([[0], np.cumsum(np.bincount(flat, minlength=k * k))]).astype(np.int64)
    return CellIndex(order, starts, k)


def cell_samples(table: PredictionTable, true_idx: int, pred_idx: int, *, index: CellIndex | None = None
                 ) -> pd.DataFrame:
    """Rows of the evaluated samples with true class `true_idx` predicted as `pred_idx`, most confident first.

    The result keeps the table's columns plus `row` (position in `table`, for looking up `pred_probs`). `index`:
    the table's `cell_index`, to slice the cell's rows instead of comparing every row.
    """
    frame = table.frame
    if index is None:
        positions = np.flatnonzero((frame["label_idx"].to_numpy() == true_idx)
                                   & (frame["pred_idx"].to_numpy() == pred_idx))
    else:
        positions = index.rows(true_idx, pred_idx)
    rows = frame.iloc[positions].assign(row=positions)
    return rows.sort_values("confidence", ascending=False, kind="stable").reset_index(drop=True)


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


def top_confused_classes(counts: np.ndarray, *, n: int) -> np.ndarray:
    """The `n` classes most involved in errors (off-diagonal samples as the true plus as the predicted class; ties by
    index), as sorted class indices: the default submatrix of a confusion matrix too large to read whole.

    `counts`: `(K, K)` int array, rows = true class. All K when `n >= K`.
    """
    counts = np.asarray(counts)
    k = counts.shape[0]
    if n >= k:
        return np.arange(k)
    errors = counts.sum(axis=0) + counts.sum(axis=1) - 2 * np.diag(counts)
    return np.sort(np.argsort(-errors, kind="stable")[:n])
