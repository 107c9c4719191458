"""Tests of core.figures: the figures carry the numbers they are built from."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from core import figures as F
from core import metrics as M

NAMES = ["ant", "bee", "cricket"]
COUNTS = np.array([[5, 2, 0], [1, 7, 0], [0, 3, 0]])


def _cells(fig: go.Figure) -> dict[tuple[int, int], tuple[float, float, int]]:
    trace = fig.data[0]
    return {
        (int(t), int(p)): (float(x), float(y), int(c))
        for (t, p, c), x, y in zip(trace.customdata, trace.x, trace.y, strict=True)
    }


def test_confusion_figure_is_scatter_one_point_per_nonzero_cell():
    fig = F.build_confusion_figure(COUNTS, NAMES)
    trace = fig.data[0]
    assert isinstance(trace, go.Scatter) and trace.marker.symbol == "square"
    assert not any(isinstance(t, go.Heatmap) for t in fig.data)
    cells = _cells(fig)
    assert set(cells) == {(0, 0), (0, 1), (1, 0), (1, 1), (2, 1)}
    assert cells[(2, 1)] == (1.0, 2.0, 3)  # x = predicted position, y = true position, count
    np.testing.assert_allclose(10 ** np.asarray(trace.marker.color), [5, 2, 1, 7, 3])  # log-scaled counts
    assert list(trace.marker.colorbar.ticktext) == ["1", "10"]
    assert "3 of 3 samples (100.0%)" in trace.hovertext[-1]
    assert fig.layout.yaxis.range == (2.5, -0.5)  # first class at the top


def test_confusion_figure_hide_diagonal_normalise_and_order():
    order = np.array([2, 0, 1])  # cricket, ant, bee
    fig = F.build_confusion_figure(COUNTS, NAMES, normalise="true", order=order, hide_diagonal=True)
    cells = _cells(fig)
    assert set(cells) == {(0, 1), (1, 0), (2, 1)}
    assert cells[(0, 1)][:2] == (2.0, 1.0)  # bee drawn in column 2, ant in row 1
    np.testing.assert_allclose(fig.data[0].marker.color, [2 / 7, 1 / 8, 1.0])
    assert list(fig.layout.xaxis.ticktext) == ["cricket", "ant", "bee"]
    with pytest.raises(ValueError, match="permutation"):
        F.build_confusion_figure(COUNTS, NAMES, order=[0, 0, 1])
    with pytest.raises(ValueError, match=r"expected \(3, 3\)"):
        F.build_confusion_figure(COUNTS[:2], NAMES)


def test_confusion_figure_highlight_and_selected_shapes():
    fig = F.build_confusion_figure(COUNTS, NAMES, highlight=["bee"], selected=(2, 1))
    shapes = fig.layout.shapes
    assert len(shapes) == 3
    assert (shapes[-1].x0, shapes[-1].y0) == (0.5, 1.5)


def test_confusion_figure_scales_to_300_classes_with_webgl():
    rng = np.random.default_rng(0)
    k = 300
    counts = np.diag(rng.integers(50, 300, k))
    counts[rng.integers(0, k, 6000), rng.integers(0, k, 6000)] += 1
    fig = F.build_confusion_figure(counts, [f"c{i}" for i in range(k)])
    trace = fig.data[0]
    assert isinstance(trace, go.Scattergl)
    assert len(trace.x) == int((counts > 0).sum())
    assert fig.layout.height <= 1000 and trace.marker.size >= 2
    assert len(fig.data) == 1  # no per-cell text labels at this size


def test_empty_confusion_figure():
    fig = F.build_confusion_figure(np.zeros((3, 3), dtype=int), NAMES)
    assert len(fig.data[0].x) == 0


def test_class_distribution_figure_bars_per_split_and_log():
    dist = pd.DataFrame({"train": [2, 9, 0], "val": [1, 3, 0], "total": [3, 12, 0]}, index=["a", "b", "c"])
    fig = F.build_class_distribution_figure(dist, log_y=True)
    assert [t.name for t in fig.data] == ["train", "val"]
    assert list(fig.data[0].x) == ["b", "a", "c"] and list(fig.data[0].y) == [9, 2, 0]
    assert fig.layout.yaxis.type == "log"
    assert F.build_class_distribution_figure(dist).layout.yaxis.type == "linear"


def test_bottom_f1_and_per_class_figures():
    per_class = pd.DataFrame(
        {"class": ["a", "b", "c"], "f1": [0.9, 0.2, 0.5], "precision": [1, 0.3, 0.5], "recall": [0.8, 0.1, 0.5],
         "support": [10, 4, 0]}
    )
    bottom = M.bottom_classes(per_class, n=2)
    fig = F.build_bottom_f1_figure(bottom)
    track, bars = fig.data
    assert list(bars.y) == ["a", "b"]  # worst (b) drawn on top = last; c has no samples
    assert list(bars.x) == [0.9, 0.2] and list(track.x) == [1.0, 1.0]  # full-width track: clickable at F1 = 0
    assert track.customdata[-1][0] == "b" and bars.customdata[-1][0] == "b"
    fig = F.build_per_class_f1_figure(per_class)
    assert list(fig.data[0].x) == ["a", "b"]  # zero-support class c left out


def test_top_predictions_figure_marks_true_class():
    top = pd.DataFrame({"class": ["x", "y"], "probability": [0.7, 0.2]})
    fig = F.build_top_predictions_figure(top, true_label="y")
    assert list(fig.data[0].y) == ["y", "x"] and fig.data[0].marker.color[0] == "#54A24B"


def test_bottom_f1_figure_draws_the_interval_as_error_bars():
    bottom = pd.DataFrame({"class": ["b", "a"], "f1": [0.0, 0.5], "f1_low": [0.0, 0.3], "f1_high": [0.7, 0.6],
                           "precision": [0.0, 0.5], "recall": [0.0, 0.5], "support": [3, 40]})
    _, bars = F.build_bottom_f1_figure(bottom).data
    assert list(bars.y) == ["a", "b"]
    assert list(bars.error_x.array) == pytest.approx([0.1, 0.7]) and list(bars.error_x.arrayminus) == pytest.approx(
        [0.2, 0.0])
    assert "CI 0.00–0.70" in bars.hovertext[1]


def test_a_1000_class_matrix_draws_its_most_confused_submatrix_with_model_indices():
    from core.confusion import top_confused_classes

    rng = np.random.default_rng(1)
    k = 1000
    counts = np.diag(rng.integers(20, 400, k))
    hot = np.array([7, 123, 500, 998])  # classes confused with each other far more than the rest
    for t in hot:
        counts[t, hot[hot != t]] += 40
    counts[rng.integers(0, k, 3000), rng.integers(0, k, 3000)] += 1
    off = counts - np.diag(np.diag(counts))
    top = top_confused_classes(counts, n=50)
    assert len(top) == 50 and set(hot) <= set(top.tolist()) and np.all(np.diff(top) > 0)
    errors = off.sum(axis=0) + off.sum(axis=1)
    assert errors[top].min() >= np.delete(errors, top).max()  # no class left out has more errors
    assert top_confused_classes(counts, n=k + 5).tolist() == list(range(k))

    fig = F.build_confusion_figure(counts, [f"c{i}" for i in range(k)], normalise="true", classes=top,
                                   selected=(7, 123), highlight=["c500", "c1"])
    trace = fig.data[0]
    cells = np.asarray(trace.customdata)
    inside = np.isin(np.arange(k), top)
    assert len(cells) == int(((counts > 0) & inside[:, None] & inside[None, :]).sum())
    assert set(cells[:, 0]) <= set(top.tolist()) and cells[:, 2].tolist() == counts[cells[:, 0], cells[:, 1]].tolist()
    assert max(trace.x) == 49 and max(trace.y) == 49  # drawn on a 50 x 50 grid
    share = trace.marker.color[(cells[:, 0] == 7) & (cells[:, 1] == 123)][0]
    assert share == pytest.approx(counts[7, 123] / counts[7].sum())  # rates over the whole row, not the submatrix
    assert len(fig.layout.shapes) == 3  # c500's row and column, the selected cell; c1 is not drawn
