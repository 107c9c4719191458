"""Tests of core.confusion: counts, normalisation, class order, confused pairs, cell samples (against sklearn)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from core.confusion import (
    cell_samples,
    confusion_counts,
    confusions_of_class,
    normalise_confusion,
    order_classes,
    rank_confused_pairs,
)
from tests.core.tables import CLASSES
from tests.core.tables import hand_table as _table


def test_confusion_counts_by_hand_and_matches_sklearn():
    table = _table(["ant", "ant", "bee", "bee", "bee", "cricket"], ["ant", "bee", "bee", "bee", "ant", "dragonfly"])
    counts = confusion_counts(table)
    expected = np.array([[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(counts, expected)
    f = table.frame
    np.testing.assert_array_equal(counts, confusion_matrix(f["label_idx"], f["pred_idx"], labels=range(4)))


def test_normalise_confusion_rows_columns_and_zero_rows():
    counts = np.array([[3, 1, 0], [0, 0, 0], [2, 0, 2]])
    by_true = normalise_confusion(counts, by="true")
    np.testing.assert_allclose(by_true, [[0.75, 0.25, 0], [0, 0, 0], [0.5, 0, 0.5]])
    by_pred = normalise_confusion(counts, by="pred")
    np.testing.assert_allclose(by_pred, [[0.6, 1, 0], [0, 0, 0], [0.4, 0, 1]])
    with pytest.raises(ValueError, match="'none', 'true' or 'pred'"):
        normalise_confusion(counts, by="rows")


def test_rank_confused_pairs_and_cell_samples():
    table = _table(
        ["ant", "ant", "ant", "bee", "bee", "cricket", "ant"],
        ["bee", "bee", "ant", "ant", "bee", "ant", "cricket"],
    )
    counts = confusion_counts(table)
    pairs = rank_confused_pairs(counts, CLASSES)
    assert list(zip(pairs["true"], pairs["pred"], pairs["count"], strict=True)) == [
        ("ant", "bee", 2), ("ant", "cricket", 1), ("bee", "ant", 1), ("cricket", "ant", 1)
    ]
    assert pairs.loc[0, "share_of_true"] == pytest.approx(2 / 4)
    assert len(rank_confused_pairs(counts, CLASSES, top=2)) == 2
    cell = cell_samples(table, 0, 1)
    assert sorted(cell["sample_id"]) == ["s0", "s1"]
    assert (cell["label"] == "ant").all() and (cell["pred"] == "bee").all()
    np.testing.assert_array_equal(table.frame.loc[cell["row"], "sample_id"], cell["sample_id"])


def test_confusions_of_class_both_directions():
    counts = np.array([[5, 2, 1], [3, 4, 0], [0, 0, 2]])
    frame = confusions_of_class(counts, ["a", "b", "c"], 0)
    rows = set(zip(frame["direction"], frame["other"], frame["count"], frame["true_idx"], frame["pred_idx"],
                   strict=True))
    assert rows == {("predicted as", "b", 2, 0, 1), ("predicted as", "c", 1, 0, 2), ("mistaken for it", "b", 3, 1, 0)}
    assert frame.iloc[0]["count"] == 3


def test_order_classes_all_modes():
    names = ["delta", "alpha", "charlie", "bravo"]
    counts = np.array([
        [10, 0, 0, 5],  # delta confused with bravo
        [0, 30, 4, 0],  # alpha confused with charlie
        [0, 6, 20, 0],
        [4, 0, 0, 1],
    ])
    assert order_classes(counts, names, order="name").tolist() == [1, 3, 2, 0]
    assert order_classes(counts, names, order="frequency").tolist() == [1, 2, 0, 3]
    taxa = {"delta": "Insecta", "alpha": "Arachnida", "bravo": "Insecta"}
    assert order_classes(counts, names, order="taxonomy", taxa=taxa).tolist() == [1, 3, 0, 2]
    sim = order_classes(counts, names, order="similarity").tolist()
    assert sorted(sim) == [0, 1, 2, 3]
    assert abs(sim.index(0) - sim.index(3)) == 1 and abs(sim.index(1) - sim.index(2)) == 1
    with pytest.raises(ValueError, match="taxonomy"):
        order_classes(counts, names, order="taxonomy")
    with pytest.raises(ValueError, match="order must be"):
        order_classes(counts, names, order="size")


def test_cell_index_gives_every_cells_rows_as_the_mask_does():
    import pandas as pd

    from core.confusion import cell_index, cell_samples
    from tests.core.tables import random_table

    table = random_table(n=300, k=5, seed=4, ties=True)  # tied confidences: the stable order must match too
    labels = table.frame["label_idx"].to_numpy().copy()
    labels[::11] = -1  # not evaluated: in no cell
    table.frame["label_idx"] = labels
    index = cell_index(table)
    assert len(index.order) == int((labels >= 0).sum())
    frame = table.frame
    for t in range(5):
        for p in range(5):
            mask = (frame["label_idx"] == t) & (frame["pred_idx"] == p)
            assert index.rows(t, p).tolist() == np.flatnonzero(mask).tolist()
            pd.testing.assert_frame_equal(cell_samples(table, t, p, index=index), cell_samples(table, t, p))
            assert cell_samples(table, t, p)["row"].tolist() == \
                frame[mask].sort_values("confidence", ascending=False, kind="stable").index.tolist()
