"""Cross-validation panel of the review and retrain pages: which out-of-sample probabilities rank the training split,
a button that starts `python -m core crossval` in the background (`core.train_runs`), and the run's progress."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.crossval import CROSSVAL_MODES, DEFAULT_FOLDS, find_crossval, load_crossval
from core.errors import USER_ERRORS, user_message
from core.predictions import PredictionTable
from core.train_runs import TrainingRun, launch_run, list_runs, read_log_tail, read_run, stop_run
from pages._access import current_actor, explain_hidden, may
from pages._cached import PageContext, dataset_key, load_dataset, predictions_file

MODE_HELP = {"probe": "a linear probe on the stored embeddings per fold: seconds on a CPU",
             "finetune": "retrains the checkpoint's recipe per fold: hours, best on a GPU"}
_SEEN_ACTIVE = "cv-seen-active"  # session: run folders this session saw running (to rerun the page when they end)


@st.cache_resource(show_spinner="Reading cross-validated probabilities…", max_entries=8)
def _cached_crossval(path: str, mtime_ns: int, load_key: str, _samples) -> PredictionTable:
    table = load_crossval(path, _samples)
    table.pred_probs.setflags(write=False)
    table.embeddings.setflags(write=False)
    return table


# Finding the file hashes every sample's id, label, split and specimen (1.4 s at a million images, twice per review
# rerun), so the answer is held per predictions file, dataset object and the folder's mtime (a new or replaced
# cross-validated table is renamed into that folder, which changes its mtime).
@st.cache_resource(show_spinner=False, max_entries=32)
def _find_crossval(predictions_path: str, folder_mtime_ns: int, dataset_key: str, _samples) -> Path | None:
    return find_crossval(predictions_path, _samples)


def crossval_file(ctx: PageContext, name: str | None = None) -> Path | None:
    """The cached cross-validated table of checkpoint `name` (default: primary) for the current labels, or None."""
    name = name or ctx.checkpoint
    if name is None or ctx.ensemble(name) is not None:
        return None
    try:
        path = predictions_file(ctx.workspace, name)
        return _find_crossval(str(path), path.parent.stat().st_mtime_ns, dataset_key(ctx.dataset),
                              ctx.dataset.samples)
    except (OSError, ValueError):
        return None


def crossval_table(ctx: PageContext, name: str | None = None) -> tuple[PredictionTable | None, str]:
    """(the cross-validated table or None, a cache token that changes when it does) for checkpoint `name`."""
    path = crossval_file(ctx, name)
    if path is None:
        return None, ""
    mtime = path.stat().st_mtime_ns
    dataset = load_dataset(ctx.workspace)
    return _cached_crossval(str(path), mtime, dataset_key(dataset), dataset.samples), f"{path}|{mtime}"


def render_crossval_job(ctx: PageContext) -> None:
    """One call per page: the panel for the primary checkpoint (nothing for an ensemble)."""
    name = ctx.checkpoint
    if name is None or ctx.ensemble(name) is not None:
        return
    found = crossval_file(ctx)
    title = ("Out-of-sample probabilities for the training split: "
             + (f"**{_describe(found)}**" if found else "none yet"))
    runs = [r for r in list_runs(ctx.workspace, kind="crossval") if r.command.get("checkpoint") == name]
    with st.expander(title, expanded=found is None and ctx.split in ("train", "all")):
        st.caption("The model memorised its training labels, so its own probabilities cannot rank them. "
                   "Cross-validation gives each training image the probabilities of a model that never saw it "
                   "(specimen-grouped folds); the review queue ranks the training split from them.")
        columns = st.columns([2, 1, 1])
        mode = columns[0].radio("Mode", CROSSVAL_MODES, format_func=lambda m: f"{m}: {MODE_HELP[m]}",
                                key="cv-mode")
        folds = int(columns[1].number_input("Folds", 2, 20, DEFAULT_FOLDS, key="cv-folds"))
        busy = any(r.active for r in runs)
        if not may("retrain"):  # starting a cross-validation run is a lead's, like training
            explain_hidden("retrain", "Starting cross-validation")
        elif columns[2].button("Compute", key="cv-start", type="primary", disabled=busy,
                               help="Runs `python -m core crossval` in the background; this page follows it"):
            try:
                _start(ctx, name, mode, folds)
            except USER_ERRORS as exc:
                st.error(user_message(exc))
        if runs and runs[0].active:
            _follow(runs[0].run_dir)
        elif runs:
            _show(runs[0])


def _start(ctx: PageContext, name: str, mode: str, folds: int) -> TrainingRun:
    run = launch_run(ctx.workspace, "crossval", f"crossval-{mode}-{name}"[:64].rstrip("-."),
                     ["--workspace", str(ctx.workspace.root), "--checkpoint", name],
                     options={"mode": mode, "folds": folds, "threads": 1 if mode == "probe" else None},
                     record={"checkpoint": name, "mode": mode, "folds": folds}, actor=current_actor())
    st.session_state.setdefault(_SEEN_ACTIVE, set()).add(str(run.run_dir))
    return run


@st.fragment(run_every=2.0)
def _follow(run_dir: Path) -> None:
    """The active run's progress, re-read every 2 s; when it ends, the whole page reruns (the ranking changes)."""
    _show(read_run(run_dir))


def _show(run: TrainingRun) -> None:
    seen = st.session_state.setdefault(_SEEN_ACTIVE, set())
    mode = run.command.get("mode", "?")
    if run.active:
        seen.add(str(run.run_dir))
        event = run.status.get("last_event") or {}
        text = f"{mode}: fold {event.get('fold', '?')}/{event.get('folds', run.command.get('folds', '?'))}"
        if event.get("epochs"):
            text += f" · epoch {event.get('epoch', '?')}/{event['epochs']}"
        st.progress(run.epoch_progress, text=text)
        if may("retrain") and st.button("Stop", key=f"cv-stop-{run.run_dir.name}"):
            stop_run(run, actor=current_actor())
    elif run.state == "done":
        st.success(f"{mode} cross-validation finished: {run.status.get('path', '')}")
        if str(run.run_dir) in seen:  # it ended while this session watched: rank again with the new table
            seen.discard(str(run.run_dir))
            st.rerun(scope="app")
    elif run.state == "failed":
        st.error(run.status.get("error", "the cross-validation run failed; see the log"))
    elif run.state == "stopped":
        st.warning("The cross-validation process ended without finishing (stopped or killed).")
    if run.state != "done":
        st.code(read_log_tail(run, lines=8) or "(no output yet)", language=None)


def _describe(path: Path) -> str:
    # <predictions stem>.cv-<mode>-<folds>f-s<seed>-<digest>.parquet
    parts = path.name.split(".cv-", 1)[-1].split("-")
    return f"{parts[0]}, {parts[1].rstrip('f')} folds" if len(parts) > 2 else path.name
