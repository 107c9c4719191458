"""Retrain page (AppTest): a run started from the form trains in the background, survives a reload, and its
checkpoint lands in the workspace."""

from __future__ import annotations

import time
from pathlib import Path

from tests.pages.eval_workspaces import build_bccd_workspace, plain

REPO = Path(__file__).resolve().parents[2]
PAGE = str(REPO / "pages" / "retrain.py")


def _open(root: Path):
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(PAGE, default_timeout=120)
    app.session_state["tl_workspace"] = str(root)
    app.session_state["tl_reviewer"] = "tester"  # the local name (the workspace's local role: admin)
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def test_a_run_started_on_the_page_finishes_and_adds_its_checkpoint(tmp_path: Path, bccd_root: Path):
    from core.train_runs import list_runs
    from core.workspace import load_workspace
    from models.checkpoints import read_model_card

    root = build_bccd_workspace(tmp_path / "ws", bccd_root, predictions=False)
    app = _open(root)
    assert any("No training runs" in i.value for i in app.info)
    app.text_input(key="rt-name").set_value("retrained")
    app.number_input(key="rt-epochs").set_value(1)
    app.number_input(key="rt-img").set_value(32)
    app.number_input(key="rt-batch").set_value(32)
    app.number_input(key="rt-threads").set_value(1)
    app.button[0].click().run()  # the form's submit button
    assert not app.exception, [e.value for e in app.exception]
    assert any("Started run **retrained**" in s.value for s in app.success)

    workspace = load_workspace(root)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and list_runs(workspace)[0].active:
        time.sleep(1)
    run = list_runs(workspace)[0]
    assert run.state == "done", (run.state, run.status, (run.run_dir / "log.txt").read_text()[-2000:])

    reloaded = _open(root)  # a fresh session: everything comes from the run's files
    assert any("added to the workspace as **retrained**" in s.value for s in reloaded.success)
    assert any("val macro-F1" in c.value for c in reloaded.code) or any("val macro-F1" in c.value
                                                                        for c in reloaded.caption)
    spec = load_workspace(root).checkpoint("retrained")
    card = read_model_card(spec.path)
    assert card.arch == "resnet10t" and card.input_size == (3, 32, 32)
    assert card.training["config"]["epochs"] == 1


def test_a_taken_name_is_refused_on_the_page(tmp_path: Path, bccd_root: Path):
    root = build_bccd_workspace(tmp_path / "ws", bccd_root, predictions=False)
    app = _open(root)
    app.text_input(key="rt-name").set_value("tiny")  # the workspace's existing checkpoint
    app.button[0].click().run()
    assert any("already has a checkpoint named 'tiny'" in plain(e.value) for e in app.error)
