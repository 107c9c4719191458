"""Tests of core.metrics on tiny hand-made tables whose answers are known, and against scikit-learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from core import metrics as M
from core.predictions import build_prediction_table

CLASSES = ("ant", "bee", "cricket", "dragonfly")


def _table(labels, preds, *, class_names=CLASSES, splits=None, specimens=None, probs=None, confidence=0.7):
    """A table whose argmax is `preds`: the predicted class gets `confidence`, the rest share the remainder."""
    k = len(class_names)
    index = {c: i for i, c in enumerate(class_names)}
    n = len(labels)
    if probs is None:
        probs = np.full((n, k), (1 - confidence) / (k - 1), dtype=np.float32)
        for row, pred in enumerate(preds):
            probs[row, index[pred]] = confidence
    return build_prediction_table(
        [f"s{i}" for i in range(n)],
        probs,
        np.zeros((n, 0)),
        labels=list(labels),
        splits=list(splits or ["val"] * n),
        specimen_ids=list(specimens or [f"s{i}" for i in range(n)]),
        class_names=class_names,
    )


def _random_table(n=400, k=7, seed=0, *, ties=False):
    rng = np.random.default_rng(seed)
    names = tuple(f"c{i}" for i in range(k))
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.2
    if ties:
        logits = np.round(logits)  # many exactly equal scores
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return build_prediction_table(
        [str(i) for i in range(n)], probs, np.zeros((n, 0)), labels=[names[i] for i in y],
        splits=["val"] * n, specimen_ids=[str(i // 3) for i in range(n)], class_names=names,
    )


def test_confusion_counts_by_hand_and_matches_sklearn():
    table = _table(["ant", "ant", "bee", "bee", "bee", "cricket"], ["ant", "bee", "bee", "bee", "ant", "dragonfly"])
    counts = M.confusion_counts(table)
    expected = np.array([[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(counts, expected)
    f = table.frame
    np.testing.assert_array_equal(counts, confusion_matrix(f["label_idx"], f["pred_idx"], labels=range(4)))


def test_normalise_confusion_rows_columns_and_zero_rows():
    counts = np.array([[3, 1, 0], [0, 0, 0], [2, 0, 2]])
    by_true = M.normalise_confusion(counts, by="true")
    np.testing.assert_allclose(by_true, [[0.75, 0.25, 0], [0, 0, 0], [0.5, 0, 0.5]])
    by_pred = M.normalise_confusion(counts, by="pred")
    np.testing.assert_allclose(by_pred, [[0.6, 1, 0], [0, 0, 0], [0.4, 0, 1]])
    with pytest.raises(ValueError, match="'none', 'true' or 'pred'"):
        M.normalise_confusion(counts, by="rows")


def test_headline_metrics_hand_computed():
    # ant: 2 right of 3; bee: 1 of 1; cricket: 0 of 1 (predicted ant); dragonfly: no samples.
    table = _table(["ant", "ant", "ant", "bee", "cricket"], ["ant", "ant", "bee", "bee", "ant"])
    h = M.compute_headline_metrics(table, n_boot=200, seed=1)
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
    h = M.compute_headline_metrics(table, n_boot=0)
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


def test_top_k_hits_tie_rule_matches_sklearn():
    probs = np.array([[0.25, 0.25, 0.25, 0.25]] * 4)
    y = np.array([0, 1, 2, 3])
    # All tied: sklearn ranks the highest index first, so top-2 holds classes 3 and 2.
    np.testing.assert_array_equal(M.top_k_hits(probs, y, k=2), [False, False, True, True])
    assert M.top_k_hits(probs, y, k=2).mean() == top_k_accuracy_score(y, probs, k=2, labels=range(4))


def test_bootstrap_statistics_from_counts_match_sklearn_on_resamples():
    table = _random_table(n=120, k=6, seed=3)
    y, p = table.frame["label_idx"].to_numpy(), table.frame["pred_idx"].to_numpy()
    rng = np.random.default_rng(0)
    for _ in range(5):
        idx = rng.integers(0, len(y), len(y))
        yt, yp = y[idx], p[idx]
        support = np.bincount(yt, minlength=6)[None].astype(float)
        predicted = np.bincount(yp, minlength=6)[None].astype(float)
        tp = np.bincount(yt[yt == yp], minlength=6)[None].astype(float)
        got = M._metrics_from_class_counts(tp, support, predicted)
        present = np.unique(yt)
        assert got["accuracy"][0] == pytest.approx(accuracy_score(yt, yp))
        assert got["balanced_accuracy"][0] == pytest.approx(M._balanced_accuracy(yt, yp))
        assert got["macro_f1"][0] == pytest.approx(f1_score(yt, yp, labels=present, average="macro"))
        assert got["weighted_f1"][0] == pytest.approx(f1_score(yt, yp, average="weighted"))


def test_bootstrap_is_seeded_and_sensible():
    table = _random_table(n=500, seed=5)
    a = M.compute_headline_metrics(table, n_boot=300, seed=7)
    b = M.compute_headline_metrics(table, n_boot=300, seed=7)
    c = M.compute_headline_metrics(table, n_boot=300, seed=8)
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
    h = M.compute_headline_metrics(table, n_boot=50)
    assert h.n_evaluated == 2 and h.n_excluded == 3
    assert h.excluded_labels == ("moth", "wasp")
    assert h["accuracy"].value == pytest.approx(0.5)
    assert M.confusion_counts(table).sum() == 2
    assert M.excluded_labels(table).to_dict() == {"wasp": 2, "moth": 1}


def test_empty_table_gives_empty_results():
    table = _table(["ant", "bee"], ["ant", "ant"]).for_split("test")  # a split with no samples
    assert len(table) == 0
    h = M.compute_headline_metrics(table)
    assert h.n_evaluated == 0 and all(e.value is None for e in h.estimates)
    per_class = M.per_class_table(table)
    assert per_class["support"].sum() == 0 and len(per_class) == 4
    assert M.rank_confused_pairs(M.confusion_counts(table), CLASSES).empty
    assert len(M.specimen_table(table)) == 0
    dist = M.class_distribution(table)
    assert dist["total"].sum() == 0 and list(dist.index) == list(CLASSES)
    assert M.cell_samples(table, 0, 1).empty
    assert M.filter_predictions(table).empty


def test_per_class_table_matches_sklearn_with_zero_support_class():
    labels = ["ant", "ant", "ant", "bee", "bee", "cricket"]
    preds = ["ant", "bee", "cricket", "bee", "ant", "ant"]
    table = _table(labels, preds)
    per_class = M.per_class_table(table)
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
    bottom = M.bottom_classes(per_class, n=2)
    assert bottom["class"].tolist() == ["c", "b"]  # d has no samples; c and b tie, larger support first
    with pytest.raises(ValueError, match="n must be >= 1"):
        M.bottom_classes(per_class, n=0)


def test_rank_confused_pairs_and_cell_samples():
    table = _table(
        ["ant", "ant", "ant", "bee", "bee", "cricket", "ant"],
        ["bee", "bee", "ant", "ant", "bee", "ant", "cricket"],
    )
    counts = M.confusion_counts(table)
    pairs = M.rank_confused_pairs(counts, CLASSES)
    assert list(zip(pairs["true"], pairs["pred"], pairs["count"], strict=True)) == [
        ("ant", "bee", 2), ("ant", "cricket", 1), ("bee", "ant", 1), ("cricket", "ant", 1)
    ]
    assert pairs.loc[0, "share_of_true"] == pytest.approx(2 / 4)
    assert len(M.rank_confused_pairs(counts, CLASSES, top=2)) == 2
    cell = M.cell_samples(table, 0, 1)
    assert sorted(cell["sample_id"]) == ["s0", "s1"]
    assert (cell["label"] == "ant").all() and (cell["pred"] == "bee").all()
    np.testing.assert_array_equal(table.frame.loc[cell["row"], "sample_id"], cell["sample_id"])


def test_confusions_of_class_both_directions():
    counts = np.array([[5, 2, 1], [3, 4, 0], [0, 0, 2]])
    frame = M.confusions_of_class(counts, ["a", "b", "c"], 0)
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
    assert M.order_classes(counts, names, order="name").tolist() == [1, 3, 2, 0]
    assert M.order_classes(counts, names, order="frequency").tolist() == [1, 2, 0, 3]
    taxa = {"delta": "Insecta", "alpha": "Arachnida", "bravo": "Insecta"}
    assert M.order_classes(counts, names, order="taxonomy", taxa=taxa).tolist() == [1, 3, 0, 2]
    sim = M.order_classes(counts, names, order="similarity").tolist()
    assert sorted(sim) == [0, 1, 2, 3]
    assert abs(sim.index(0) - sim.index(3)) == 1 and abs(sim.index(1) - sim.index(2)) == 1
    with pytest.raises(ValueError, match="taxonomy"):
        M.order_classes(counts, names, order="taxonomy")
    with pytest.raises(ValueError, match="order must be"):
        M.order_classes(counts, names, order="size")


def test_specimen_table_means_probabilities():
    probs = np.array([[0.6, 0.4, 0, 0], [0.1, 0.9, 0, 0], [0, 0, 1.0, 0], [0.7, 0.3, 0, 0]], dtype=np.float32)
    table = _table(["ant", "ant", "cricket", "bee"], None, probs=probs, specimens=["x", "x", "y", "z"])
    spec = M.specimen_table(table)
    assert spec.frame["sample_id"].tolist() == ["x", "y", "z"]
    np.testing.assert_allclose(spec.pred_probs[0], [0.35, 0.65, 0, 0])
    assert spec.frame["pred"].tolist() == ["bee", "cricket", "ant"]
    assert spec.frame["label"].tolist() == ["ant", "cricket", "bee"]
    assert M.has_specimens(table) and not M.has_specimens(spec)
    assert spec.meta["n_label_conflicts"] == 0
    h = M.compute_headline_metrics(spec, n_boot=0)
    assert h["accuracy"].value == pytest.approx(1 / 3)


def test_specimen_table_majority_label_and_conflicts():
    probs = np.full((3, 4), 0.25, dtype=np.float32)
    table = _table(["bee", "ant", "bee"], None, probs=probs, specimens=["x", "x", "x"])
    spec = M.specimen_table(table)
    assert spec.frame["label"].tolist() == ["bee"] and spec.meta["n_label_conflicts"] == 1


def test_class_distribution_and_imbalance():
    table = _table(
        ["ant"] * 6 + ["bee"] * 2 + ["wasp"],
        ["ant"] * 9,
        splits=["train"] * 4 + ["val"] * 2 + ["train", "val", "test"],
    )
    dist = M.class_distribution(table)
    assert list(dist.columns) == ["train", "val", "test", "total"]
    assert list(dist.index) == ["ant", "bee", "cricket", "dragonfly", "wasp"]
    assert dist.loc["ant"].tolist() == [4, 2, 0, 6]
    assert dist.loc["wasp", "test"] == 1 and dist.loc["cricket", "total"] == 0
    ratios = M.imbalance_ratios(dist)
    assert ratios["train"] == 4.0 and ratios["val"] == 2.0 and ratios["total"] == 6.0


def test_filter_predictions_and_top_predictions():
    table = _table(
        ["ant", "ant", "bee", "bee", "cricket"], ["bee", "ant", "ant", "cricket", "ant"],
        specimens=["x", "x", "y", "z", "z"],
    )
    errors = M.filter_predictions(table)
    assert sorted(errors["sample_id"]) == ["s0", "s2", "s3", "s4"]
    only = M.filter_predictions(table, true_classes=["bee"], pred_classes=["cricket"])
    assert only["sample_id"].tolist() == ["s3"]
    assert M.filter_predictions(table, specimen_ids=["z"])["sample_id"].tolist() == ["s3", "s4"]
    taxa = {"ant": "Formicidae", "bee": "Apidae", "cricket": "Gryllidae"}
    assert M.filter_predictions(table, taxa=taxa, taxon_values=["Apidae"])["label"].unique().tolist() == ["bee"]
    assert M.filter_predictions(table, confidence_range=(0.8, 1.0)).empty
    everything = M.filter_predictions(table, errors_only=False, sort_by="loss")
    assert len(everything) == 5 and everything["loss"].is_monotonic_decreasing
    top = M.top_predictions(table, 0, k=2)
    assert top["class"].iloc[0] == "bee" and top["probability"].iloc[0] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="sort_by"):
        M.filter_predictions(table, sort_by="name")


def test_compare_class_lists_finds_extra_missing_renamed():
    mismatch = M.compare_class_lists(
        ["Neutrophil", "eosinophil", "Monocyte", "Platelet"], ["Neutrophil", "Eosinophil", "Monocytes", "Basophil"]
    )
    assert mismatch.extra == ("Monocyte", "Platelet", "eosinophil")
    assert mismatch.missing == ("Basophil", "Eosinophil", "Monocytes")
    assert set(mismatch.renamed) == {("Eosinophil", "eosinophil"), ("Monocytes", "Monocyte")}
    assert mismatch.any
    assert not M.compare_class_lists(["a", "b"], ["b", "a"]).any


def test_class_taxa_majority_value():
    samples = pd.DataFrame({"label": ["a", "a", "a", "b"], "order": ["X", "Y", "X", "Z"]})
    assert M.class_taxa(samples, "order") == {"a": "X", "b": "Z"}
    with pytest.raises(ValueError, match="no taxonomy column 'family'"):
        M.class_taxa(samples, "family")
