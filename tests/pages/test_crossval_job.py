"""The cross-validation panel (AppTest): on the review page's training split, "Compute" starts a background probe
run (`python -m core crossval`), and once it is done the queue ranks the training rows from its table; the retrain
page shows the same panel and keeps cross-validation runs out of its training-run list."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.train_runs import list_runs
from core.workspace import load_workspace
from tests.pages.eval_workspaces import build_drawn_workspace, run_page_script


@pytest.fixture
def drawn_ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("TAXALENS_LABEL_STORE_URL", raising=False)
    return build_drawn_workspace(tmp_path / "ws")


def _wait(root: Path) -> None:
    workspace = load_workspace(root)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and list_runs(workspace, kind="crossval")[0].active:
        time.sleep(1)
    run = list_runs(workspace, kind="crossval")[0]
    assert run.state == "done", (run.state, run.status, (run.run_dir / "log.txt").read_text()[-2000:])


def test_review_page_starts_crossval_and_then_ranks_the_training_split(drawn_ws: Path) -> None:
    app = run_page_script("pages/review.py", drawn_ws, tl_split="train")
    assert any("in-sample" in c.value for c in app.caption), "no training row can be ranked yet"
    assert any("queue is empty" in s.value for s in app.success)
    assert any("none yet" in e.label for e in app.expander)
    app.radio(key="cv-mode").set_value("probe")
    app.number_input(key="cv-folds").set_value(3)
    app.button(key="cv-start").click().run()
    assert not app.exception, [e.value for e in app.exception]
    run = list_runs(load_workspace(drawn_ws), kind="crossval")[0]
    assert run.command["checkpoint"] == "tiny" and run.command["mode"] == "probe" and run.command["folds"] == 3
    _wait(drawn_ws)

    app = run_page_script("pages/review.py", drawn_ws, tl_split="train")  # a fresh session reads the files
    assert not any("in-sample" in c.value for c in app.caption)
    assert any("probe, 3 folds" in e.label for e in app.expander)
    train_ids = set(load_workspace(drawn_ws).load_dataset().split("train")["sample_id"])
    assert app.session_state["rv-current"] in train_ids, "the queue now holds training samples"


def test_retrain_page_shows_the_panel_but_lists_only_training_runs(drawn_ws: Path) -> None:
    from core.train_runs import launch_run

    run = launch_run(load_workspace(drawn_ws), "crossval", "crossval-probe-tiny",
                     ["--workspace", str(drawn_ws), "--checkpoint", "tiny"], options={"folds": 2, "threads": 1},
                     record={"checkpoint": "tiny", "mode": "probe", "folds": 2})
    assert run.kind == "crossval"
    _wait(drawn_ws)
    app = run_page_script("pages/retrain.py", drawn_ws)
    assert any("probe, 2 folds" in e.label for e in app.expander)
    assert any("No training runs" in i.value for i in app.info), "a crossval run is not a training run"
