"""Tests of core.specimens: the specimen-level table (mean probabilities, majority label, conflicts)."""

from __future__ import annotations

import numpy as np
import pytest

from core.metrics import compute_headline_metrics
from core.specimens import has_specimens, specimen_table
from tests.core.tables import hand_table as _table


def test_specimen_table_means_probabilities():
    probs = np.array([[0.6, 0.4, 0, 0], [0.1, 0.9, 0, 0], [0, 0, 1.0, 0], [0.7, 0.3, 0, 0]], dtype=np.float32)
    table = _table(["ant", "ant", "cricket", "bee"], None, probs=probs, specimens=["x", "x", "y", "z"])
    spec = specimen_table(table)
    assert spec.frame["sample_id"].tolist() == ["x", "y", "z"]
    np.testing.assert_allclose(spec.pred_probs[0], [0.35, 0.65, 0, 0])
    assert spec.frame["pred"].tolist() == ["bee", "cricket", "ant"]
    assert spec.frame["label"].tolist() == ["ant", "cricket", "bee"]
    assert has_specimens(table) and not has_specimens(spec)
    assert spec.meta["n_label_conflicts"] == 0
    h = compute_headline_metrics(spec, n_boot=0)
    assert h["accuracy"].value == pytest.approx(1 / 3)


def test_specimen_table_majority_label_and_conflicts():
    probs = np.full((3, 4), 0.25, dtype=np.float32)
    table = _table(["bee", "ant", "bee"], None, probs=probs, specimens=["x", "x", "x"])
    spec = specimen_table(table)
    assert spec.frame["label"].tolist() == ["bee"] and spec.meta["n_label_conflicts"] == 1
