"""Cached calibration, threshold, prediction-set and novelty results for the Calibration, review and
misclassification pages (keyed by a table's content token; the table itself passes unhashed)."""

from __future__ import annotations

from dataclasses import asdict

import pandas as pd
import streamlit as st

from core.calibration import CalibrationReport
from core.conformal import ConformalConfig, CoverageReport, calibrate_on_table, set_frame
from core.novelty import NoveltyScores, table_novelty
from core.predictions import PredictionTable
from core.result_cache import PAGE_INTERVALS, calibration_result, coverage_result, thresholds_result
from core.thresholds import AutoAcceptThresholds, ThresholdConfig, risk_coverage_curve
from pages._cached import PageContext, table_token
from pages._evaluation import results_dir
from pages._state import KEY_CONFORMAL

CALIBRATION_INTERVALS = PAGE_INTERVALS  # as the other evaluation pages: 1,000 stratified draws, 95%, Bayesian
COVERAGE_REPEATS = 10  # calibration/evaluation splits of the prediction-set coverage


@st.cache_resource(show_spinner="Measuring calibration…", max_entries=16)
def report(token: str, n_bins: int, strategy: str, temperature: float, _table: PredictionTable) -> CalibrationReport:
    """`core.calibration.calibration_report` of the table scaled by `temperature` (1: raw), cached in memory and on
    disk beside the predictions (`core.result_cache.calibration_result`)."""
    return calibration_result(results_dir(), token, _table, n_bins=n_bins, strategy=strategy,
                              temperature=temperature, config=CALIBRATION_INTERVALS)


@st.cache_resource(show_spinner="Choosing thresholds…", max_entries=16)
def thresholds(token: str, precision: float, temperature: float, _table: PredictionTable) -> AutoAcceptThresholds:
    """Auto-accept thresholds, cached in memory and on disk (shared with `python -m core thresholds`)."""
    return thresholds_result(results_dir(), token, _table, config=ThresholdConfig(precision=precision),
                             temperature=temperature)


@st.cache_data(show_spinner=False, max_entries=16)
def risk_coverage(token: str, _table: PredictionTable) -> pd.DataFrame:
    frame = _table.frame[_table.frame["label_idx"] >= 0]
    return risk_coverage_curve(frame["confidence"].to_numpy(), (frame["pred_idx"] == frame["label_idx"]).to_numpy())


def conformal_config() -> ConformalConfig:
    """The prediction-set settings chosen on the Calibration page (defaults until then)."""
    try:
        return ConformalConfig(**(st.session_state.get(KEY_CONFORMAL) or {}))
    except (TypeError, ValueError):
        return ConformalConfig()


def set_conformal_config(config: ConformalConfig) -> None:
    st.session_state[KEY_CONFORMAL] = asdict(config)


@st.cache_resource(show_spinner="Calibrating prediction sets…", max_entries=16)
def _sets(token: str, calibration_token: str, config: ConformalConfig, _table: PredictionTable,
          _calibration: PredictionTable) -> pd.DataFrame:
    return set_frame(_table, calibrate_on_table(_calibration, config))


def prediction_sets(ctx: PageContext, table: PredictionTable, token: str) -> pd.DataFrame | None:
    """`core.conformal.set_frame` of `table`, calibrated on the labelled rows of the validation split (under the
    sidebar's confidences); None when that split has no labelled row."""
    calibration = ctx.table(split="val")
    if calibration is None or not (calibration.frame["label_idx"] >= 0).any():
        return None
    return _sets(token, table_token(calibration, "val", ctx.checkpoint or ""), conformal_config(), table, calibration)


@st.cache_resource(show_spinner="Measuring coverage…", max_entries=16)
def coverage(token: str, config: ConformalConfig, _table: PredictionTable) -> CoverageReport:
    return coverage_result(results_dir(), token, _table, config=config, repeats=COVERAGE_REPEATS)


@st.cache_resource(show_spinner="Scoring novelty…", max_entries=8)
def _novelty(token: str, reference_token: str, _table: PredictionTable, _reference: PredictionTable) -> NoveltyScores:
    return table_novelty(_table, _reference)


def novelty_scores(ctx: PageContext, table: PredictionTable) -> NoveltyScores:
    """Novelty scores of `table`'s rows against the training split (`core.novelty.table_novelty`)."""
    reference = ctx.table(split="train")
    if reference is None or len(reference) == 0:
        reference = table
    return _novelty(table_token(table, ctx.split, ctx.checkpoint or ""),
                    table_token(reference, "train", ctx.checkpoint or ""), table, reference)


@st.cache_data(show_spinner=False, max_entries=8)
def predictions_csv_bytes(token: str, _table: PredictionTable) -> bytes:
    """`core.export.predictions_csv` of `_table` (raw or calibrated, as the sidebar says)."""
    from core.export import predictions_csv

    return predictions_csv(_table)
