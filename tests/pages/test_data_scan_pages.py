"""The Embedding map and Data quality pages on bccd and the drawn demo (AppTest): they render, the map is WebGL
with one point per image of the split, the leak scan and quality table show, and the selection queue works."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from core.images import load_image_rgb
from core.quality import QUALITY_CHECKS
from core.ranking import QueueSpec, build_queue, rank_label_issues
from core.workspace import load_workspace
from pages._map_events import HOVER_ROW_KEY, selection_rows
from tests.pages.eval_workspaces import load_table


def typed_array(value) -> np.ndarray:
    """A plotly JSON array: a list, or plotly's typed-array form {"dtype", "bdata" (base64)[, "shape"]}."""
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).ravel()
    return np.asarray(value).ravel()


def test_map_page_draws_every_point_of_the_split(open_page, bccd_workspace):
    workspace = bccd_workspace  # the drawn demo's map is drawn by the browser test (tests/e2e/test_map_lasso.py)
    # as if the browser had asked for the thumbnail of the val table's row 4 (the hover component's trigger)
    app = open_page(workspace, "pages/map.py", state={"map-method": "pca", HOVER_ROW_KEY: (1, 4)})
    charts = [c for c in app.get("plotly_chart")]
    assert charts, "no map drawn"
    traces = json.loads(charts[0].proto.spec)["data"]
    assert {trace["type"] for trace in traces} == {"scattergl"}
    val = load_table(workspace).for_split("val")
    assert sum(len(typed_array(trace["x"])) for trace in traces) == len(val)
    rows = sorted(int(r) for trace in traces for r in typed_array(trace["customdata"]))
    assert rows == list(range(len(val)))
    assert not app.error
    # The hover preview got row 4's sample and its thumbnail (a JPEG of that very image, not another one).
    components = [e for e in app.get("bidi_component") if e.proto.component_name == "taxalens_map_hover"]
    assert len(components) == 1
    data = json.loads(components[0].proto.json)
    sample_id = val.frame["sample_id"].iloc[4]
    assert (data["row"], data["sample_id"]) == (4, sample_id)
    assert data["chart"] == ".st-key-map-chart .js-plotly-plot"
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(data["src"].removeprefix("data:image/jpeg;base64,")))),
                       dtype=np.float32)
    samples = load_workspace(workspace).load_dataset().samples.set_index("sample_id")["path"]

    def thumbnail(sid: str) -> np.ndarray:
        image = load_image_rgb(samples[sid])
        image.thumbnail((160, 160))
        return np.asarray(image, dtype=np.float32)

    assert shown.shape == thumbnail(sample_id).shape
    assert np.abs(shown - thumbnail(sample_id)).mean() < 6
    other = val.frame["sample_id"].iloc[5]
    if thumbnail(other).shape == shown.shape:
        assert np.abs(shown - thumbnail(other)).mean() > np.abs(shown - thumbnail(sample_id)).mean()


def test_a_selection_counts_only_on_the_table_it_was_made_on():
    state = {"scope": "val|tiny|abc", "rows": [3, 1.0, "x", 7], "at": 1}
    assert selection_rows(state, "val|tiny|abc") == [3, 1, 7]
    assert selection_rows(state, "train|tiny|abc") == []  # rows of another split mean other samples
    assert selection_rows(None, "val|tiny|abc") == [] and selection_rows({"scope": "s"}, "s") == []


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


def _leaky_workspace(tmp_path, bccd_root):
    """A bccd workspace whose first five val rows carry a training row's embedding (a planted leak): (root, its
    predictions frame, the leaked val rows' positions)."""
    from core.predictions import build_prediction_table, save_predictions
    from models.inference import predictions_path
    from tests.pages.eval_workspaces import CHECKPOINT, build_bccd_workspace

    root = build_bccd_workspace(tmp_path / "bccd", bccd_root, taxonomy=False)
    table = load_table(root)
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(len(table), 16)).astype(np.float32)
    splits = table.frame["split"].to_numpy()
    val_rows, train_rows = np.flatnonzero(splits == "val")[:5], np.flatnonzero(splits == "train")[:5]
    emb[val_rows] = emb[train_rows]
    frame = table.frame
    leaky = build_prediction_table(frame["sample_id"].tolist(), table.pred_probs, emb, labels=frame["label"].tolist(),
                                   splits=frame["split"].tolist(), specimen_ids=frame["specimen_id"].tolist(),
                                   class_names=table.class_names, meta=table.meta)
    workspace = load_workspace(root)
    save_predictions(leaky, predictions_path(workspace, CHECKPOINT, dataset=workspace.load_dataset()))
    return root, frame, val_rows


