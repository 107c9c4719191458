"""Workspace summaries for the landing page and the CLI: class counts per split, checkpoint descriptions."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from core.dataset import Dataset
from core.workspace import Workspace


def class_count_table(dataset: Dataset) -> pd.DataFrame:
    """Images per class (rows, in class order) and split (columns, sorted), with a `total` column; taxonomy columns
    first. Counted over integer codes (`np.bincount`): a million images in about 0.2 s, where a crosstab took 1 s."""
    samples = dataset.samples
    classes = list(dataset.class_names)
    label_codes, labels = _sorted_codes(samples["label"])
    in_order = _recode(label_codes, labels, classes)
    split_codes, splits = _sorted_codes(samples["split"])
    known = (in_order >= 0) & (split_codes >= 0)
    cells = np.bincount(in_order[known] * len(splits) + split_codes[known],
                        minlength=len(classes) * len(splits)).reshape(len(classes), len(splits))
    counts = pd.DataFrame(cells.astype(np.int64), index=pd.Index(classes, name="class"), columns=list(splits))
    counts["total"] = counts.sum(axis=1)
    if dataset.taxonomy_columns:
        taxa = pd.DataFrame({column: _most_common(label_codes, labels, samples[column])
                             for column in dataset.taxonomy_columns})
        counts = taxa.reindex(counts.index).join(counts)
    return counts


def most_common_per_label(samples: pd.DataFrame, column: str) -> pd.Series:
    """Each label's most common value of `column` (ties: the smallest value, as `Series.mode` orders them), indexed
    by label (sorted); missing values are not counted. One count over integer codes, not one `mode` per class."""
    return _most_common(*_sorted_codes(samples["label"]), samples[column])


def _most_common(label_codes: np.ndarray, labels: np.ndarray, column: pd.Series) -> pd.Series:
    value_codes, values = _sorted_codes(column)
    known = (label_codes >= 0) & (value_codes >= 0)
    pairs = np.bincount(label_codes[known] * len(values) + value_codes[known],
                        minlength=len(labels) * len(values)).reshape(len(labels), len(values))
    seen = pairs.sum(axis=1) > 0  # a label whose values are all missing has no mode
    best = pairs.argmax(axis=1)  # the first maximum: the smallest value among the tied
    return pd.Series(np.asarray(values, dtype=object)[best[seen]], index=pd.Index(labels[seen], name="label"),
                     name=column.name)


def _sorted_codes(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(codes (N,) int64, -1 for a missing value; the distinct values, sorted) of `values`: factorized in order of
    appearance, then ranked (a sorted factorize sorts a million strings; this sorts only the distinct ones)."""
    codes, uniques = pd.factorize(values)
    uniques = np.asarray(uniques, dtype=object)
    order = np.argsort(uniques, kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    codes = np.asarray(codes, np.int64)
    return np.where(codes >= 0, rank[np.maximum(codes, 0)], -1) if len(order) else codes, uniques[order]


def _recode(codes: np.ndarray, values: np.ndarray, order: list[str]) -> np.ndarray:
    """`codes` of `values` as positions in `order`; -1 for a value not in it (or missing)."""
    if not len(values):
        return codes
    position = pd.Index(order).get_indexer(values)
    return np.where(codes >= 0, position[np.maximum(codes, 0)], -1)


def checkpoint_rows(workspace: Workspace, *, cached: Callable[[str], bool] | None = None) -> list[dict]:
    """One row per listed checkpoint: name, file, size, whether it exists, and (optionally) predictions cached."""
    rows = []
    for spec in workspace.checkpoints:
        exists = spec.path.is_file()
        row = {
            "name": spec.name,
            "file": spec.path.name,
            "size (MB)": round(spec.path.stat().st_size / 1e6, 1) if exists else None,
            "arch": spec.arch or "(in file)",
            "status": "ok" if exists else "file missing",
        }
        if cached is not None:
            row["predictions"] = "cached" if exists and cached(spec.name) else "not computed"
        rows.append(row)
    return rows
