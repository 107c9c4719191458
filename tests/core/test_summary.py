"""core.summary: the landing page's class table names each class's taxon as the most common value, computed with one
grouped count."""

from __future__ import annotations

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
