"""AppTest of the review screen's "Label new images" queue on a real bccd pool: predicting the pool from the page,
label / pick / skip / exclude / undo each storing what the buttons say, the lead's auto-accept panel agreeing with
`core.pools`, and the landing page's pool counts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from core.labelstore import LabelStore
from core.pools import QUEUED_STATUS, load_pool, plan_auto_accept, pool_label_frame
from core.thresholds import ThresholdConfig, auto_accept_thresholds
from core.workspace import load_workspace
from pages._annotate import KIND
from tests.pages.eval_workspaces import POOL, add_pool, load_table, run_page_script


@pytest.fixture(scope="module")
def pool_template(tmp_path_factory, bccd_workspace: Path, bccd_root: Path) -> Path:
    """The page tests' bccd workspace (copied) with an 8-image pool, not yet predicted (copied again per test: each
    writes labels)."""
    root = tmp_path_factory.mktemp("annotate") / "ws"
    shutil.copytree(bccd_workspace, root, symlinks=True, ignore=shutil.ignore_patterns("labels.db*"))
    add_pool(root, bccd_root, n=8)
    return root


@pytest.fixture
def workspace_copy(pool_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("TAXALENS_LABEL_STORE_URL", raising=False)
    root = tmp_path / "ws"
    shutil.copytree(pool_template, root, symlinks=True)
    return root


def _open(root: Path):
    return run_page_script("pages/review.py", root, **{"rv-kind": KIND, "tl_reviewer": "Ann"})


def _click(app, key: str):
    app.button(key=key).click().run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def _events(root: Path) -> list:
    with LabelStore(load_workspace(root).label_store_url) as store:
        return store.events()


def test_predict_then_label_pick_skip_exclude_and_undo(workspace_copy: Path) -> None:
    app = _open(workspace_copy)
    assert [b.key for b in app.button if b.key == "an-predict"], "an unpredicted pool offers the prediction"
    _click(app, "an-predict")
    assert app.button(key="an-accept").label.startswith("Accept ")
    first = app.session_state["an-current"]
    suggested = app.button(key="an-accept").label.removeprefix("Accept ")
    _click(app, "an-accept")
    second = app.session_state["an-current"]
    third_pick = app.button(key="an-pick-3").label.split(": ", 1)[1]
    _click(app, "an-pick-3")
    third = app.session_state["an-current"]
    _click(app, "an-skip")  # no event: just the next image
    fourth = app.session_state["an-current"]
    assert fourth != third
    _click(app, "an-exclude")
    _click(app, "an-undo")  # back to the excluded image, which is queued again
    assert app.session_state["an-current"] == fourth
    events = _events(workspace_copy)
    assert [(e.sample_id, e.action, e.new_label) for e in events[:2]] == [
        (first, "label", suggested), (second, "label", third_pick)]
    assert [(e.sample_id, e.action) for e in events[2:]] == [(fourth, "exclude"), (fourth, "undo")]
    assert {e.reviewer for e in events} == {"ann"} and events[0].checkpoint == "tiny"
    caption = next(c.value for c in app.caption if c.value.startswith("Pool"))
    assert "8 images · 2 labelled · 0 auto-accepted · 0 excluded · 6 to label" in caption


def test_the_auto_accept_panel_matches_core_and_records_one_event(workspace_copy: Path) -> None:
    from models.inference import predict_pool

    workspace = load_workspace(workspace_copy)
    pool = load_pool(workspace, POOL)
    predictions = predict_pool(workspace, "tiny", pool, num_workers=0)
    app = _open(workspace_copy)
    app.slider(key="an-precision").set_value(0.8).run()
    assert not app.exception, [e.value for e in app.exception]
    val = load_table(workspace_copy).for_split("val")
    frame = auto_accept_thresholds(val, ThresholdConfig(precision=0.8, n_boot=200)).frame
    with LabelStore(workspace.label_store_url) as store:
        plan = plan_auto_accept(predictions, frame, pool_label_frame(store, pool), checkpoint="tiny",
                                target_precision=0.8)
    assert any(c.value.startswith(f"{plan.count:,} of 8 queued images") for c in app.caption)
    shown = app.dataframe[0].value
    assert list(shown["class"]) == list(frame["class"])
    assert pd.Series(shown["threshold"]).equals(frame["threshold"])
    if plan.count:  # the tiny random model rarely reaches a threshold; when it does, one event accepts them all
        _click(app, "an-auto")
        events = _events(workspace_copy)
        assert [e.action for e in events] == ["auto_accept"]
        _click(app, "an-undo-bulk-go")
        with LabelStore(workspace.label_store_url) as store:
            assert (pool_label_frame(store, pool)["status"] == QUEUED_STATUS).all()
    else:
        assert app.button(key="an-auto").disabled


def test_the_landing_page_counts_each_pool(workspace_copy: Path, open_page) -> None:
    workspace = load_workspace(workspace_copy)
    pool = load_pool(workspace, POOL)
    with LabelStore(workspace.label_store_url) as store:
        store.record(pool.samples["sample_id"].iloc[0], "label", label="Monocyte", reviewer="ann")
        store.record(pool.samples["sample_id"].iloc[1], "exclude", reviewer="ann")
    app = open_page(workspace_copy, "pages/home.py")
    table = next(d.value for d in app.dataframe if "pool" in d.value.columns)
    row = table.iloc[0].to_dict()
    assert row["pool"] == POOL
    assert (row["images"], row["labelled"], row["auto-accepted"], row["excluded"], row["remaining"]) == (8, 1, 0, 1, 6)
