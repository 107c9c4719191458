"""core.summary: the landing page's class table names each class's taxon as the most common value, computed with one
grouped count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from core.summary import most_common_per_label


def test_most_common_per_label_is_each_labels_mode_with_mode_tie_breaking():
    rng = np.random.default_rng(3)
    samples = pd.DataFrame({"label": rng.choice(list("abcdefgh"), 4000).astype(str),
                            "order": rng.choice(["x", "y", "z", ""], 4000).astype(str)})
    samples.loc[samples["label"] == "g", "order"] = "q"
    tie = pd.DataFrame({"label": ["t"] * 4, "order": ["y", "x", "y", "x"]})  # a tie: mode() takes "x"
    samples = pd.concat([samples, tie], ignore_index=True)
    got = most_common_per_label(samples, "order")
    expected = samples.groupby("label")["order"].agg(lambda s: s.mode().iloc[0])
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False, check_index_type=False)
    assert got["g"] == "q" and got["t"] == "x"


def test_class_count_table_matches_a_crosstab_with_taxa_missing_values_and_empty_cells():
    from core.dataset import Dataset
    from core.summary import class_count_table

    rng = np.random.default_rng(5)
    n = 3000
    samples = pd.DataFrame({"label": rng.choice(["b", "a", "c", "d"], n).astype(str),
                            "split": rng.choice(["val", "train", "test"], n).astype(str),
                            "phylum": rng.choice(["p2", "p1", None], n)})
    samples.loc[(samples["label"] == "d") & (samples["split"] == "test"), "split"] = "val"  # an empty cell
    samples.loc[samples["label"] == "c", "phylum"] = None  # a class whose taxon is missing everywhere
    dataset = Dataset(root=Path("/"), samples=samples, class_names=("a", "b", "c", "d"), taxonomy_columns=("phylum",))
    got = class_count_table(dataset)
    expected = pd.crosstab(samples["label"], samples["split"]).reindex(index=["a", "b", "c", "d"], fill_value=0)
    expected["total"] = expected.sum(axis=1)
    pd.testing.assert_frame_equal(got[["test", "train", "val", "total"]], expected, check_names=False)
    assert list(got.columns) == ["phylum", "test", "train", "val", "total"] and got.index.name == "class"
    assert got.loc["d", "test"] == 0 and pd.isna(got.loc["c", "phylum"])
    for label in "abd":
        assert got.loc[label, "phylum"] == samples.loc[samples["label"] == label, "phylum"].dropna().mode().iloc[0]
