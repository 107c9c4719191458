"""Tests of core.scores: counts -> scores against scikit-learn, the stratified (specimen) bootstrap, coverage."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from core import scores
from core.scores import (
    DEFAULT_METHOD,
    SPECIMEN_MASS_LESS,
    BootstrapConfig,
    ClassCounts,
    ResamplingPlan,
    bootstrap,
    class_interval_bounds,
    class_scores,
    design_effect,
    headline_scores,
    interval,
    stratum_mass,
    top_k_hits,
    wilson_interval,
)
from core.simulation import Population, measure_coverage
from tests.core.tables import random_table as _random_table


def sklearn_balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": expected, those classes are skipped
        warnings.simplefilter("ignore", UserWarning)
        return balanced_accuracy_score(y_true, y_pred)


def test_top_k_hits_tie_rule_matches_sklearn():
    probs = np.array([[0.25, 0.25, 0.25, 0.25]] * 4)
    y = np.array([0, 1, 2, 3])
    # All tied: sklearn ranks the highest index first, so top-2 holds classes 3 and 2.
    np.testing.assert_array_equal(top_k_hits(probs, y, k=2), [False, False, True, True])
    assert top_k_hits(probs, y, k=2).mean() == top_k_accuracy_score(y, probs, k=2, labels=range(4))


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
        got = headline_scores(ClassCounts(tp, support, predicted))
        present = np.unique(yt)
        assert got["accuracy"][0] == pytest.approx(accuracy_score(yt, yp))
        assert got["balanced_accuracy"][0] == pytest.approx(sklearn_balanced_accuracy(yt, yp))
        assert got["macro_f1"][0] == pytest.approx(f1_score(yt, yp, labels=present, average="macro"))
        assert got["weighted_f1"][0] == pytest.approx(f1_score(yt, yp, average="weighted"))


def test_class_scores_and_headline_scores_match_sklearn_on_a_confusion():
    rng = np.random.default_rng(11)
    y = rng.integers(0, 5, 300)
    y[y == 4] = 3  # class 4 has no samples but is predicted
    p = np.where(rng.random(300) < 0.6, y, rng.integers(0, 5, 300))
    counts = ClassCounts.from_labels(y, p, 5)
    scores = class_scores(counts)
    precision, recall, f1, support = precision_recall_fscore_support(y, p, labels=range(5), zero_division=0)
    np.testing.assert_allclose(scores["precision"], precision)
    np.testing.assert_allclose(scores["recall"], recall)
    np.testing.assert_allclose(scores["f1"], f1)
    np.testing.assert_array_equal(counts.support, support)
    confusion = ClassCounts.from_confusion(np.bincount(y * 5 + p, minlength=25).reshape(5, 5))
    headline = headline_scores(confusion)
    assert headline["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert headline["balanced_accuracy"] == pytest.approx(sklearn_balanced_accuracy(y, p))
    assert headline["macro_f1"] == pytest.approx(f1_score(y, p, labels=np.unique(y), average="macro"))
    assert headline["weighted_f1"] == pytest.approx(f1_score(y, p, average="weighted"))


def _clustered(n_specimens=60, views=3, seed=0):
    """Labels, predictions and specimen ids where all images of a specimen are right or all wrong."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.integers(0, 3, n_specimens), views)
    right = np.repeat(rng.random(n_specimens) < 0.7, views)
    preds = np.where(right, labels, (labels + 1) % 3)
    return labels, preds, np.repeat(np.arange(n_specimens), views)


def _accuracy_draws(plan: ResamplingPlan, n_boot: int, seed: int) -> np.ndarray:
    config = BootstrapConfig(n_boot=n_boot, seed=seed, method="percentile")
    return bootstrap(plan, lambda t: headline_scores(t.counts("pred"), ["accuracy"]), config).draws["accuracy"]


def test_every_resample_keeps_each_class_and_its_specimens():
    y, p, specimens = _clustered()
    for groups in (None, specimens):
        plan = ResamplingPlan(y, {"pred": p}, k=3, groups=groups)
        for tally in plan.resample(50, seed=1):
            # Every specimen has 3 images, so a class keeping its specimens keeps its image count exactly.
            np.testing.assert_allclose(tally.support, np.broadcast_to(np.bincount(y, minlength=3), tally.support.shape))
    assert ResamplingPlan(y, {"pred": p}, k=3, groups=specimens).unit == "specimen"
    assert ResamplingPlan(y, {"pred": p}, k=3, groups=np.arange(len(y))).unit == "image"  # no repeated specimen


