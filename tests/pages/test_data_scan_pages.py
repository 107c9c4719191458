"""The Embedding map and Data quality pages on bccd and the drawn demo (AppTest): they render, the map is WebGL
with one point per image of the split, the leak scan and quality table show, and the selection queue works."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from core.quality import QUALITY_CHECKS
from core.ranking import QueueSpec, build_queue, rank_label_issues
from tests.pages.eval_workspaces import load_table


def typed_array(value) -> np.ndarray:
    """A plotly JSON array: a list, or plotly's typed-array form {"dtype", "bdata" (base64)[, "shape"]}."""
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).ravel()
    return np.asarray(value).ravel()


@pytest.mark.parametrize("workspace_name", ["bccd_workspace", "drawn_workspace"])
def test_map_page_draws_every_point_of_the_split(open_page, request, workspace_name):
    workspace = request.getfixturevalue(workspace_name)
    app = open_page(workspace, "pages/map.py", state={"map-method": "pca"})
    charts = [c for c in app.get("plotly_chart")]
    assert charts, "no map drawn"
    traces = json.loads(charts[0].proto.spec)["data"]
    assert {trace["type"] for trace in traces} == {"scattergl"}
    val = load_table(workspace).for_split("val")
    assert sum(len(typed_array(trace["x"])) for trace in traces) == len(val)
    rows = sorted(int(r) for trace in traces for r in typed_array(trace["customdata"]))
    assert rows == list(range(len(val)))
    assert not app.error


def test_data_quality_page_shows_leaks_quality_and_outliers(open_page, bccd_workspace):
    app = open_page(bccd_workspace, "pages/data_quality.py")
    assert not app.error
    metrics = {m.label: m.value for m in app.metric}
    assert "Evaluation images leaked from training" in metrics
    frames = [d.value for d in app.dataframe]
    summary = next(f for f in frames if "explain" in f.columns)
    assert summary["title"].tolist() == [c.title for c in QUALITY_CHECKS.values()]
    assert (summary["images"] >= 0).all()
    outliers = next(f for f in frames if "outlier_score" in f.columns)
    assert len(outliers) > 0 and outliers["outlier_score"].dropna().is_monotonic_decreasing


def test_selection_queue_holds_exactly_the_selected_val_samples(drawn_workspace):
    table = load_table(drawn_workspace)
    ranking = rank_label_issues(table, knn_weight=0.0)
    chosen = tuple(table.for_split("val").frame["sample_id"].iloc[[0, 3, 5]])
    queue = build_queue(ranking, QueueSpec(kind="selection", sample_ids=chosen))
    assert sorted(queue["sample_id"]) == sorted(chosen)
    assert build_queue(ranking, QueueSpec(kind="image_quality", sample_ids=())).empty
