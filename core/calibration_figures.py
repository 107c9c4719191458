"""Plotly figures of calibration: the reliability diagram (before/after temperature scaling) and the risk-coverage
curve; pure functions of `core.calibration` and `core.thresholds` results."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

_BEFORE, _AFTER = "#9aa5b1", "#2e8b57"


def build_reliability_figure(bins: pd.DataFrame, *, after: pd.DataFrame | None = None, title: str = "") -> go.Figure:
    """Accuracy per confidence bin against the diagonal; `bins` (and `after`) are `reliability_table` frames.

    Points sit at each bin's mean confidence (so equal-mass bins read right too); marker area follows the bin's
    count; the hover says the bin's range, count and gap."""
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#888", dash="dot"),
                                name="perfectly calibrated", hoverinfo="skip"))
    for frame, name, colour in ((bins, "uncalibrated", _BEFORE), (after, "temperature-scaled", _AFTER)):
        if frame is None or frame.empty:
            continue
        share = frame["count"] / frame["count"].sum()
        figure.add_trace(go.Scatter(
            x=frame["mean_confidence"], y=frame["accuracy"], mode="lines+markers", name=name,
            line=dict(color=colour), marker=dict(size=(6 + 30 * share ** 0.5).tolist(), color=colour),
            customdata=frame[["lower", "upper", "count", "gap"]].to_numpy(),
            hovertemplate="confidence %{customdata[0]:.3f}-%{customdata[1]:.3f}<br>mean confidence %{x:.3f}<br>"
                          "accuracy %{y:.3f}<br>%{customdata[2]} images<br>gap %{customdata[3]:+.3f}<extra></extra>"))
    figure.update_layout(title=title or "Reliability diagram", xaxis_title="confidence (mean per bin)",
                         yaxis_title="accuracy", xaxis=dict(range=[0, 1.02]), yaxis=dict(range=[0, 1.02]),
                         height=420, margin=dict(l=40, r=20, t=50, b=40), legend=dict(orientation="h", y=-0.2))
    return figure


def build_risk_coverage_figure(curve: pd.DataFrame) -> go.Figure:
    """Risk (error rate of the accepted images) against coverage (share accepted), from `risk_coverage_curve`."""
    figure = go.Figure(go.Scatter(x=curve["coverage"], y=curve["risk"], mode="lines", line=dict(color="#2f75b5"),
                                  customdata=curve["threshold"],
                                  hovertemplate="threshold %{customdata:.3f}<br>coverage %{x:.1%}<br>"
                                                "risk %{y:.3f}<extra></extra>"))
    figure.update_layout(title="Risk-coverage curve", xaxis_title="coverage (share accepted)",
                         yaxis_title="risk (error rate of accepted)", height=360, margin=dict(l=40, r=20, t=50, b=40))
    return figure
