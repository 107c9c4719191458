"""Calibration maths against scikit-learn, temperature scaling on a known miscalibration, stored fits, intervals."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss

from core.calibration import (
    CalibrationError,
    apply_temperature,
    brier_scores,
    calibration_intervals,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    load_temperature,
    log_losses,
    maximum_calibration_error,
    reliability_table,
    save_temperature,
)
from core.predictions import build_prediction_table
from core.scores import BootstrapConfig


def _table(n: int = 1500, k: int = 5, *, sharpen: float = 1.0, seed: int = 0, per_specimen: int = 3):
    """Labels drawn from softmax(z) (so softmax(z) is calibrated); stored probabilities softmax(sharpen * z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * 1.5
    z[:, 0] += 0.5
    true_p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    y = (true_p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    shown = np.exp(sharpen * z) / np.exp(sharpen * z).sum(axis=1, keepdims=True)
    return build_prediction_table(
        [f"s{i}" for i in range(n)], shown, np.zeros((n, 0)), labels=[f"c{c}" for c in y], splits=["val"] * n,
        specimen_ids=[f"sp{i // per_specimen}" for i in range(n)], class_names=[f"c{c}" for c in range(k)])


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_reliability_bins_equal_sklearn_calibration_curve(strategy):
    table = _table()
    confidence = table.frame["confidence"].to_numpy()
    correct = (table.frame["pred_idx"] == table.frame["label_idx"]).to_numpy()
    prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=10, strategy=strategy)
    bins = reliability_table(confidence, correct, n_bins=10, strategy=strategy)
    np.testing.assert_allclose(bins["accuracy"], prob_true, atol=1e-12)
    np.testing.assert_allclose(bins["mean_confidence"], prob_pred, atol=1e-12)
    ece = float((bins["count"] * np.abs(prob_true - prob_pred)).sum() / len(confidence))
    assert expected_calibration_error(confidence, correct, n_bins=10, strategy=strategy) == pytest.approx(ece)
    assert maximum_calibration_error(confidence, correct, n_bins=10, strategy=strategy) == pytest.approx(
        np.abs(prob_true - prob_pred).max())


def test_brier_and_nll_equal_sklearn():
    table = _table(k=4)
    y = table.frame["label_idx"].to_numpy()
    probs = table.pred_probs.astype(np.float64)
    assert brier_scores(probs, y).mean() == pytest.approx(
        brier_score_loss(y, probs, labels=range(4), scale_by_half=False))
    assert log_losses(probs, y).mean() == pytest.approx(log_loss(y, probs, labels=range(4)), rel=1e-6)


def test_temperature_undoes_a_known_sharpening():
    # stored probabilities are the calibrated ones sharpened by 2: the fitted temperature should be about 2
    table = _table(n=4000, sharpen=2.0)
    fit = fit_temperature(table, checkpoint="m", n_folds=5)
    assert fit.temperature == pytest.approx(2.0, rel=0.15)
    assert fit.n_folds == 5 and len(fit.fold_temperatures) == 5
    assert fit.nll_after < fit.nll_before
    assert fit.ece_after < fit.ece_before / 2
    # softmax(log p / T) keeps every prediction
    scaled = apply_temperature(table.pred_probs, fit.temperature)
    assert (scaled.argmax(axis=1) == table.pred_probs.argmax(axis=1)).all()
    np.testing.assert_allclose(scaled.sum(axis=1), 1.0, atol=1e-5)


def test_calibrated_table_is_left_alone():
    fit = fit_temperature(_table(n=3000, sharpen=1.0), checkpoint="m")
    assert fit.temperature == pytest.approx(1.0, abs=0.12)


def test_stored_temperature_round_trips_and_goes_stale(tmp_path):
    fit = fit_temperature(_table(), checkpoint="my model (v2)")
    save_temperature(tmp_path, fit)
    assert load_temperature(tmp_path, "my model (v2)") == fit
    assert load_temperature(tmp_path, "other") is None
    (tmp_path / "calibration" / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(CalibrationError, match="broken.json"):
        load_temperature(tmp_path, "broken")


def test_interval_point_values_are_the_exact_metrics():
    table = _table(sharpen=1.6)
    result = calibration_intervals(table, BootstrapConfig(n_boot=200, seed=1), n_bins=10, strategy="quantile")
    y = table.frame["label_idx"].to_numpy()
    confidence = table.frame["confidence"].to_numpy()
    correct = table.frame["pred_idx"].to_numpy() == y
    assert float(result.values["ece"]) == pytest.approx(
        expected_calibration_error(confidence, correct, n_bins=10, strategy="quantile"), abs=1e-9)
    assert float(result.values["nll"]) == pytest.approx(log_losses(table.pred_probs, y).mean(), abs=1e-9)
    assert float(result.values["brier"]) == pytest.approx(brier_scores(table.pred_probs, y).mean(), abs=1e-9)
    for name in ("ece", "nll", "brier", "accuracy"):
        assert result.low[name] < result.values[name] < result.high[name], name
    assert result.unit == "specimen"


def test_report_per_class_and_empty_input():
    report = calibration_report(_table(), config=BootstrapConfig(n_boot=50))
    assert set(report.per_class["class"]) == {f"c{c}" for c in range(5)}
    assert report.per_class["support"].sum() == report.n_rows
    empty = _table(n=30)
    with pytest.raises(CalibrationError, match="label the model knows"):
        calibration_report(empty.subset(np.zeros(30, dtype=bool)))


def test_predictions_export_carries_the_calibrated_confidences():
    import io

    import pandas as pd

    from core.calibration import calibrate_table
    from core.export import predictions_csv

    table = _table(n=200, sharpen=2.0)
    raw = pd.read_csv(io.BytesIO(predictions_csv(table)))
    scaled = pd.read_csv(io.BytesIO(predictions_csv(calibrate_table(table, 2.0))))
    assert (raw["temperature"] == 1.0).all() and (scaled["temperature"] == 2.0).all()
    np.testing.assert_allclose(scaled["confidence"], apply_temperature(table.pred_probs, 2.0).max(axis=1), atol=1e-6)
    assert (scaled["pred"] == raw["pred"]).all() and (scaled["top1"] == raw["pred"]).all()
    assert (scaled["confidence"] < raw["confidence"]).all()  # T > 1 softens


def test_per_class_metrics_equal_sklearn_one_vs_rest():
    # each class's probability column against [y == c]: scikit-learn's calibration curve, Brier and log loss (to
    # float32 rounding: a specimen's rows are summed in float32)
    table = _table(n=900, k=4, sharpen=1.7, seed=3)
    report = calibration_report(table, n_bins=10, config=BootstrapConfig(n_boot=200, seed=2))
    per_class = report.per_class.set_index("class")
    y = table.frame["label_idx"].to_numpy()
    probs = table.pred_probs.astype(np.float64)
    for c in range(4):
        hit, p = (y == c).astype(int), probs[:, c]
        prob_true, prob_pred = calibration_curve(hit, p, n_bins=10, strategy="uniform")
        counts = np.bincount(np.searchsorted(np.linspace(0, 1, 11)[1:-1], p), minlength=10)
        counts = counts[counts > 0]
        row = per_class.loc[f"c{c}"]
        assert row["ece"] == pytest.approx((counts * np.abs(prob_true - prob_pred)).sum() / len(p), abs=1e-7)
        assert row["mce"] == pytest.approx(np.abs(prob_true - prob_pred).max(), abs=1e-7)
        assert row["brier"] == pytest.approx(brier_score_loss(hit, p), abs=1e-7)
        assert row["nll"] == pytest.approx(log_loss(hit, p), rel=1e-6)
        for metric in ("ece", "brier", "nll"):
            assert row[f"{metric}_low"] < row[metric] < row[f"{metric}_high"], (c, metric)
    # a sharpened model is over-confident: its top-label ECE interval lies above that of the calibrated one
    calibrated = calibration_report(_table(n=900, k=4, sharpen=1.0, seed=3), n_bins=10,
                                    config=BootstrapConfig(n_boot=200, seed=2)).metrics.set_index("metric")
    sharp = report.metrics.set_index("metric")
    assert sharp.loc["ece", "low"] > calibrated.loc["ece", "high"]



def test_weight_groups_follow_the_resampled_units():
    import pandas as pd

    from core.calibration import weight_groups

    frame = pd.DataFrame({"specimen_id": ["A", "A", "B", "C", "C", "D"], "label_idx": [0, 0, 0, 1, 1, 2]})
    groups = weight_groups(frame)
    assert groups[0] == groups[1]  # a specimen is drawn whole
    assert len({groups[2], groups[0], groups[3], groups[4], groups[5]}) == 5  # C, the only specimen of class 1,
    # has its images resampled one by one
    assert weight_groups(frame.assign(specimen_id=list("ABCDEF"))).tolist() == list(range(6))
