"""Tests of core.scores: counts -> scores against scikit-learn, the stratified (specimen) bootstrap, coverage."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, top_k_accuracy_score

from core.scores import ClassCounts, headline_scores, top_k_hits
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
