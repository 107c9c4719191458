"""Cached calibration, threshold, prediction-set and novelty results for the Calibration, review and
misclassification pages (keyed by a table's content token; the table itself passes unhashed)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.calibration import CalibrationReport, calibrate_table, calibration_report
from core.predictions import PredictionTable
from core.scores import BootstrapConfig
from core.thresholds import AutoAcceptThresholds, ThresholdConfig, auto_accept_thresholds, risk_coverage_curve

CALIBRATION_INTERVALS = BootstrapConfig()  # 1,000 stratified resamples, 95%, BCa, as the other evaluation pages


@st.cache_resource(show_spinner="Measuring calibration…", max_entries=16)
def report(token: str, n_bins: int, strategy: str, temperature: float, _table: PredictionTable) -> CalibrationReport:
    table = _table if temperature == 1.0 else calibrate_table(_table, temperature)
    return calibration_report(table, n_bins=n_bins, strategy=strategy, config=CALIBRATION_INTERVALS)


@st.cache_resource(show_spinner="Choosing thresholds…", max_entries=16)
def thresholds(token: str, precision: float, temperature: float, _table: PredictionTable) -> AutoAcceptThresholds:
    table = _table if temperature == 1.0 else calibrate_table(_table, temperature)
    return auto_accept_thresholds(table, ThresholdConfig(precision=precision))


@st.cache_data(show_spinner=False, max_entries=16)
def risk_coverage(token: str, _table: PredictionTable) -> pd.DataFrame:
    frame = _table.frame[_table.frame["label_idx"] >= 0]
    return risk_coverage_curve(frame["confidence"].to_numpy(), (frame["pred_idx"] == frame["label_idx"]).to_numpy())
