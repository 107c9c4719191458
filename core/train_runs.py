"""Background runs of a workspace (training, cross-validation): start a `python -m core` command detached, and
read their state from files.

A run lives in `<workspace>/.taxalens/runs/<id>/` with `command.json` (what was started), `log.txt` (the process's
output: the command's log lines and progress, between the dashboard's own start and stop lines; the pages show its
tail), `status.json` (written by the command through `StatusWriter`: state, last event, ETA, outcome) and the
command's outputs. Everything a page shows comes from these files, so a page reload, another browser or a restarted
dashboard sees the same runs. The train command itself adds the finished checkpoint to the workspace (`--add-as`);
the crossval command writes its table beside the predictions.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core.access import Actor
from core.errors import TaxaLensError
from core.training_data import load_workspace_training_dataset
from core.workspace import Workspace

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS_DIR = "runs"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ACTIVE_STATES = ("starting", "running")
RUN_KINDS = ("train", "crossval")  # the `python -m core` command a run executes
RUN_DIR = "{run_dir}"  # in a launched command's argv: replaced by the run's folder


class TrainingRunError(TaxaLensError, ValueError):
    """A training run that cannot be started as asked (a bad or taken checkpoint name); the message says the fix."""


@dataclass(frozen=True)
class TrainingRun:
    """One run folder as its files describe it now."""

    run_dir: Path  # <workspace>/.taxalens/runs/<id>
    name: str  # the checkpoint name it adds to the workspace
    state: str  # starting | running | done | failed | stopped (process gone without saying why)
    status: dict  # status.json as written by the train command (empty before it starts)
    command: dict  # command.json: argv, started_at, options

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def kind(self) -> str:
        """The command the run executes (`train` for runs started before kinds were recorded)."""
        return str(self.command.get("kind", "train"))

    @property
    def epoch_progress(self) -> float:
        """Share of the work done, 0..1 (1 when done): planned epochs, and folds for a cross-validation run."""
        if self.state == "done":
            return 1.0
        event = self.status.get("last_event") or {}
        folds, fold = event.get("folds") or 1, event.get("fold") or 1
        epochs = event.get("epochs") or 0
        if epochs:
            done = (event.get("epoch") or 1) - 1
            if event.get("event") == "epoch":
                done += 1
            elif event.get("steps"):
                done += (event.get("step") or 0) / event["steps"]
            within = done / epochs
        elif event.get("steps"):  # a probe: steps over all folds and C values
            return max(0.0, min((event.get("step") or 0) / event["steps"], 1.0))
        else:
            within = 0.0
        return max(0.0, min((fold - 1 + min(within, 1.0)) / folds, 1.0))


def runs_root(workspace: Workspace) -> Path:
    return workspace.cache_dir / RUNS_DIR


def start_training_run(workspace: Workspace, name: str, *, data: str | Path | None = None,
                       options: dict[str, object] | None = None, python: str | None = None,
                       actor: Actor | None = None) -> TrainingRun:
    """Start `python -m core train` for `workspace` as a detached background process; returns the new run.

    `name`: the checkpoint name the finished run adds to the workspace (letters, digits, `.`, `_`, `-`; unused).
    `data`: a curated export or other manifest (default: the workspace's dataset). `options`: train CLI options
    without the dashes (`{"epochs": 10, "img-size": 64, "pretrained": True}`; True adds a flag, None/False skip).
    The process gets its own session (`start_new_session`), so it outlives the Streamlit script and its reruns.
    Raises `DatasetError` (before starting anything) for data the train command would refuse.
    `actor`: who asks (needs the `retrain` permission); None for a trusted caller (the command line, tests).
    """
    if actor is not None:
        actor.require("retrain")
    if not _NAME.match(name):
        raise TrainingRunError(f"checkpoint name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting "
                               "with a letter or digit")
    if name in {c.name for c in workspace.checkpoints}:
        raise TrainingRunError(f"the workspace already has a checkpoint named {name!r}; choose another name")
    if any(run.name == name and run.active for run in list_runs(workspace, kind="train")):
        raise TrainingRunError(f"a run adding {name!r} is already in progress; stop it on the Retrain page or choose "
                               "another name")
    if data is not None and not Path(data).exists():
        raise FileNotFoundError(f"training data not found: {data}")
    # The data checks of the train command, run here too (files looked up, not decoded), so that data no run could
    # train on is refused on the page at once instead of as a failed run a minute later.
    load_workspace_training_dataset(workspace, data, verify="none")
    argv = ["--workspace", str(workspace.root), "--out", RUN_DIR, "--add-as", name]
    if data is not None:
        argv += ["--data", str(Path(data).resolve())]
    return launch_run(workspace, "train", name, argv, options=options, python=python,
                      record={"data": str(data) if data else None}, actor=actor)


def launch_run(workspace: Workspace, kind: str, name: str, argv: list[str], *, options: dict[str, object] | None = None,
               python: str | None = None, record: dict | None = None, actor: Actor | None = None) -> TrainingRun:
    """Start `python -m core <kind> <argv> <options> --status-file RUN/status.json` detached; returns the run.

    `kind`: one of RUN_KINDS. `name`: what the run is called (letters, digits, `.`, `_`, `-`). `options`: CLI options
    without the dashes (True adds a flag, None/False skip). `RUN_DIR` in `argv` stands for the run's folder.
    `record`: extra fields for `command.json`. The process gets its own session
    (`start_new_session`), so it outlives the Streamlit script and its reruns. `actor`: who asks (needs the
    `retrain` permission: training and cross-validation runs alike); None for a trusted caller.
    """
    if actor is not None:
        actor.require("retrain")
    if kind not in RUN_KINDS:
        raise TrainingRunError(f"run kind {kind!r} is not one of {list(RUN_KINDS)}")
    if not _NAME.match(name):
        raise TrainingRunError(f"run name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a "
                               "letter or digit")
    run_dir = _new_run_dir(runs_root(workspace), f"{time.strftime('%Y%m%d-%H%M%S')}-{name}")
    argv = [python or sys.executable, "-m", "core", kind, *(str(run_dir) if a == RUN_DIR else a for a in argv),
            "--status-file", str(run_dir / "status.json")]
    for key, value in (options or {}).items():
        if value is None or value is False:
            continue
        argv += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    command = {"argv": argv, "kind": kind, "name": name, "options": options or {}, "started_at": time.time(),
               **(record or {})}
    (run_dir / "command.json").write_text(json.dumps(command, indent=2, default=str), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    _append_log(run_dir, f"started at {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(argv)}")
    with open(run_dir / "log.txt", "ab") as log:
        process = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    (run_dir / "pid").write_text(str(process.pid), encoding="utf-8")
    logger.info("started %s run %s (pid %d), log in %s", kind, run_dir.name, process.pid, run_dir / "log.txt")
    return read_run(run_dir)


def list_runs(workspace: Workspace, *, kind: str | None = None) -> list[TrainingRun]:
    """Every run of the workspace (of one `kind` when given), newest first."""
    root = runs_root(workspace)
    if not root.is_dir():
        return []
    runs = [read_run(d) for d in root.iterdir() if (d / "command.json").is_file()]
    runs = [run for run in runs if kind is None or run.kind == kind]
    return sorted(runs, key=lambda r: r.command.get("started_at", 0), reverse=True)


def read_run(run_dir: str | Path) -> TrainingRun:
    """A run's state from its files; an active state whose process is gone reads as `stopped`."""
    run_dir = Path(run_dir)
    _reap(_pid(run_dir))  # a run that wrote "done" and exited must not stay <defunct> under the dashboard
    command = _read_json(run_dir / "command.json")
    status = _read_json(run_dir / "status.json")
    state = status.get("state", "starting")
    if state in ACTIVE_STATES and not _alive(_pid(run_dir)):
        status = _read_json(run_dir / "status.json")  # it may have finished between the two reads
        state = status.get("state", "starting")
        if state in ACTIVE_STATES:
            state = "stopped"
    return TrainingRun(run_dir=run_dir, name=command.get("name", run_dir.name), state=state, status=status,
                       command=command)


def read_log_tail(run: TrainingRun, *, lines: int = 40, max_bytes: int = 64_000) -> str:
    """The last `lines` lines of the run's log (progress lines overwritten by `\\r` are collapsed)."""
    path = run.run_dir / "log.txt"
    if not path.is_file():
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - max_bytes))
        text = handle.read().decode("utf-8", errors="replace")
    rows = [row.split("\r")[-1] for row in text.splitlines()]
    return "\n".join(rows[-lines:])


