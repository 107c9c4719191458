"""Plotly figure builders for the evaluation pages: pure functions from metric tables and arrays to `go.Figure`.

The confusion matrix is drawn as a scatter of square markers (one point per non-empty cell, `customdata` =
(true index, predicted index, count)) rather than a `go.Heatmap`, because Streamlit's plotly selection reports
clicked scatter points but returns nothing for heatmap cells.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core.confusion import Normalise, normalise_confusion

logger = logging.getLogger(__name__)

# Blues that starts at a visible tint: only non-empty cells are drawn, so even a single error must show.
CONFUSION_COLORSCALE = [[0.0, "#d4e4f7"], [0.35, "#7fb0dc"], [0.7, "#2f75b5"], [1.0, "#08306b"]]
_WEBGL_MIN_POINTS = 4000  # above this many cells the matrix uses WebGL (SVG slows down with one element per point)
_SPLIT_COLORS = {"train": "#4C78A8", "val": "#F58518", "test": "#54A24B"}


def build_class_distribution_figure(
    distribution: pd.DataFrame,
    *,
    log_y: bool = False,
    sort_by_total: bool = True,
) -> go.Figure:
    """Grouped bars of samples per class, one bar group per split.

    `distribution`: the frame of `core.metrics.class_distribution` (index = class, one column per split, `total`).
    `log_y` draws the count axis on a log scale (zero counts are then not drawn).
    """
    frame = distribution.sort_values("total", ascending=False, kind="stable") if sort_by_total else distribution
    splits = [c for c in frame.columns if c != "total"]
    fig = go.Figure()
    for split in splits:
        fig.add_trace(
            go.Bar(
                x=frame.index.astype(str).tolist(),
                y=frame[split].to_numpy(),
                name=str(split) or "(no split)",
                marker_color=_SPLIT_COLORS.get(str(split)),
                hovertemplate="%{x}<br>" + f"{split}: " + "%{y}<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="group",
        xaxis_title="class",
        yaxis_title="samples" + (" (log scale)" if log_y else ""),
        yaxis_type="log" if log_y else "linear",
        legend_title_text="split",
        margin=dict(l=60, r=20, t=30, b=80),
        height=420,
    )
    if len(frame) > 40:
        fig.update_xaxes(showticklabels=False, title="class (hover for names)")
    return fig


def confusion_figure_height(n_classes: int) -> int:
    """Figure height in px: about 30 px per class for small matrices, at most 1000 px (zoom in for more)."""
    return int(min(1000, max(360, 30 * n_classes + 160)))


def build_confusion_figure(
    counts: np.ndarray,
    class_names: Sequence[str],
    *,
    normalise: Normalise = "none",
    order: Sequence[int] | np.ndarray | None = None,
    hide_diagonal: bool = False,
    highlight: Sequence[str] = (),
    selected: tuple[int, int] | None = None,
    classes: Sequence[int] | np.ndarray | None = None,
) -> go.Figure:
    """The confusion matrix as square scatter markers, one per cell with at least one sample.

    `counts`: `(K, K)` int array, rows = true class, columns = predicted class (`core.confusion.confusion_counts`).
    Colour is the count or the rate (`normalise` "true": share of the true class, "pred": share of the prediction).
    `order`: permutation of class indices (`core.confusion.order_classes`), drawn top-to-bottom and left-to-right.
    `hide_diagonal` drops correct predictions so the colour scale spans the errors. `highlight` outlines the row and
    column of the named classes (class search); `selected` (true_idx, pred_idx) outlines one cell.
    `classes`: draw only these class indices (a submatrix, e.g. `core.confusion.top_confused_classes` of a large
    matrix); rates and hover totals still count every class. Each point's `customdata` is `[true_idx, pred_idx,
    count]` in model class indices, whatever the order or subset.
    """
    counts = np.asarray(counts)
    k = len(class_names)
    if counts.shape != (k, k):
        raise ValueError(f"counts has shape {counts.shape} but there are {k} class names; expected ({k}, {k})")
    order = np.arange(k) if order is None else np.asarray(order, dtype=np.int64)
    if sorted(order.tolist()) != list(range(k)):
        raise ValueError(f"order must be a permutation of range({k}), got {order.tolist()[:10]}...")
    shown = np.ones(k, dtype=bool)
    if classes is not None:
        shown = np.zeros(k, dtype=bool)
        shown[np.asarray(classes, dtype=np.int64)] = True
    order = order[shown[order]]  # the drawing order of the classes shown
    position = np.full(k, -1, dtype=np.int64)
    position[order] = np.arange(len(order))
    values = normalise_confusion(counts, by=normalise)
    keep = (counts > 0) & shown[:, None] & shown[None, :]
    if hide_diagonal:
        np.fill_diagonal(keep, False)
    true_idx, pred_idx = np.nonzero(keep)
    cell_counts = counts[true_idx, pred_idx]
    cell_values = values[true_idx, pred_idx]
    names = np.asarray(class_names, dtype=object)
    support = counts.sum(axis=1)
    k = len(order)  # from here on: the number of classes drawn

    height = confusion_figure_height(k)
    plot_px = height - 160  # the square plotting area left after margins
    marker_px = max(2.0, 0.92 * plot_px / max(k, 1))
    value_text = {"none": "count", "true": "share of true class", "pred": "share of predicted class"}[normalise]
    hover = [
        f"true: {names[t]}<br>predicted: {names[p]}<br>{c} of {support[t]} samples ({c / max(support[t], 1):.1%})"
        for t, p, c in zip(true_idx.tolist(), pred_idx.tolist(), cell_counts.tolist(), strict=True)
    ]
    trace_type = go.Scattergl if len(true_idx) > _WEBGL_MIN_POINTS else go.Scatter
    # Counts are coloured on a log scale (a diagonal of thousands would otherwise wash out the errors); rates
    # linearly. The colour bar is labelled in the original units.
    if normalise == "none":
        colour = np.log10(np.maximum(cell_counts, 1)).astype(np.float64)
        decades = np.arange(0, int(np.ceil(colour.max())) + 1 if len(colour) else 1)
        colorbar = dict(title=dict(text="count (log)", side="right"), thickness=12, len=0.8, tickvals=decades.tolist(),
                        ticktext=[f"{10 ** int(d):,}" for d in decades])
    else:
        colour = cell_values.astype(np.float64)
        colorbar = dict(title=dict(text=value_text, side="right"), thickness=12, len=0.8)
    colour_max = float(colour.max()) if len(colour) else 1.0
    trace = trace_type(
        x=position[pred_idx],
        y=position[true_idx],
        mode="markers",
        marker=dict(
            symbol="square",
            size=marker_px,
            color=colour,
            colorscale=CONFUSION_COLORSCALE,
            cmin=0.0,
            cmax=colour_max if colour_max > 0 else 1.0,
            colorbar=colorbar,
            line=dict(width=0.5 if k <= 60 else 0, color="#9ab"),
        ),
        customdata=np.column_stack([true_idx, pred_idx, cell_counts]).astype(np.int64),
        # After a click plotly fades unselected points; keep the matrix readable and mark the clicked cell instead.
        selected=dict(marker=dict(color="#ff7f0e", opacity=1.0)),
        unselected=dict(marker=dict(opacity=1.0)),
        hovertext=hover,
        hovertemplate="%{hovertext}<extra></extra>",
        name="cells",
        showlegend=False,
    )
    fig = go.Figure(trace)
    if k <= 30 and len(true_idx):
        fig.add_trace(
            go.Scatter(
                x=position[pred_idx],
                y=position[true_idx],
                mode="text",
                text=[str(c) for c in cell_counts] if normalise == "none" else [f"{v:.2f}" for v in cell_values],
                customdata=trace.customdata,  # a click on a cell's number selects the same cell
                textfont=dict(size=10, color=["white" if v > 0.6 * colour_max else "#222" for v in colour]),
                hoverinfo="skip",
                showlegend=False,
                name="labels",
            )
        )
    ticks = list(range(k))
    tick_text = names[order].tolist()
    show_ticks = k <= 80
    axis = dict(
        tickmode="array",
        tickvals=ticks,
        ticktext=tick_text,
        showticklabels=show_ticks,
        showgrid=False,
        zeroline=False,
        range=[-0.5, k - 0.5],
        constrain="domain",
    )
    fig.update_layout(
        height=height,
        margin=dict(l=140 if show_ticks else 40, r=20, t=40, b=120 if show_ticks else 40),
        xaxis=dict(axis, title="predicted class", tickangle=-45, side="bottom"),
        yaxis=dict(axis, title="true class", autorange=None, range=[k - 0.5, -0.5], scaleanchor="x"),
        plot_bgcolor="white",
        clickmode="event+select",
        dragmode="zoom",
        hoverlabel=dict(align="left"),
    )
    shapes = []
    name_index = {name: i for i, name in enumerate(class_names)}
    for name in highlight:
        if name in name_index and position[name_index[name]] >= 0:
            pos = int(position[name_index[name]])
            line = dict(color="#d62728", width=1.5)
            shapes.append(dict(type="rect", x0=-0.5, x1=k - 0.5, y0=pos - 0.5, y1=pos + 0.5, line=line))
            shapes.append(dict(type="rect", x0=pos - 0.5, x1=pos + 0.5, y0=-0.5, y1=k - 0.5, line=line))
    if selected is not None and min(position[selected[0]], position[selected[1]]) >= 0:
        y, x = int(position[selected[0]]), int(position[selected[1]])
        shapes.append(
            dict(type="rect", x0=x - 0.5, x1=x + 0.5, y0=y - 0.5, y1=y + 0.5, line=dict(color="#ff7f0e", width=2.5))
        )
    fig.update_layout(shapes=shapes)
    return fig


def build_bottom_f1_figure(bottom: pd.DataFrame) -> go.Figure:
    """Horizontal bars of the weakest classes' F1, worst at the top, each over a full-width grey track.

    `bottom`: rows of `core.metrics.bottom_classes` (class, f1, precision, recall, support; with `f1_low` and
    `f1_high` the bars carry error bars of the interval). The track (trace 0) and the F1 bar (trace 1) both carry
    `customdata` `[class name]`, so a click anywhere on a row names the class, including classes whose F1 is 0 and
    whose bar has no width.
    """
    frame = bottom.iloc[::-1]  # plotly draws the first bar at the bottom
    names = frame["class"].astype(str).tolist()
    customdata = frame[["class"]].astype(str).to_numpy()
    intervals = {"f1_low", "f1_high"} <= set(frame.columns)
    bounds = (
        [f" (CI {low:.2f}–{high:.2f})" for low, high in zip(frame["f1_low"], frame["f1_high"], strict=True)]
        if intervals else [""] * len(frame)
    )
    hover = [
        f"{c}<br>F1 {f:.3f}{b} · precision {p:.3f} · recall {r:.3f}<br>support {s}"
        for c, f, b, p, r, s in zip(
            frame["class"], frame["f1"], bounds, frame["precision"], frame["recall"], frame["support"], strict=True
        )
    ]
    track = go.Bar(
        x=[1.0] * len(frame), y=names, orientation="h", marker_color="rgba(128, 128, 128, 0.12)",
        customdata=customdata, hovertext=hover, hovertemplate="%{hovertext}<extra></extra>", name="track",
        showlegend=False,
    )
    error_x = None
    if intervals:
        f1 = frame["f1"].to_numpy(dtype=np.float64)
        error_x = dict(type="data", symmetric=False, color="#555555", thickness=1.5, width=4,
                       array=np.nan_to_num(frame["f1_high"].to_numpy(dtype=np.float64) - f1).tolist(),
                       arrayminus=np.nan_to_num(f1 - frame["f1_low"].to_numpy(dtype=np.float64)).tolist())
    bars = go.Bar(
        x=frame["f1"].to_numpy(), y=names, orientation="h", marker_color="#E45756", customdata=customdata,
        text=[f"{f:.2f}" for f in frame["f1"]], textposition="outside", cliponaxis=False, hovertext=hover,
        hovertemplate="%{hovertext}<extra></extra>", name="F1", showlegend=False, error_x=error_x,
    )
    fig = go.Figure([track, bars])
    fig.update_layout(
        barmode="overlay",
        xaxis=dict(title="F1 (bars: 95% interval)" if intervals else "F1", range=[0, 1.05]),
        yaxis=dict(title=None, type="category"),
        height=max(260, 32 * len(frame) + 90),
        margin=dict(l=160, r=30, t=30, b=50),
        clickmode="event+select",
    )
    return fig


def build_per_class_f1_figure(per_class: pd.DataFrame) -> go.Figure:
    """F1 of every class with samples, sorted high to low; bar colour = support (log-scaled hue)."""
    frame = per_class[per_class["support"] > 0].sort_values("f1", ascending=False, kind="stable")
    support = frame["support"].to_numpy()
    fig = go.Figure(
        go.Bar(
            x=frame["class"].astype(str).tolist(),
            y=frame["f1"].to_numpy(),
            marker=dict(
                color=np.log10(np.maximum(support, 1)).tolist(),  # a list: plotly.js reads typed arrays as colours
                colorscale="Viridis",
                colorbar=dict(title="log10 support", thickness=12),
            ),
            customdata=np.column_stack([support]),
            hovertemplate="%{x}<br>F1 %{y:.3f}<br>support %{customdata[0]}<extra></extra>",
        )
    )
    fig.update_layout(
        yaxis=dict(title="F1", range=[0, 1]),
        xaxis=dict(title="class", showticklabels=len(frame) <= 60),
        height=380,
        margin=dict(l=60, r=20, t=30, b=80),
    )
    return fig


def build_top_predictions_figure(top: pd.DataFrame, *, true_label: str | None = None) -> go.Figure:
    """Horizontal bars of a sample's top-k classes (`core.queries.top_predictions`); the true class in green."""
    frame = top.iloc[::-1]
    colours = ["#54A24B" if c == true_label else "#4C78A8" for c in frame["class"]]
    fig = go.Figure(
        go.Bar(
            x=frame["probability"].to_numpy(),
            y=frame["class"].astype(str).tolist(),
            orientation="h",
            marker_color=colours,
            text=[f"{p:.1%}" for p in frame["probability"]],
            textposition="auto",
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        xaxis=dict(title="probability", range=[0, 1]),
        yaxis=dict(type="category"),
        height=60 + 34 * len(frame),
        margin=dict(l=140, r=20, t=20, b=40),
    )
    return fig


def build_f1_delta_figure(per_class: pd.DataFrame, *, name_a: str = "A", name_b: str = "B",
                          max_classes: int = 60) -> go.Figure:
    """Horizontal bars of per-class F1 delta (B - A), worst first; `per_class` from `core.compare.per_class_delta`.

    With more than `max_classes` classes, the `max_classes` largest changes either way are shown.
    """
    frame = per_class
    if len(frame) > max_classes:
        order = frame["delta"].abs().sort_values(ascending=False, kind="stable").index[:max_classes]
        frame = frame.loc[order].sort_values("delta", kind="stable")
    colours = ["#c0392b" if d < 0 else "#2e86c1" if d > 0 else "#999999" for d in frame["delta"]]
    hover = [f"{c}<br>F1 {name_a}: {a:.3f}<br>F1 {name_b}: {b:.3f}<br>support {s}"
             for c, a, b, s in zip(frame["class"], frame["f1_a"], frame["f1_b"], frame["support"], strict=True)]
    figure = go.Figure(go.Bar(x=frame["delta"], y=frame["class"], orientation="h", marker_color=colours,
                              hovertext=hover, hoverinfo="text"))
    figure.update_layout(
        title=f"Per-class F1 change: {name_b} − {name_a}", xaxis_title="F1 delta", yaxis_title=None,
        height=max(300, 22 * len(frame) + 120), margin={"l": 10, "r": 10, "t": 50, "b": 40},
        yaxis={"categoryorder": "array", "categoryarray": list(frame["class"])},
    )
    figure.add_vline(x=0, line_color="#555555", line_width=1)
    return figure