def test_specimen_resampling_has_the_spread_of_drawing_specimen_indices():
    y, p, specimens = _clustered(n_specimens=90)
    plan = ResamplingPlan(y, {"pred": p}, k=3, groups=specimens)
    draws = _accuracy_draws(plan, 4000, seed=2)
    # Brute force: per class, draw m - 1 of its m specimens with replacement, weight m / (m - 1), score the rows.
    rng = np.random.default_rng(3)
    label_of, right_of = y[::3], (y == p)[::3]
    brute = []
    for _ in range(4000):
        hits = total = 0.0
        for c in range(3):
            members = np.flatnonzero(label_of == c)
            m = len(members)
            picked = rng.choice(members, size=m - 1)
            hits += right_of[picked].sum() * 3 * m / (m - 1)
            total += 3 * m
        brute.append(hits / total)
    assert draws.mean() == pytest.approx(np.mean(brute), abs=0.003)
    assert draws.std() == pytest.approx(np.std(brute), rel=0.06)
    image_draws = _accuracy_draws(ResamplingPlan(y, {"pred": p}, k=3), 4000, seed=2)
    assert draws.std() > 1.4 * image_draws.std()  # images of a specimen agree: resampling images is too narrow


def test_a_mixed_label_specimen_counts_under_its_majority_class_and_a_lone_specimen_is_resampled_by_image():
    y = np.array([0, 0, 1, 0, 0, 1, 1, 1, 2, 2, 2])
    p = np.array([0, 1, 1, 0, 0, 1, 1, 0, 2, 0, 2])
    specimens = np.array([0, 0, 0, 1, 1, 2, 2, 3, 4, 4, 4])  # specimen 0: two images of class 0, one of class 1
    plan = ResamplingPlan(y, {"pred": p}, k=3, groups=specimens)
    # Class 0: specimens 0 and 1; class 1: specimens 2 (both right) and 3 (wrong), clustered; class 2: specimen 4
    # alone -> its 3 images.
    np.testing.assert_array_equal(plan.units_per_class, [2, 2, 3])
    assert plan.n_image_units == 1 and plan.n_unclustered_specimens == 0 and plan.n_units == 7
    supports = np.concatenate([t.support for t in plan.resample(400, seed=0)])
    assert set(np.unique(supports[:, 2])) == {3.0}  # class 2 keeps its 3 images
    assert len(np.unique(supports[:, 1])) > 1  # specimen 0 carries a class-1 image: class 1's support varies


def test_design_effect_by_hand_and_near_one_plus_n_minus_one_rho():
    # Two specimens of two images: all-right vs all-wrong is clustered (X^2 = 4 on 1 df); one right and one wrong
    # image each is not (X^2 = 0). A class of one specimen has no degrees of freedom.
    units, cells = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4]), np.array([0, 0, 1, 1, 0, 1, 0, 1, 0, 1])
    np.testing.assert_allclose(design_effect(units, cells, np.array([0, 0, 1, 1, 2]), 4), [4.0, 0.0, 0.0, 0.0])
    # 300 classes of 10 specimens x 4 images right with probability 0.7: independent images give a design effect
    # of 1 on average; a specimen's own rate drawn from Beta(0.7 kappa, 0.3 kappa) with intra-class correlation
    # rho = 1 / (kappa + 1) = 0.4 gives 1 + (4 - 1) 0.4 = 2.2.
    rng = np.random.default_rng(0)
    unit_of_row = np.repeat(np.arange(3000), 4)
    stratum_of_unit = np.repeat(np.arange(300), 10)
    for rate, expected in ((np.full(3000, 0.7), 1.0), (rng.beta(0.7 * 1.5, 0.3 * 1.5, 3000), 2.2)):
        right = (rng.random(12000) < np.repeat(rate, 4)).astype(np.int64)
        assert design_effect(unit_of_row, right, stratum_of_unit, 300).mean() == pytest.approx(expected, abs=0.12)


