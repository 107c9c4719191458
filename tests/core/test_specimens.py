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


def test_specimen_means_in_small_chunks_equal_the_whole_computation():
    # 60 images of 17 specimens (1-6 images each, interleaved): chunks of 8 probabilities (2 rows of 4 classes, a
    # specimen of more rows still whole) give the same float32 means, bit for bit, as one chunk.
    rng = np.random.default_rng(0)
    specimens = [f"s{i}" for i in rng.permutation(np.repeat(np.arange(17), rng.integers(1, 7, 17)))]
    n = len(specimens)
    probs = rng.dirichlet(np.ones(4), n).astype(np.float32)
    table = _table(list(rng.choice(["ant", "bee", "cricket"], n)), None, probs=probs, specimens=specimens)
    whole = specimen_table(table, chunk_numbers=10**9)
    chunked = specimen_table(table, chunk_numbers=8)
    np.testing.assert_array_equal(chunked.pred_probs, whole.pred_probs)
    assert chunked.frame.equals(whole.frame)
    first = specimens[0]
    np.testing.assert_allclose(whole.pred_probs[0], probs[[s == first for s in specimens]].mean(axis=0), rtol=1e-6)
