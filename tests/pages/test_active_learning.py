"""The Label next page on the small drawn workspace: it offers the simulation, computes it in the background with
progress, draws one curve per order with the labels-to-reach table, keeps the result on disk (a new session shows
it at once), and says that the workspace has no pool."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from tests.pages.eval_workspaces import plain

PAGE = "pages/active_learning.py"
CHEAP = {"al-orders": ["margin", "diversity"], "al-rounds": 2, "al-seeds": 1, "al-batch": 10}


@pytest.fixture(scope="module")
def workspace(drawn_workspace: Path, tmp_path_factory) -> Path:
    """A copy of the drawn workspace: the results this test stores stay out of the shared one's cache."""
    copy = tmp_path_factory.mktemp("label-next") / "demo"
    shutil.copytree(drawn_workspace, copy)
    return copy


def _chart_traces(app) -> list[str]:
    return [trace["name"] for chart in app.get("plotly_chart") for trace in json.loads(chart.proto.spec)["data"]]


def test_label_next_computes_the_curves_in_the_background_and_keeps_them(open_page, workspace: Path) -> None:
    app = open_page(workspace, PAGE, state=CHEAP)
    assert not _chart_traces(app)
    assert any("9 probe fits" in plain(i.value) for i in app.info), [i.value for i in app.info]  # 3 orders x 3 rounds
    assert any("no unlabelled pool" in plain(i.value) for i in app.info)
    app.button(key="al-start").click().run()
    for _ in range(240):  # the job runs in a thread of this process; each run polls it
        if _chart_traces(app) or app.error:
            break
        time.sleep(0.5)
        app.run()
    assert not app.exception and not app.error, [e.value for e in (*app.exception, *app.error)]
    assert _chart_traces(app) == ["Uncertain (margin)", "Diverse (k-center)", "Random"]  # random added
    summary = app.dataframe[0].value
    assert sorted(summary["order"]) == ["Diverse (k-center)", "Random", "Uncertain (margin)"]
    assert (summary.loc[summary["order"] == "Random", "share_of_random"] <= 1.0).all()
    stored = list((workspace / ".taxalens" / "predictions" / "results").glob("active-learning-*.parquet"))
    assert len(stored) == 1

    again = open_page(workspace, PAGE, state=CHEAP)  # a new session: read from disk, nothing to click
    assert _chart_traces(again) == ["Uncertain (margin)", "Diverse (k-center)", "Random"]
    assert not [b for b in again.button if b.key == "al-start"]


def test_label_next_previews_a_pool_in_the_chosen_order(open_page, drawn_workspace: Path, bccd_root: Path,
                                                        tmp_path: Path) -> None:
    """With a predicted `[[pools]]` entry the page lists the pool's images most uncertain (margin) first."""
    import numpy as np

    from core.labelstore import LabelStore
    from core.pools import load_pool
    from core.workspace import load_workspace
    from models.inference import predict_pool
    from tests.pages.eval_workspaces import CHECKPOINT, add_pool

    root = tmp_path / "demo"
    shutil.copytree(drawn_workspace, root)
    add_pool(root, bccd_root, n=8)
    workspace = load_workspace(root)
    predicted = predict_pool(workspace, CHECKPOINT, load_pool(workspace, "spring"))
    top2 = np.sort(predicted.pred_probs, axis=1)[:, -2:]
    order = np.argsort(top2[:, 1] - top2[:, 0], kind="stable")
    # the most uncertain image is labelled already: the preview ranks only the seven still to label
    with LabelStore(workspace.label_store_url) as store:
        store.record(predicted.sample_ids[order[0]], "label", label=predicted.class_names[0], reviewer="ann")
    expected = [str(p) for p in predicted.paths[order[1:]]]

    app = open_page(root, PAGE, state={"al-pool-order": "margin"})
    preview = app.dataframe[-1].value
    assert len(preview) == 7 and preview["rank"].tolist() == list(range(1, 8))
    assert preview["image"].tolist() == expected
