"""Plotly figures of the taxonomy views: metrics per rank, the mistake-severity histogram, the folded confusion matrix
with its parent blocks outlined, and the decision rule's before/after; pure functions of `core.taxonomy_metrics`
results."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from core.confusion import Normalise
from core.figures import build_confusion_figure
from core.taxonomy_metrics import FoldedConfusion

_METRIC_COLOURS = {"accuracy": "#2f75b5", "macro_f1": "#e07b39"}
_METRIC_NAMES = {"accuracy": "Accuracy", "macro_f1": "Macro-F1", "balanced_accuracy": "Balanced accuracy"}
_BEFORE, _AFTER = "#9aa5b1", "#2e8b57"


def _error_bars(frame: pd.DataFrame, column: str) -> dict:
    value = frame[column].astype(float)
    return dict(type="data", symmetric=False, array=(frame[f"{column}_high"].astype(float) - value).tolist(),
                arrayminus=(value - frame[f"{column}_low"].astype(float)).tolist())


def build_rank_metrics_figure(frame: pd.DataFrame, *, metric_names: tuple[str, ...] = ("accuracy", "macro_f1")
                              ) -> go.Figure:
    """Lines of each metric per rank, coarsest rank on the left, with bootstrap intervals as error bars.

    `frame`: `core.taxonomy_metrics.rank_metrics_frame` (finest first)."""
    rows = frame.iloc[::-1]
    figure = go.Figure()
    for name in metric_names:
        figure.add_trace(go.Scatter(
            x=rows["rank"].tolist(), y=rows[name].tolist(), mode="lines+markers", name=_METRIC_NAMES.get(name, name),
            line=dict(color=_METRIC_COLOURS.get(name)), error_y=_error_bars(rows, name),
            hovertemplate="%{x}: %{y:.3f}<extra>" + _METRIC_NAMES.get(name, name) + "</extra>",
        ))
    figure.update_layout(title="Where accuracy breaks down (coarsest rank left)", xaxis_title="rank",
                         yaxis=dict(title="score", range=[0, 1.02]), height=360, margin=dict(l=60, r=20, t=50, b=50))
    return figure


def build_severity_figure(histogram: pd.DataFrame, *, after: pd.Series | None = None) -> go.Figure:
    """Bars of errors by the rank of their lowest common ancestor (genus-level slips left, errors across the whole
    tree right). `histogram`: `MistakeSeverity.histogram`; `after`: error counts under the decision rule, drawn
    beside them when given."""
    labels = [("no common rank" if r == "root" else f"same {r}") for r in histogram["lca_rank"]]
    figure = go.Figure(go.Bar(
        x=labels, y=histogram["errors"].tolist(), name="top-1" if after is not None else "errors",
        marker_color=_BEFORE if after is not None else "#c0392b",
        text=[f"{s:.0%}" for s in histogram["share"]], textposition="outside",
        hovertemplate="%{x}: %{y} errors<extra></extra>",
    ))
    if after is not None:
        figure.add_trace(go.Bar(x=labels, y=list(after), name="hierarchy-aware rule", marker_color=_AFTER,
                                hovertemplate="%{x}: %{y} errors<extra>rule</extra>"))
    figure.update_layout(title="Errors by the rank of the lowest common ancestor", barmode="group",
                         xaxis_title="label and prediction share…", yaxis_title="errors", height=360,
                         margin=dict(l=60, r=20, t=50, b=60))
    return figure


def build_folded_confusion_figure(folded: FoldedConfusion, *, normalise: Normalise = "none",
                                  hide_diagonal: bool = False, selected: tuple[int, int] | None = None) -> go.Figure:
    """The confusion matrix at one rank (`core.taxonomy_metrics.fold_confusion`, groups in taxonomic order) with
    each block of groups sharing a parent at the next rank up outlined and named. Points' `customdata` is
    `[true group index, predicted group index, count]` in `folded.group_names`."""
    figure = build_confusion_figure(folded.counts, folded.group_names, normalise=normalise,
                                    hide_diagonal=hide_diagonal, selected=selected)
    figure.update_layout(xaxis_title=f"predicted {folded.rank}", yaxis_title=f"true {folded.rank}")
    shapes = list(figure.layout.shapes or ())
    annotations = []
    for parent, start, stop in folded.blocks:
        shapes.append(dict(type="rect", x0=start - 0.5, x1=stop - 0.5, y0=start - 0.5, y1=stop - 0.5,
                           line=dict(color="#444", width=2), fillcolor="rgba(0,0,0,0)", layer="above"))
        annotations.append(dict(x=stop - 0.5, y=start - 0.5, text=parent, showarrow=False, xanchor="right",
                                yanchor="bottom", font=dict(size=10, color="#444")))
    figure.update_layout(shapes=shapes, annotations=annotations)
    return figure


def build_decision_rule_figure(per_rank: pd.DataFrame) -> go.Figure:
    """Accuracy per rank (coarsest left) under top-1 and under the hierarchy-aware rule, with intervals.
    `per_rank`: `DecisionRuleEffect.per_rank`."""
    rows = per_rank.iloc[::-1]
    figure = go.Figure()
    for tag, name, colour in (("before", "top-1 (argmax)", _BEFORE), ("after", "hierarchy-aware rule", _AFTER)):
        column = f"accuracy_{tag}"
        figure.add_trace(go.Bar(x=rows["rank"].tolist(), y=rows[column].tolist(), name=name, marker_color=colour,
                                error_y=_error_bars(rows, column),
                                hovertemplate="%{x}: %{y:.3f}<extra>" + name + "</extra>"))
    figure.update_layout(title="Accuracy at each rank: top-1 vs the hierarchy-aware rule", barmode="group",
                         yaxis=dict(title="accuracy", range=[0, 1.05]), xaxis_title="rank", height=360,
                         margin=dict(l=60, r=20, t=50, b=50))
    return figure
