"""Tests of core.metrics on tiny hand-made tables whose answers are known, and against scikit-learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from core.confusion import cell_samples, confusion_counts, rank_confused_pairs
from core.metrics import (
    bottom_classes,
    class_distribution,
    compare_class_lists,
    compute_headline_metrics,
    excluded_labels,
    imbalance_ratios,
    per_class_table,
)
from core.queries import filter_predictions
from core.scores import BootstrapConfig
from core.specimens import specimen_table
from tests.core.tables import CLASSES
from tests.core.tables import hand_table as _table
from tests.core.tables import random_table as _random_table


def test_headline_metrics_hand_computed():
    # ant: 2 right of 3; bee: 1 of 1; cricket: 0 of 1 (predicted ant); dragonfly: no samples.
    table = _table(["ant", "ant", "ant", "bee", "cricket"], ["ant", "ant", "bee", "bee", "ant"])
    h = compute_headline_metrics(table, n_boot=200, seed=1)
    assert h["accuracy"].value == pytest.approx(3 / 5)
    assert h["balanced_accuracy"].value == pytest.approx((2 / 3 + 1 + 0) / 3)  # dragonfly (no support) not averaged
    f1_ant = 2 * 2 / (3 + 3)  # tp=2, support 3, predicted 3
    f1_bee = 2 * 1 / (1 + 2)
    assert h["macro_f1"].value == pytest.approx((f1_ant + f1_bee + 0) / 3)
    assert h["weighted_f1"].value == pytest.approx((3 * f1_ant + 1 * f1_bee) / 5)
    assert h.n_evaluated == 5 and h.n_excluded == 0 and h.n_classes_present == 3
    # Top-3 of 4 classes: every non-predicted class ties at (1-0.7)/3; sklearn's tie rule puts higher indices first.
    y = table.frame["label_idx"].to_numpy()
    assert h["top3_accuracy"].value == pytest.approx(top_k_accuracy_score(y, table.pred_probs, k=3, labels=range(4)))
    assert h["top5_accuracy"].value is None and "4 classes" in h["top5_accuracy"].note
    for name in ("accuracy", "macro_f1"):
        est = h[name]
        assert est.low <= est.value <= est.high


@pytest.mark.parametrize("ties", [False, True])
def test_headline_metrics_match_sklearn_on_random_table(ties):
    table = _random_table(ties=ties)
    h = compute_headline_metrics(table, n_boot=0)
    y, p = table.frame["label_idx"].to_numpy(), table.frame["pred_idx"].to_numpy()
    present = np.unique(y)
    assert h["accuracy"].value == pytest.approx(accuracy_score(y, p))
    assert h["balanced_accuracy"].value == pytest.approx(balanced_accuracy_score(y, p))
    assert h["macro_f1"].value == pytest.approx(f1_score(y, p, labels=present, average="macro"))
    assert h["weighted_f1"].value == pytest.approx(f1_score(y, p, average="weighted"))
    for k in (3, 5):
        expected = top_k_accuracy_score(y, table.pred_probs, k=k, labels=range(7))
        assert h[f"top{k}_accuracy"].value == pytest.approx(expected)
    assert h.n_boot == 0 and h["accuracy"].low is None


def test_bootstrap_is_seeded_and_sensible():
    table = _random_table(n=500, seed=5)
    a = compute_headline_metrics(table, n_boot=300, seed=7)
    b = compute_headline_metrics(table, n_boot=300, seed=7)
    c = compute_headline_metrics(table, n_boot=300, seed=8)
    assert a.as_frame().equals(b.as_frame())
    assert a["accuracy"].low != c["accuracy"].low
    acc = a["accuracy"]
    # Binomial standard error of accuracy: the 95% interval should be about +-1.96 * se wide.
    se = np.sqrt(acc.value * (1 - acc.value) / 500)
    assert (acc.high - acc.low) == pytest.approx(2 * 1.96 * se, rel=0.25)
    for e in a.estimates:
        assert e.low < e.value < e.high, e


def test_labels_outside_model_classes_are_excluded_and_counted():
    table = _table(["ant", "wasp", "bee", "wasp", "moth"], ["ant", "ant", "ant", "bee", "bee"])
    assert table.frame["label_idx"].tolist() == [0, -1, 1, -1, -1]
    h = compute_headline_metrics(table, n_boot=50)
    assert h.n_evaluated == 2 and h.n_excluded == 3
    assert h.excluded_labels == ("moth", "wasp")
    assert h["accuracy"].value == pytest.approx(0.5)
    assert confusion_counts(table).sum() == 2
    assert excluded_labels(table).to_dict() == {"wasp": 2, "moth": 1}


def test_empty_table_gives_empty_results():
    table = _table(["ant", "bee"], ["ant", "ant"]).for_split("test")  # a split with no samples
    assert len(table) == 0
    h = compute_headline_metrics(table)
    assert h.n_evaluated == 0 and all(e.value is None for e in h.estimates)
    per_class = per_class_table(table)
    assert per_class["support"].sum() == 0 and len(per_class) == 4
    assert rank_confused_pairs(confusion_counts(table), CLASSES).empty
    assert len(specimen_table(table)) == 0
    dist = class_distribution(table)
    assert dist["total"].sum() == 0 and list(dist.index) == list(CLASSES)
    assert cell_samples(table, 0, 1).empty
    assert filter_predictions(table).empty


def test_per_class_table_matches_sklearn_with_zero_support_class():
    labels = ["ant", "ant", "ant", "bee", "bee", "cricket"]
    preds = ["ant", "bee", "cricket", "bee", "ant", "ant"]
    table = _table(labels, preds)
    per_class = per_class_table(table)
    f = table.frame
    p, r, f1, s = precision_recall_fscore_support(f["label_idx"], f["pred_idx"], labels=range(4), zero_division=0)
    np.testing.assert_allclose(per_class["precision"], p)
    np.testing.assert_allclose(per_class["recall"], r)
    np.testing.assert_allclose(per_class["f1"], f1)
    np.testing.assert_array_equal(per_class["support"], s)
    row = per_class.set_index("class")
    assert row.loc["dragonfly", "support"] == 0 and row.loc["dragonfly", "f1"] == 0
    assert row.loc["dragonfly", "confused_as"] == "" and row.loc["dragonfly", "confused_from"] == ""
    # ant's samples went to bee once and cricket once: ties break to the first class index (bee).
    assert row.loc["ant", "confused_as"] == "bee" and row.loc["ant", "confused_as_count"] == 1
    # ant was predicted for one bee and one cricket: most confused *from* -> bee (first index).
    assert row.loc["ant", "confused_from"] == "bee"
    assert row.loc["cricket", "confused_as"] == "ant"
    assert row.loc["ant", "predicted"] == 3


def test_bottom_classes_orders_by_f1_and_skips_zero_support():
    per_class = pd.DataFrame(
        {"class": ["a", "b", "c", "d"], "f1": [0.9, 0.1, 0.1, 0.0], "support": [10, 5, 20, 0],
         "precision": 0.5, "recall": 0.5}
    )
    bottom = bottom_classes(per_class, n=2)
    assert bottom["class"].tolist() == ["c", "b"]  # d has no samples; c and b tie, larger support first
    with pytest.raises(ValueError, match="n must be >= 1"):
        bottom_classes(per_class, n=0)


def test_class_distribution_and_imbalance():
    table = _table(
        ["ant"] * 6 + ["bee"] * 2 + ["wasp"],
        ["ant"] * 9,
        splits=["train"] * 4 + ["val"] * 2 + ["train", "val", "test"],
    )
    dist = class_distribution(table)
    assert list(dist.columns) == ["train", "val", "test", "total"]
    assert list(dist.index) == ["ant", "bee", "cricket", "dragonfly", "wasp"]
    assert dist.loc["ant"].tolist() == [4, 2, 0, 6]
    assert dist.loc["wasp", "test"] == 1 and dist.loc["cricket", "total"] == 0
    ratios = imbalance_ratios(dist)
    assert ratios["train"] == 4.0 and ratios["val"] == 2.0 and ratios["total"] == 6.0


def test_compare_class_lists_finds_extra_missing_renamed():
    mismatch = compare_class_lists(
        ["Neutrophil", "eosinophil", "Monocyte", "Platelet"], ["Neutrophil", "Eosinophil", "Monocytes", "Basophil"]
    )
    assert mismatch.extra == ("Monocyte", "Platelet", "eosinophil")
    assert mismatch.missing == ("Basophil", "Eosinophil", "Monocytes")
    assert set(mismatch.renamed) == {("Eosinophil", "eosinophil"), ("Monocytes", "Monocyte")}
    assert mismatch.any
    assert not compare_class_lists(["a", "b"], ["b", "a"]).any


def test_demo_val_intervals_hold_their_point_estimates_near_the_middle(demo_workspace_readonly):
    from core.workspace import load_workspace
    from models.inference import cached_predictions

    workspace = load_workspace(demo_workspace_readonly)
    name = workspace.checkpoints[0].name
    table = cached_predictions(workspace, name, dataset=workspace.load_dataset()).for_split("val")
    h = compute_headline_metrics(table)
    assert h.unit == "specimen" and h.n_units < h.n_evaluated  # 2-5 images per specimen: specimens are resampled
    assert "specimen resamples, stratified by class" in h.caption
    for e in h.estimates:
        if e.value is None:
            continue
        assert e.low < e.value <= e.high, e
        if e.value >= 0.95:
            continue  # near the ceiling a correct interval is skewed inwards (top-5 at 0.98 sits at 0.81 of its width)
        position = (e.value - e.low) / (e.high - e.low)
        # The image bootstrap put balanced accuracy at 0.15. Above 0.8 is allowed up to 0.9: the Jeffreys prior leans
        # towards 1/2, so a rate near 1 sits in the upper part of its interval (the demo's 0.94 accuracy at 0.78).
        assert 0.2 <= position <= 0.9, (e, position)


def test_per_class_intervals_and_ranking_by_upper_bound():
    # "bee" is never right on 3 images, "ant" never right on 60: both F1 0, only ant is surely weak.
    labels = ["ant"] * 60 + ["bee"] * 3 + ["cricket"] * 60
    preds = ["cricket"] * 63 + ["cricket"] * 45 + ["ant"] * 15
    table = _table(labels, preds)
    per_class = per_class_table(table, intervals=BootstrapConfig(n_boot=300))
    row = per_class.set_index("class")
    assert row.loc["ant", "f1"] == row.loc["bee", "f1"] == 0
    assert row.loc["ant", "f1_high"] < 0.1 < 0.5 < row.loc["bee", "f1_high"]
    assert row.loc["cricket", "f1_low"] < row.loc["cricket", "f1"] < row.loc["cricket", "f1_high"]
    assert np.isnan(row.loc["dragonfly", "f1_low"])  # no samples, no interval
    assert bottom_classes(per_class, n=2)["class"].tolist() == ["ant", "bee"]  # ties at 0: larger support first
    assert bottom_classes(per_class, n=2, rank_by="f1_high")["class"].tolist() == ["ant", "cricket"]
    with pytest.raises(ValueError, match="interval columns"):
        bottom_classes(per_class_table(table), rank_by="f1_high")
