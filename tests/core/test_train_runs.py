"""Background training runs: the command line they start, state from files, stop, reload-safe listing."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest

from core.errors import TaxaLensError
from core.train_runs import list_runs, read_log_tail, read_run, start_training_run, stop_run
from core.workspace import load_workspace


@pytest.fixture
def workspace(tmp_path: Path, bccd_root: Path):
    (tmp_path / "taxalens.toml").write_text(f'[dataset]\nroot = "{bccd_root}"\n', encoding="utf-8")
    return load_workspace(tmp_path)


def _fake_python(tmp_path: Path, body: str) -> str:
    """An executable standing in for python: it records its argv and then runs `body` (shell)."""
    script = tmp_path / "fakepython"
    script.write_text(f'#!/bin/sh\necho "argv: $@"\n{body}\n', encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_start_passes_options_and_the_run_is_read_back_from_files(workspace, tmp_path: Path):
    fake = _fake_python(tmp_path, 'echo \'{"state": "done", "best_macro_f1": 0.5}\' > "$7/status.json"')
    run = start_training_run(workspace, "new-model", options={"epochs": 3, "pretrained": True, "threads": None},
                             python=fake)
    deadline = time.monotonic() + 30
    while read_run(run.run_dir).active and time.monotonic() < deadline:
        time.sleep(0.1)
    again = list_runs(workspace)[0]
    assert again.name == "new-model" and again.state == "done" and again.epoch_progress == 1.0
    argv = json.loads((run.run_dir / "command.json").read_text())["argv"]
    assert argv[1:4] == ["-m", "core", "train"]
    assert argv[argv.index("--add-as") + 1] == "new-model"
    assert argv[argv.index("--epochs") + 1] == "3" and "--pretrained" in argv and "--threads" not in argv
    assert "argv: -m core train --workspace" in read_log_tail(again)


def test_stop_ends_the_process_group_and_the_run_reads_as_stopped(workspace, tmp_path: Path):
    run = start_training_run(workspace, "slow", python=_fake_python(tmp_path, "sleep 60"))
    assert read_run(run.run_dir).active
    assert stop_run(read_run(run.run_dir))
    deadline = time.monotonic() + 10
    while read_run(run.run_dir).active and time.monotonic() < deadline:
        time.sleep(0.1)
    assert read_run(run.run_dir).state == "stopped"
    assert not stop_run(read_run(run.run_dir))


def test_bad_names_and_missing_data_are_refused(workspace, tmp_path: Path):
    with pytest.raises(ValueError, match="letters, digits"):
        start_training_run(workspace, "../escape")
    with pytest.raises(FileNotFoundError, match="training data not found"):
        start_training_run(workspace, "ok", data=tmp_path / "nope.csv")
    assert not list_runs(workspace)


def test_a_finished_run_is_reaped_not_left_defunct(workspace, tmp_path: Path):
    # the run says "done" first and exits a moment later, as the train command does
    fake = _fake_python(tmp_path, 'echo \'{"state": "done", "best_macro_f1": 0.5}\' > "$7/status.json"; sleep 1')
    run = start_training_run(workspace, "quick", python=fake)
    pid = int((run.run_dir / "pid").read_text())
    proc = Path(f"/proc/{pid}")
    deadline = time.monotonic() + 30
    runs = list_runs(workspace)  # what the Retrain page reads every 2 s
    while proc.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
        runs = list_runs(workspace)
    assert runs[0].state == "done"
    assert not proc.exists(), (proc / "status").read_text()  # a zombie keeps /proc/<pid> with "State: Z"


def test_the_log_the_retrain_page_shows_holds_the_start_the_output_and_the_stop(workspace, tmp_path: Path):
    run = start_training_run(workspace, "logged", options={"epochs": 2},
                             python=_fake_python(tmp_path, 'echo "epoch 1/2: train loss 0.5" >&2\nsleep 60'))
    deadline = time.monotonic() + 10
    while "epoch 1/2" not in read_log_tail(run) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stop_run(read_run(run.run_dir))
    lines = read_log_tail(read_run(run.run_dir)).splitlines()
    assert lines[0].startswith("started at ") and lines[0].endswith(" --epochs 2")  # the command, shell-quoted
    assert "-m core train --workspace" in lines[0]
    assert "epoch 1/2: train loss 0.5" in lines  # the process's stderr
    assert lines[-1].startswith("stopped from the dashboard at ")


def test_a_taken_name_is_a_taxalens_error_naming_the_fix(workspace, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda fmt, *args: "20261128-120000")  # every start within one second
    # one script for both starts: rewriting it while the first shell still reads it could end that run early
    fake = _fake_python(tmp_path, "sleep 60")
    first = start_training_run(workspace, "twice", python=fake)
    try:
        with pytest.raises(TaxaLensError, match="already in progress; stop it on the Retrain page"):
            start_training_run(workspace, "twice", python=fake)
    finally:
        stop_run(read_run(first.run_dir))
    assert [r.name for r in list_runs(workspace)] == ["twice"]
    # once stopped, the same name may start again within the same second: a second folder, not a FileExistsError
    deadline = time.monotonic() + 30
    while read_run(first.run_dir).active and time.monotonic() < deadline:  # the signal takes a moment to land
        time.sleep(0.05)
    again = start_training_run(workspace, "twice", python=fake)
    try:
        assert again.run_dir.name == first.run_dir.name + "-2" and again.active
    finally:
        stop_run(read_run(again.run_dir))
    assert [r.name for r in list_runs(workspace)] == ["twice", "twice"]
