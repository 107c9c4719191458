"""Checkpoint comparison: point deltas equal sklearn's, paired intervals, per-class deltas, flips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from core.compare import compare_predictions, per_class_delta
from core.predictions import build_prediction_table

CLASSES = ("ant", "bee", "fly")


def _table(labels, preds, *, classes=CLASSES, ids=None, specimens=None, splits=None, confidence=0.8):
    n = len(labels)
    k = len(classes)
    probs = np.full((n, k), (1 - confidence) / (k - 1), dtype=np.float32)
    probs[np.arange(n), [classes.index(p) for p in preds]] = confidence
    ids = ids or [f"s{i:03d}" for i in range(n)]
    return build_prediction_table(ids, probs, np.zeros((n, 0)), labels=list(labels), splits=splits or ["val"] * n,
                                  specimen_ids=specimens or ids, class_names=classes)


def _random_pair(n=400, seed=0, acc_a=0.6, acc_b=0.8):
    rng = np.random.default_rng(seed)
    labels = rng.choice(CLASSES, size=n, p=[0.6, 0.3, 0.1])
    def noisy(acc):
        wrong = rng.random(n) > acc
        other = [CLASSES[(CLASSES.index(lab) + 1) % 3] for lab in labels]
        return np.where(wrong, other, labels)
    return labels, noisy(acc_a), noisy(acc_b)


def test_point_values_equal_sklearn_and_the_better_model_wins():
    labels, pa, pb = _random_pair()
    result = compare_predictions(_table(labels, pa), _table(labels, pb), n_boot=500)
    for name, average in (("macro_f1", "macro"), ("weighted_f1", "weighted")):
        row = result.metric(name)
        assert row["a"] == pytest.approx(f1_score(labels, pa, average=average))
        assert row["b"] == pytest.approx(f1_score(labels, pb, average=average))
        assert row["delta"] == pytest.approx(row["b"] - row["a"])
        assert row["delta_low"] < row["delta"] < row["delta_high"]
        assert row["delta_low"] > 0  # B is clearly better at 400 samples, 60% vs 80%
        assert row["share_b_better"] > 0.99
    assert result.n == 400 and result.n_dropped == 0


def test_paired_interval_is_narrower_than_unpaired_for_correlated_models():
    labels, pa, _ = _random_pair(seed=1)
    pb = pa.copy()
    pb[:20] = labels[:20]  # B = A with a few fixes: the delta is tiny and certain
    result = compare_predictions(_table(labels, pa), _table(labels, pb), n_boot=800, seed=3)
    row = result.metric("accuracy")
    delta_width = row["delta_high"] - row["delta_low"]
    a_width = row["a_high"] - row["a_low"]
    assert delta_width < a_width / 2
    assert row["delta_low"] >= 0  # B never loses on any resample: it only fixed samples


def test_identical_models_have_zero_delta_and_no_flips():
    labels, pa, _ = _random_pair(seed=2)
    result = compare_predictions(_table(labels, pa), _table(labels, pa), n_boot=200)
    assert (result.metrics["delta"] == 0).all()
    assert (result.metrics["delta_low"] == 0).all() and (result.metrics["delta_high"] == 0).all()
    assert result.flips.empty and result.flip_counts() == {"right_to_wrong": 0, "wrong_to_right": 0}


def test_flips_list_exactly_the_changed_samples():
    labels = ["ant", "ant", "bee", "bee", "fly", "fly"]
    pa = ["ant", "bee", "bee", "ant", "fly", "ant"]
    pb = ["bee", "ant", "bee", "fly", "fly", "fly"]
    result = compare_predictions(_table(labels, pa), _table(labels, pb), n_boot=0)
    flips = result.flips.set_index("sample_id")
    assert flips.loc["s000", "direction"] == "right_to_wrong"
    assert set(flips.index[flips["direction"] == "wrong_to_right"]) == {"s001", "s005"}
    assert "s003" not in flips.index  # wrong -> another wrong is not a flip
    assert result.flip_counts() == {"right_to_wrong": 1, "wrong_to_right": 2}
    assert np.isnan(result.metric("macro_f1")["delta_low"])


def test_per_class_delta_matches_sklearn_per_class_f1():
    labels, pa, pb = _random_pair(seed=4)
    y = np.array([CLASSES.index(c) for c in labels])
    ia = np.array([CLASSES.index(c) for c in pa])
    ib = np.array([CLASSES.index(c) for c in pb])
    frame = per_class_delta(y, ia, ib, CLASSES).set_index("class")
    f1_a = f1_score(y, ia, average=None, labels=[0, 1, 2])
    f1_b = f1_score(y, ib, average=None, labels=[0, 1, 2])
    for i, name in enumerate(CLASSES):
        assert frame.loc[name, "f1_a"] == pytest.approx(f1_a[i])
        assert frame.loc[name, "delta"] == pytest.approx(f1_b[i] - f1_a[i])
    assert list(frame["delta"]) == sorted(frame["delta"])


def test_tables_are_matched_by_sample_id_and_labels_unknown_to_a_model_are_left_out():
    labels = ["ant", "bee", "fly", "wasp"]
    a = _table(labels[:3], ["ant", "bee", "bee"])
    b_classes = ("ant", "bee", "wasp")
    b = _table(["wasp", "bee", "ant"], ["wasp", "bee", "ant"], classes=b_classes, ids=["s003", "s001", "s000"])
    result = compare_predictions(a, b, n_boot=0)
    assert result.n == 2  # s000, s001: s002 is a fly (B lacks it), s003 only in B
    assert result.n_dropped == 2
    assert result.class_names == ("ant", "bee", "fly", "wasp")
    assert any("not classes of both models" in note for note in result.notes)


def test_specimen_bootstrap_is_wider_when_images_of_a_specimen_agree():
    rng = np.random.default_rng(5)
    n_specimens, views = 60, 5
    labels = np.repeat(rng.choice(CLASSES, size=n_specimens), views)
    right_a = np.repeat(rng.random(n_specimens) < 0.6, views)  # a specimen is all right or all wrong
    right_b = np.repeat(rng.random(n_specimens) < 0.7, views)
    wrong = np.array([CLASSES[(CLASSES.index(c) + 1) % 3] for c in labels])
    pa, pb = np.where(right_a, labels, wrong), np.where(right_b, labels, wrong)
    specimens = [f"sp{i // views}" for i in range(len(labels))]
    ta, tb = _table(labels, pa, specimens=specimens), _table(labels, pb, specimens=specimens)
    by_image = compare_predictions(ta, tb, n_boot=600, cluster="sample").metric("accuracy")
    by_specimen = compare_predictions(ta, tb, n_boot=600, cluster="specimen").metric("accuracy")
    width = lambda row: row["delta_high"] - row["delta_low"]  # noqa: E731
    assert width(by_specimen) > 1.5 * width(by_image)


def test_split_filter_and_errors():
    labels, pa, pb = _random_pair(n=10)
    splits = ["train"] * 5 + ["val"] * 5
    result = compare_predictions(_table(labels, pa, splits=splits), _table(labels, pb, splits=splits),
                                 split="val", n_boot=0)
    assert result.n == 5
    other = _table(labels, pb, ids=[f"x{i}" for i in range(10)])
    with pytest.raises(ValueError, match="share no sample"):
        compare_predictions(_table(labels, pa), other)
    with pytest.raises(ValueError, match="cluster"):
        compare_predictions(_table(labels, pa), _table(labels, pb), cluster="individual")
    assert isinstance(result.flips, pd.DataFrame)
