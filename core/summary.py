"""Workspace summaries for the landing page and the CLI: class counts per split, checkpoint descriptions."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from core.dataset import Dataset
from core.workspace import Workspace


def class_count_table(dataset: Dataset) -> pd.DataFrame:
    """Images per class (rows, in class order) and split (columns), with a `total` column; taxonomy columns first."""
    counts = pd.crosstab(dataset.samples["label"], dataset.samples["split"])
    counts = counts.reindex(index=list(dataset.class_names), fill_value=0)
    counts["total"] = counts.sum(axis=1)
    counts.columns.name = None
    counts.index.name = "class"
    if dataset.taxonomy_columns:
        taxa = pd.DataFrame({column: most_common_per_label(dataset.samples, column)
                             for column in dataset.taxonomy_columns})
        counts = taxa.reindex(counts.index).join(counts)
    return counts


def most_common_per_label(samples: pd.DataFrame, column: str) -> pd.Series:
    """Each label's most common value of `column` (ties: the smallest value, as `Series.mode` orders them), indexed
    by label; missing values are not counted. One grouped count, not one `mode` per class (300 classes: 50x)."""
    pairs = samples[["label", column]].dropna().value_counts(sort=False).reset_index(name="n")
    pairs = pairs.sort_values(["label", "n", column], ascending=[True, False, True], kind="stable")
    return pairs.drop_duplicates("label").set_index("label")[column].rename(column)


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