def test_a_class_whose_specimens_do_not_differ_is_resampled_by_image():
    # Class 0: 4 specimens of 3 images, every image right (no spread between specimens): its 12 images are its
    # units. Class 1: 6 specimens of 3 images, each all right or all wrong (clustered): its 6 specimens are.
    y = np.r_[np.zeros(12, int), np.ones(18, int)]
    p = np.r_[np.zeros(12, int), np.repeat([1, 0, 1, 1, 0, 1], 3)]
    specimens = np.repeat(np.arange(10), 3)
    plan = ResamplingPlan(y, {"pred": p}, k=2, groups=specimens)
    assert plan.unit == "specimen"
    np.testing.assert_array_equal(plan.units_per_class, [12, 6])
    assert plan.n_unclustered_specimens == 4 and plan.n_unclustered_classes == 1 and plan.n_image_units == 0
    # The near-perfect class's recall interval is the image-level Jeffreys one (12 of 12 right: its 2.5% bound
    # near Beta(12.5, 0.5)'s, not the far lower one of 4 specimens of all-alike images).
    result = bootstrap(plan, lambda t: class_scores(t.counts("pred")), BootstrapConfig(n_boot=4000, seed=0))
    mass = stratum_mass(np.array([12.0]), prior_mass=1.5, single_share=np.ones(1), lone=np.ones(1, bool))[0]
    expected = stats.beta(12.5 * mass / 13.5, 0.5 * mass / 13.5).ppf(0.025)
    assert result.low["recall"][0] == pytest.approx(expected, abs=0.02)
    by_specimen = ResamplingPlan(y[:12], {"pred": p[:12]}, k=1, groups=specimens[:12])
    assert by_specimen.units_per_class[0] == 12  # alone, the same class is still unclustered


@pytest.mark.parametrize("method", ["bayes", "percentile", "bca"])
def test_bootstrap_results_do_not_depend_on_the_chunk_size(monkeypatch, method):
    # Specimens of 3 images, plus a large class of single images in few types (drawn as one multinomial).
    y, p, specimens = _clustered(n_specimens=40)
    y = np.r_[y, np.full(300, 3)]
    p = np.r_[p, np.where(np.arange(300) % 4 == 0, 0, 3)]
    specimens = np.r_[specimens, 1000 + np.arange(300)]
    plan = ResamplingPlan(y, {"pred": p}, k=4, groups=specimens)
    assert plan._multinomial  # the large class takes the multinomial path
    config = BootstrapConfig(n_boot=50, seed=7, method=method)

    def run() -> tuple[dict, dict, dict]:
        result = bootstrap(plan, lambda t: {**headline_scores(t.counts("pred")), **class_scores(t.counts("pred"))},
                           config)
        return result.draws, result.low, result.high

    whole = run()
    monkeypatch.setattr(scores, "BOOT_CHUNK_NUMBERS", 1)  # one draw per chunk
    chunked = run()
    for got, want in zip(chunked, whole, strict=True):
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


def test_percentile_and_bca_intervals_hold_the_point_and_follow_the_draws():
    draws = np.random.default_rng(0).normal(0.5, 0.1, size=(4000, 1))
    low, high = interval(draws, np.array([0.5]), 0.95)
    assert low[0] == pytest.approx(0.5 - 1.96 * 0.1, abs=0.01) and high[0] == pytest.approx(0.5 + 1.96 * 0.1, abs=0.01)
    same_low, same_high = interval(draws, np.array([0.5]), 0.95, acceleration=np.array([0.0]))
    assert same_low[0] == pytest.approx(low[0], abs=0.005)  # no bias, no skew: BCa equals the percentile interval
    shifted_low, shifted_high = interval(draws, np.array([0.55]), 0.95, acceleration=np.array([0.0]))
    assert shifted_low[0] > low[0] + 0.05 and shifted_high[0] > high[0] + 0.05  # bias-corrected towards the point


@pytest.mark.parametrize("method", ["bayes", "bca"])
def test_per_class_f1_zero_on_3_images_and_on_300_read_differently(method):
    y = np.r_[np.zeros(300, int), np.ones(3, int), np.full(300, 2)]
    p = np.r_[np.full(300, 2), np.full(3, 2), np.full(300, 2)]  # classes 0 and 1 never right
    plan = ResamplingPlan(y, {"pred": p}, k=3)
    bounds = class_interval_bounds(plan, BootstrapConfig(n_boot=300, method=method))
    assert bounds["f1_low"][0] == 0 and bounds["f1_low"][1] == 0
    assert bounds["f1_high"][0] < 0.03  # zero on 300 images: surely weak
    assert bounds["f1_high"][1] > 0.5  # zero on 3 images: could be fair
    assert bounds["recall_low"][2] < 0.995 and bounds["recall_high"][2] == 1.0  # all right: not certainly perfect
    if method == "bca":  # the bootstrap cannot leave 0 or 1: the open side is the Wilson bound
        assert bounds["recall_high"][1] == pytest.approx(wilson_interval(0, 3, 0.95)[1])
    else:  # the Jeffreys prior: 0 of 3 right reads as Beta(0.5, 3.5), its masses scaled to 3 + 1.5 - 1 = 3.5 in all
        expected = stats.beta(0.5 * 3.5 / 4.5, 3.5 * 3.5 / 4.5).ppf(0.975)
        many = class_interval_bounds(plan, BootstrapConfig(n_boot=4000, method=method))
        assert many["recall_high"][1] == pytest.approx(expected, abs=0.02)


