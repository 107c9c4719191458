"""The sidebar's switches as names only (label mode, confidence mode): what the frame and every page import to draw
and check them, without importing the machinery behind them (`core.curation`, `core.calibration`)."""

from __future__ import annotations

LABEL_MODES: dict[str, str] = {"given": "as given", "curated": "as curated"}  # mode -> what the switch shows
CONFIDENCE_MODES: dict[str, str] = {"raw": "as the model gives them", "calibrated": "temperature-scaled"}
