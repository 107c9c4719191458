"""Retrain page (AppTest): a run started from the form trains in the background, survives a reload, and its
checkpoint lands in the workspace."""

from __future__ import annotations

import time
from pathlib import Path

from tests.pages.eval_workspaces import build_bccd_workspace

REPO = Path(__file__).resolve().parents[2]
PAGE = str(REPO / "pages" / "retrain.py")


def _open(root: Path):
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(PAGE, default_timeout=120)
    app.session_state["tl_workspace"] = str(root)
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
    assert any("already has a checkpoint named 'tiny'" in e.value for e in app.error)


def test_any_csv_is_accepted_with_the_image_root_it_needs_and_runs_show_a_badge(tmp_path: Path, bccd_root: Path,
                                                                                 monkeypatch):
    import json
    from types import SimpleNamespace

    import core.train_runs
    from core.workspace import load_workspace

    root = build_bccd_workspace(tmp_path / "ws", bccd_root, predictions=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    images = sorted(p.relative_to(bccd_root).as_posix() for p in (bccd_root / "Lymphocyte").iterdir())[:3]
    csv = elsewhere / "curated.csv"
    csv.write_text("path,label,status\n" + "".join(f"{p},Lymphocyte,confirmed\n" for p in images), encoding="utf-8")
    started = []

    def fake_start(workspace, name, *, data=None, options=None):
        started.append((name, data, options))
        return SimpleNamespace(name=name, run_dir=tmp_path / "run")

    monkeypatch.setattr(core.train_runs, "start_training_run", fake_start)

    app = _open(root)
    app.selectbox(key="rt-data").set_value("(upload a CSV or give its path below)")
    app.text_input(key="rt-path").set_value(str(csv))
    app.text_input(key="rt-root").set_value(str(elsewhere))  # wrong: the paths are relative to bccd
    app.button[0].click().run()
    assert not started
    errors = [e.value for e in app.error]
    assert any(f"none of the first 3 image paths of {csv}" in e and str(elsewhere) in e for e in errors), errors

    app.text_input(key="rt-root").set_value(str(bccd_root))
    app.checkbox(key="rt-disputed").set_value(True)
    app.button[0].click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert len(started) == 1
    name, data, options = started[0]
    assert data == csv and options["root"] == str(bccd_root.resolve()) and options["include-disputed"] is True

    # a finished run's expander carries a material icon and a badge naming its state (the emoji rendered empty)
    run_dir = load_workspace(root).cache_dir / "runs" / "20260101-000000-old"
    run_dir.mkdir(parents=True)
    (run_dir / "command.json").write_text(json.dumps({"name": "old", "started_at": 1.0}), encoding="utf-8")
    (run_dir / "status.json").write_text(json.dumps({"state": "done", "best_macro_f1": 0.5}), encoding="utf-8")
    reloaded = _open(root)
    expander = next(e for e in reloaded.expander if e.label == "old · done")
    assert expander.icon == ":material/check_circle:"
    badges = [str(element.proto) for element in reloaded.get("badge")] or [
        str(element.proto) for element in reloaded.markdown if ":material/check_circle:" in element.value]
    assert any("done" in badge and "check_circle" in badge for badge in badges), badges