def test_bayesian_draws_of_a_class_of_right_and_wrong_images_follow_the_jeffreys_posterior():
    # Class 0: 6 single-image specimens, 4 right and 2 wrong; with the prior's pseudo-images (half a right, half a
    # missed one, half a false alarm) and every Dirichlet mass scaled to a total of m + 1.5 - 1 = 6.5 (single
    # images), its recall is exactly Beta(6.5 / 7.5 * 4.5, 6.5 / 7.5 * 2.5). Class 1: 20 specimens of 2 images,
    # all right (a total of m - 2 = 18).
    labels = np.r_[np.zeros(6, int), np.ones(40, int)]
    specimens = np.r_[np.arange(6), 6 + np.repeat(np.arange(20), 2)]
    right = np.r_[[1, 1, 1, 1, 0, 0], np.ones(40)].astype(bool)
    preds = np.where(right, labels, 1 - labels)
    plan = ResamplingPlan(labels, {"pred": preds}, k=2, groups=specimens)
    assert plan.unit == "specimen"
    result = bootstrap(plan, lambda t: class_scores(t.counts("pred")), BootstrapConfig(n_boot=4000, seed=0))
    recall = result.draws["recall"][:, 0]
    posterior = stats.beta(6.5 / 7.5 * 4.5, 6.5 / 7.5 * 2.5)
    np.testing.assert_allclose(np.quantile(recall, [0.025, 0.5, 0.975]), posterior.ppf([0.025, 0.5, 0.975]),
                               atol=0.015)
    assert result.low["recall"][0] == pytest.approx(posterior.ppf(0.025), abs=0.015)
    # Class 1, always right on 20 specimens: not certainly perfect, but surely better than 0.9.
    assert 0.9 < result.low["recall"][1] < 0.995 and result.high["recall"][1] == 1.0  # the interval keeps 1
    # Every draw keeps each class's weight: its support is its images.
    supports = np.concatenate([t.support for t in plan.resample_bayes(200, seed=1)])
    np.testing.assert_allclose(supports, np.broadcast_to([6.0, 40.0], supports.shape))


def test_bayesian_draws_of_a_few_specimens_widen_as_the_stratum_mass_says():
    # Class 0: 5 specimens of 4 images with 4, 3, 2, 1 and 0 right (recall 0.5); class 1: 20 specimens, all right.
    # Without a prior the class's recall is a Dirichlet-weighted mean of the specimens' rates; with a total mass A
    # its variance is sigma_n^2 / (A + 1) (sigma_n^2: the rates' variance about their mean, divided by m). A = m - 1
    # (the plain Bayesian bootstrap's m, less one) would give sigma_n^2 / m; the stratum mass m - SPECIMEN_MASS_LESS
    # gives more, and a prior widens it further.
    labels = np.r_[np.zeros(20, int), np.ones(40, int)]
    specimens = np.r_[np.repeat(np.arange(5), 4), 5 + np.repeat(np.arange(20), 2)]
    right = np.r_[[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], np.ones(40)].astype(bool)
    preds = np.where(right, labels, 1 - labels)
    rates = np.array([1.0, 0.75, 0.5, 0.25, 0.0])
    sigma2_n = rates.var()
    mass = stratum_mass(np.array([5.0]), prior_mass=0.0, single_share=np.zeros(1), lone=np.zeros(1, bool))[0]
    assert mass == 5 - SPECIMEN_MASS_LESS
    spreads = {}
    for class_prior in (False, True):
        plan = ResamplingPlan(labels, {"pred": preds}, k=2, groups=specimens, class_prior=class_prior)
        draws = bootstrap(plan, lambda t: class_scores(t.counts("pred")), BootstrapConfig(n_boot=6000, seed=0))
        spreads[class_prior] = draws.draws["recall"][:, 0].var()
    assert spreads[False] == pytest.approx(sigma2_n / (mass + 1), rel=0.07)
    assert spreads[False] > 1.1 * sigma2_n / 5  # wider than the plain Bayesian bootstrap (A = m - 1)
    assert spreads[True] > spreads[False]  # the prior's pseudo-images (a right and a missed one) add spread