def test_overview_reports_deduplicated_metrics_when_val_leaks(tmp_path, bccd_root, open_page, monkeypatch):
    """Five val rows carry a training row's embedding (a planted leak): the Overview warns and scores the val split
    without them beside the reported numbers."""
    from sklearn.metrics import accuracy_score

    root, frame, val_rows = _leaky_workspace(tmp_path, bccd_root)
    app = open_page(root, "pages/overview.py")
    val = load_table(root).for_split("val")
    assert any(f"5 of {len(val):,} images in this split" in w.value for w in app.warning)
    dedup = next(d.value for d in app.dataframe if "deduplicated" in d.value.columns).set_index("label")
    clean = val.frame[~val.frame["sample_id"].isin(set(frame["sample_id"].iloc[val_rows]))]
    clean = clean[clean["label_idx"] >= 0]
    assert dedup.loc["Accuracy", "deduplicated"] == pytest.approx(accuracy_score(clean["label_idx"],
                                                                                 clean["pred_idx"]))
    reported = val.frame[val.frame["label_idx"] >= 0]
    assert dedup.loc["Accuracy", "reported"] == pytest.approx(accuracy_score(reported["label_idx"],
                                                                             reported["pred_idx"]))

    # The pair search is kept on disk: a server restart (caches dropped) shows the same leaks without searching again.
    import streamlit as st

    from core import leakage

    saved = sorted(p.name for p in (root / ".taxalens" / "predictions" / "results").glob("near-duplicates-*"))
    assert len(saved) == 3  # the pairs, and the groups and leaks that follow from them
    assert {"groups.parquet", "leaks.parquet"} <= {name.split("-")[-1] for name in saved}
    st.cache_resource.clear()
    st.cache_data.clear()

    def no_search(*args, **kwargs):
        raise AssertionError("the near-duplicate search ran again after a restart")

    monkeypatch.setattr(leakage, "find_near_duplicates", no_search)
    monkeypatch.setattr(leakage, "find_split_leaks", no_search)
    again = open_page(root, "pages/overview.py")
    assert any(f"5 of {len(val):,} images in this split" in w.value for w in again.warning)


def test_the_leak_check_warmed_by_the_command_line_serves_the_first_visit(tmp_path, bccd_root, open_page,
                                                                          monkeypatch):
    """What `predict --workspace` computes after predicting (`warm_near_duplicates`: the pairs and the de-duplicated
    headline metrics) is keyed as the Overview asks for it: its very first visit neither searches for pairs nor
    bootstraps the de-duplicated set, and shows the planted leak."""
    from core import leakage, metrics
    from core.result_cache import PAGE_INTERVALS, RESULTS_DIR, warm_interval_results, warm_near_duplicates
    from tests.pages.eval_workspaces import CHECKPOINT

    root, _, _ = _leaky_workspace(tmp_path, bccd_root)
    workspace = load_workspace(root)
    table = load_table(root)
    folder = workspace.cache_dir / "predictions" / RESULTS_DIR
    warm_interval_results(table, folder, config=PAGE_INTERVALS, splits=("val",))
    # the pairs, then the de-duplicated metrics of each split with a leak: val and all (test has no leaked row here)
    assert warm_near_duplicates(table, folder, checkpoint=CHECKPOINT, cache_dir=workspace.cache_dir) == 3
    assert warm_near_duplicates(table, folder, checkpoint=CHECKPOINT, cache_dir=workspace.cache_dir) == 0

    def refuse(*args, **kwargs):
        raise AssertionError("computed on the first visit although the command line stored it")

    monkeypatch.setattr(leakage, "find_near_duplicates", refuse)
    monkeypatch.setattr(leakage, "find_split_leaks", refuse)
    monkeypatch.setattr(metrics, "compute_headline_metrics", refuse)
    monkeypatch.setattr(metrics, "per_class_table", refuse)
    app = open_page(root, "pages/overview.py")
    val = table.for_split("val")
    assert any(f"5 of {len(val):,} images in this split" in w.value for w in app.warning)
    assert any("deduplicated" in d.value.columns for d in app.dataframe)
