"""Auto-accept thresholds: the lower bound meets the target, held-out folds confirm it, unreachable classes named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.predictions import build_prediction_table
from core.thresholds import (
    ThresholdConfig,
    ThresholdError,
    auto_accept_thresholds,
    risk_coverage_curve,
    thresholds_json,
    write_thresholds,
)


def _table(n: int = 6000, k: int = 5, seed: int = 0):
    """Class c is separable in proportion to c: class 0 is chance-like (never reaches 0.95), class 4 is easy."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(size=(n, k)) * 1.5
    z[np.arange(n), y] += np.linspace(0.0, 6.0, k)[y]
    z[:, 0] += 1.0  # many wrong predictions land on class 0
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return build_prediction_table([f"s{i}" for i in range(n)], p, np.zeros((n, 0)), labels=[f"c{c}" for c in y],
                                  splits=["val"] * n, specimen_ids=[f"sp{i // 2}" for i in range(n)],
                                  class_names=[f"c{c}" for c in range(k)])


@pytest.fixture(scope="module")
def result():
    return auto_accept_thresholds(_table(), ThresholdConfig(precision=0.95, n_boot=300))


def test_thresholds_meet_the_target_with_their_lower_bound(result):
    frame = result.frame.set_index("class")
    reached = frame[frame["reachable"]]
    assert len(reached) >= 2
    assert (reached["precision"] >= 0.95).all()
    assert (reached["precision_low"] >= 0.95 - 0.01).all()  # bootstrap bound, close to the Wilson bound chosen on
    assert "c0" in result.unreachable and not frame.loc["c0", "reachable"]
    # the lowest such threshold: one step lower would break the point precision or its bound
    assert (reached["coverage"] > 0).all() and (reached["coverage"] <= 1).all()


def test_thresholds_hold_on_held_out_folds(result):
    frame = result.frame[result.frame["heldout_accepted"] >= 100]
    assert len(frame) >= 2
    assert (frame["heldout_precision"] >= 0.95 - 0.02).all()  # sampling tolerance of a few hundred images
    assert result.heldout_precision >= 0.95 - 0.01


def test_risk_coverage_curve_ends_at_the_error_rate():
    table = _table(n=500)
    correct = (table.frame["pred_idx"] == table.frame["label_idx"]).to_numpy()
    curve = risk_coverage_curve(table.frame["confidence"], correct, max_points=50)
    assert len(curve) <= 51
    assert curve["coverage"].iloc[-1] == 1.0
    assert curve["risk"].iloc[-1] == pytest.approx(1 - correct.mean())
    assert curve["coverage"].is_monotonic_increasing


def test_export_files(tmp_path, result):
    data = json.loads(thresholds_json(result, checkpoint="m"))
    assert data["target_precision"] == 0.95 and data["checkpoint"] == "m"
    assert data["classes"]["c0"]["threshold"] is None
    assert data["classes"]["c4"]["threshold"] == pytest.approx(result.frame.iloc[4]["threshold"])
    csv = write_thresholds(result, tmp_path / "t.csv").read_text(encoding="utf-8").splitlines()
    assert csv[0].startswith("class,threshold") and len(csv) == 6
    with pytest.raises(ThresholdError, match="does not exist"):
        write_thresholds(result, tmp_path / "missing" / "t.json")
    with pytest.raises(ThresholdError, match="--precision"):
        ThresholdConfig(precision=1.5)