def stop_run(run: TrainingRun, *, actor: Actor | None = None) -> bool:
    """Send SIGTERM to the run's process group; True when a live process was signalled.

    `actor`: who asks (needs the `retrain` permission); None for a trusted caller.
    """
    if actor is not None:
        actor.require("retrain")
    pid = _pid(run.run_dir)
    if not _alive(pid):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)  # the run's own session: its DataLoader workers stop with it
    except ProcessLookupError:
        return False
    logger.info("stopped training run %s (pid %d)", run.run_dir.name, pid)
    _append_log(run.run_dir, f"stopped from the dashboard at {time.strftime('%Y-%m-%d %H:%M:%S')} (SIGTERM)")
    return True


class StatusWriter:
    """A run's status as one JSON file, replaced atomically on each update (nothing is written when `path` is None).

    The commands a run executes (train, crossval) keep it; `read_run` reads it."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.state: dict = {}

    def update(self, fields: dict) -> None:
        self.state.update(fields)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.state, default=str), encoding="utf-8")
        os.replace(tmp, self.path)


def _append_log(run_dir: Path, line: str) -> None:
    with open(run_dir / "log.txt", "a", encoding="utf-8") as log:
        log.write(line + "\n")


def _new_run_dir(root: Path, stem: str) -> Path:
    """A fresh run folder `root/stem`, or `stem-2`, `stem-3`, ... when a run of that name started within the same
    second (one stopped and started again at once)."""
    root.mkdir(parents=True, exist_ok=True)
    for number in itertools.count(1):
        run_dir = root / (stem if number == 1 else f"{stem}-{number}")
        try:
            run_dir.mkdir(exist_ok=False)
        except FileExistsError:
            continue
        return run_dir
    raise AssertionError("unreachable")


def _pid(run_dir: Path) -> int | None:
    try:
        return int((run_dir / "pid").read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def _reap(pid: int | None) -> bool:
    """Collect the exit status of run process `pid` if this process started it and it has ended; True when reaped."""
    if not pid:
        return False
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False  # started by another dashboard process (not our child), or reaped already
    return finished == pid


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    if _reap(pid):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