def test_bayesian_draws_are_paired_two_equal_models_differ_by_nothing():
    y, p, specimens = _clustered(n_specimens=30)
    plan = ResamplingPlan(y, {"a": p, "b": p.copy()}, k=3, groups=specimens)
    for tally in plan.resample_bayes(100, seed=0):
        np.testing.assert_allclose(tally.tp["a"], tally.tp["b"])
        np.testing.assert_allclose(tally.predicted["a"], tally.predicted["b"])


def test_without_a_class_prior_the_bayesian_draws_carry_only_the_real_images():
    # Calibration's columns are confidence levels, not classes: the pseudo-images must not land in them.
    y, p, specimens = _clustered(n_specimens=30)
    right = y.copy()  # every image right
    for class_prior, expect_misses in ((False, False), (True, True)):
        plan = ResamplingPlan(y, {"pred": right}, k=3, groups=specimens, class_prior=class_prior)
        missed = []
        for tally in plan.resample_bayes(50, seed=0):
            missed.append(tally.support - tally.tp["pred"])
            np.testing.assert_allclose(tally.support.sum(axis=1), len(y))  # each class keeps its images' weight
        assert (np.abs(np.concatenate(missed)) > 1e-9).any() == expect_misses


def test_intervals_cover_the_population_value_of_a_clustered_imbalanced_population():
    # A seeded simulation (benchmarks/bench_coverage.py runs the large one: 95-97% here at 2,000 sets): six classes
    # of 40 to 4 specimens of 2-5 correlated images. Target 93-97%; 150 sets measure a coverage to about +-2 points
    # (one standard error), so a method truly at 93% shows at least 88% here with 99% probability; resampling
    # images instead (60 sets suffice) falls far short.
    population = Population()
    by_specimen = measure_coverage(population, unit="specimen", method=DEFAULT_METHOD, n_sets=150, n_boot=200, seed=4)
    by_image = measure_coverage(population, unit="image", method=DEFAULT_METHOD, n_sets=60, n_boot=200, seed=4)
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "rare_f1"):
        assert 0.88 <= by_specimen.covered[name] <= 0.995, (name, by_specimen.covered)  # not bought with needless width
    assert by_specimen.width["rare_f1"] < 0.7  # 4 specimens: wide, but not the whole range
    assert by_image.covered["accuracy"] <= by_specimen.covered["accuracy"] - 0.08, (by_image.covered,
                                                                                   by_specimen.covered)
    assert by_specimen.width["accuracy"] > 1.3 * by_image.width["accuracy"]
    # A 3-image class (one specimen): the prior keeps its recall open where every resample of 3 right images
    # would say 1 (BCa on the rescaled bootstrap covered balanced accuracy 66% here; the images as independent
    # units, with the full Jeffreys mass, 90%).
    lone = Population(specimens_per_class=(40, 24, 14, 8, 5, 1), fixed_images={5: 3})
    by_lone = measure_coverage(lone, unit="specimen", method=DEFAULT_METHOD, n_sets=60, n_boot=200, seed=5)
    assert by_lone.covered["balanced_accuracy"] >= 0.85, by_lone.covered
    # A near-perfect rare class (4 specimens right 90% of the time, usually all right): resampling its specimens
    # with the m - 2 mass over-covered its F1 (98.8% at 1,000 sets; here 97.3%, mean width 0.485); the design effect
    # sends such a class to its images (93.7% at 2,000 sets; here 94.0%, width 0.420).
    near_perfect = Population(recall=(0.92, 0.85, 0.8, 0.7, 0.6, 0.9))
    by_near = measure_coverage(near_perfect, unit="specimen", method=DEFAULT_METHOD, n_sets=150, n_boot=200, seed=6)
    assert 0.88 <= by_near.covered["rare_f1"] <= 0.965, by_near.covered
    assert by_near.width["rare_f1"] < 0.46, by_near.width
