"""Split-conformal prediction sets: scores by hand, the quantile rule, and coverage within sampling tolerance on
repeated random specimen-grouped splits of the demo and of real bccd."""

from __future__ import annotations

import numpy as np
import pytest

from core.conformal import (
    ConformalConfig,
    ConformalError,
    calibrate_on_table,
    calibrate_sets,
    class_scores,
    evaluate_coverage,
    set_frame,
    uniform_draws,
)


def test_aps_and_raps_scores_by_hand():
    probs = np.array([[0.2, 0.5, 0.3]])
    plain = class_scores(probs, np.array([0.5]), ConformalConfig(randomized=False))
    np.testing.assert_allclose(plain, [[1.0, 0.5, 0.8]])
    randomized = class_scores(probs, np.array([0.5]), ConformalConfig())
    np.testing.assert_allclose(randomized, [[0.9, 0.25, 0.65]])
    raps = class_scores(probs, np.array([0.0]), ConformalConfig(method="raps", raps_lambda=0.1, raps_k=1))
    np.testing.assert_allclose(raps, [[1.2, 0.5, 0.9]])


def test_threshold_is_the_conformal_quantile():
    # one-hot rows: the true class's non-randomized score is its probability mass ranked above plus its own
    scores = np.arange(1, 20) / 20  # 19 calibration scores
    probs = np.column_stack([scores, 1 - scores])  # class 0's score: its own mass when it ranks first, else 1
    y = np.zeros(19, dtype=int)
    calibration = calibrate_sets(probs, y, np.zeros(19), ConformalConfig(coverage=0.9, randomized=False))
    own = np.where(scores >= 0.5, scores, 1.0)
    assert calibration.thresholds[0] == pytest.approx(np.sort(own)[int(np.ceil(20 * 0.9)) - 1])
    tiny = calibrate_sets(probs[:5], y[:5], np.zeros(5), ConformalConfig(coverage=0.9, class_conditional=True))
    assert tiny.always_included[0]  # 5 images cannot promise 90%: the class is always in the set


def test_uniform_draws_are_fixed_by_sample_id():
    a = uniform_draws(["x", "y", "z"])
    b = uniform_draws(["z", "x", "y"])
    assert a[0] == b[1] and a[2] == b[0]
    assert ((a >= 0) & (a < 1)).all() and len(set(a)) == 3


@pytest.mark.parametrize("conditional", [False, True])
def test_demo_coverage_on_repeated_splits(demo_predictions, conditional):
    table = demo_predictions.for_split("val")  # out-of-sample for the demo model
    report = evaluate_coverage(table, ConformalConfig(coverage=0.9, class_conditional=conditional), repeats=20)
    # split conformal: E[coverage] in [0.9, 0.9 + 1/(n_cal + 1)]; 20 halves of ~120 images, specimen-clustered
    assert abs(report.coverage - 0.9) <= 0.04
    assert report.per_class["support"].sum() == len(table)
    if conditional:
        big = report.per_class[report.per_class["support"] >= 30]
        assert (big["coverage"] >= 0.9 - 0.1).all()


def test_bccd_coverage_and_rare_class(bccd_pixel):
    marginal = evaluate_coverage(bccd_pixel, ConformalConfig(coverage=0.9), repeats=20)
    assert abs(marginal.coverage - 0.9) <= 0.04
    conditional = evaluate_coverage(bccd_pixel, ConformalConfig(coverage=0.9, class_conditional=True), repeats=20)
    per_class = conditional.per_class.set_index("class")
    assert per_class.loc["Basophil", "always_included_share"] == 1.0  # 3 images: never a finite threshold
    assert per_class.loc["Basophil", "coverage"] == 1.0
    assert per_class.loc["Neutrophil", "coverage"] == pytest.approx(0.9, abs=0.06)
    # per-class thresholds lift the worst-covered class towards the target
    worst_marginal = marginal.per_class.set_index("class").loc[["Lymphocyte", "Monocyte", "Eosinophil"], "coverage"]
    assert per_class.loc[worst_marginal.index, "coverage"].min() >= worst_marginal.min() - 1e-9


def test_set_frame_marks_labels_outside_their_set(bccd_pixel):
    calibration = calibrate_on_table(bccd_pixel, ConformalConfig(coverage=0.8, method="raps"))
    sets = set_frame(bccd_pixel, calibration)
    assert (sets["set_size"] >= 0).all()
    assert sets["set_size"].tolist() == [len(s) for s in sets["prediction_set"]]
    inside = [label in members for label, members in zip(bccd_pixel.frame["label"], sets["prediction_set"],
                                                           strict=True)]
    assert sets["label_in_set"].tolist() == inside
    assert 0.7 <= sets["label_in_set"].mean() <= 0.95
    # the most probable class comes first
    nonempty = sets["set_size"] > 0
    assert [s[0] for s in sets.loc[nonempty, "prediction_set"]] == bccd_pixel.frame.loc[nonempty, "pred"].tolist()
    forced = set_frame(bccd_pixel, calibrate_on_table(bccd_pixel, ConformalConfig(coverage=0.8, nonempty=True)))
    assert (forced["set_size"] >= 1).all()


def test_bad_settings_are_named():
    with pytest.raises(ConformalError, match="coverage"):
        ConformalConfig(coverage=90)
    with pytest.raises(ConformalError, match="'lac'"):
        ConformalConfig(method="lac")
