"""Cached wrappers and the shared page context: everything pages read from the open workspace goes through here."""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import streamlit as st

from core.checkpoint_header import file_sha256
from core.dataset import Dataset
from core.dataset_snapshot import DatasetCheck, start_check
from core.ensemble import EnsembleSpec, ensemble_tables, read_ensemble_specs
from core.errors import USER_ERRORS, TaxaLensError, user_message
from core.modes import CONFIDENCE_MODES, LABEL_MODES
from core.prediction_paths import predictions_path
from core.predictions import PredictionTable, load_predictions, relabel_table, table_token  # noqa: F401 (re-exported)
from core.probs_sidecar import open_table
from core.summary import class_count_table
from core.workspace import CONFIG_NAME, Workspace, load_workspace
from pages._state import KEY_CHECKPOINTS, KEY_CONFIDENCES, KEY_LABEL_MODE, KEY_SPLIT, KEY_WORKSPACE
from pages._text import md, md_list

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_WORKSPACE = REPO_ROOT / "demo_workspace"
SPLITS = ("val", "train", "test", "all")



def default_workspace_path() -> str:
    """`--workspace DIR` after `--` on the streamlit command line, else $TAXALENS_WORKSPACE, else the demo."""
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg == "--workspace" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--workspace="):
            return arg.split("=", 1)[1]
    return os.environ.get("TAXALENS_WORKSPACE") or str(DEMO_WORKSPACE)


def file_mtime_ns(path: str | Path | None) -> int:
    """The file's modification time in ns, for cache keys of things read from it; -1 when `path` is None or
    cannot be read."""
    try:
        return Path(path).stat().st_mtime_ns if path else -1
    except OSError:
        return -1


def _config_stamp(path: str) -> int:
    return file_mtime_ns(Path(path) / CONFIG_NAME)


@st.cache_resource(show_spinner=False)
def _open_workspace(path: str, stamp: int) -> Workspace:
    return load_workspace(path)


def open_workspace(path: str) -> Workspace:
    """The workspace at `path`, re-read when its `taxalens.toml` changes."""
    return _open_workspace(str(Path(path).expanduser().resolve()), _config_stamp(path))


@st.cache_resource(show_spinner="Reading the dataset…")
def _load_dataset(path: str, stamp: int, manifest_stamp: int) -> Dataset:
    workspace = load_workspace(path)
    snapshot = workspace.quick_dataset()
    with _CHECKS_LOCK:
        # a snapshot a check found out of date (it could not write the new one: a read-only cache folder) is not
        # shown again: the dataset is loaded fully instead
        stale = snapshot is not None and _STALE.get(path) == snapshot.digest
        verified = snapshot is not None and _VERIFIED.get(path) == snapshot.digest
    if snapshot is None or stale:
        return workspace.load_dataset()
    if not verified:
        def done(check: DatasetCheck) -> None:
            with _CHECKS_LOCK:
                if check.state == "changed" and check.found_digest:
                    _VERIFIED[path] = check.found_digest  # the new snapshot the check wrote: no second check of it
                    _STALE[path] = check.expected_digest
            if check.state == "changed":
                _load_dataset.clear(path, stamp, manifest_stamp)  # every page's next run reads the new dataset

        with _CHECKS_LOCK:
            _CHECKS[path] = start_check(path, snapshot, on_done=done)
    return snapshot.dataset


# Quick open (`core.dataset_snapshot`): a large dataset is shown from its snapshot while a child process checks its
# files; the latest check of each workspace (by root) for the pages' notice, and the snapshot digests a check has
# already confirmed in this server (a snapshot just rewritten by a check is not checked twice).
_CHECKS: dict[str, DatasetCheck] = {}
_VERIFIED: dict[str, str] = {}
_STALE: dict[str, str] = {}
_CHECKS_LOCK = threading.Lock()


def load_dataset(workspace: Workspace) -> Dataset:
    """The workspace dataset (shared across sessions, treated as read-only), re-read when the manifest changes. A
    large one opens from its snapshot while its files are checked in the background (`dataset_check`)."""
    return _load_dataset(str(workspace.root), _config_stamp(str(workspace.root)), _manifest_stamp(workspace))


def dataset_checks_running() -> bool:
    """Whether a background check of a dataset's files is running in this server (benchmarks wait for it)."""
    with _CHECKS_LOCK:
        return any(check.running for check in _CHECKS.values())


def dataset_check(workspace: Workspace) -> DatasetCheck | None:
    """The latest background check of the workspace's files in this server (`core.dataset_snapshot.DatasetCheck`),
    None when its dataset was loaded fully (small, or no snapshot yet)."""
    with _CHECKS_LOCK:
        return _CHECKS.get(str(workspace.root))


@st.cache_resource(show_spinner=False, max_entries=4)
def _class_counts(dataset_key: str, _dataset: Dataset) -> tuple[pd.DataFrame, int]:
    return class_count_table(_dataset), int(_dataset.samples["specimen_id"].nunique())


def class_counts(dataset: Dataset) -> tuple[pd.DataFrame, int]:
    """The landing page's class table (`core.summary.class_count_table`) and the number of specimens, once per
    dataset load (a million images: seconds, on every rerun otherwise). Treat the table as read-only."""
    return _class_counts(dataset_key(dataset), dataset)


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def load_model(workspace_path: str, name: str, sha256: str):
    """(model, card) for a workspace checkpoint; keyed by file content so a replaced file reloads."""
    from models.inference import load_workspace_model

    workspace = load_workspace(workspace_path)
    return load_workspace_model(workspace, name, dataset=load_dataset(workspace))


def _manifest_stamp(workspace: Workspace) -> int:
    source = workspace.dataset_source
    return file_mtime_ns(source) if source.is_file() else -1  # an ImageFolder: its file list is the dataset's key


# Tables are held with cache_resource, not cache_data: cache_data would pickle a copy of a 100k x 300 probability
# matrix on every rerun of every session. They are made read-only instead, so no page can mutate the shared copy.
@st.cache_resource(show_spinner="Reading predictions…", max_entries=16)
def _cached_table(workspace_path: str, name: str, cache_file: str, load_key: str) -> PredictionTable | None:
    # `cache_file` is `predictions_file(...)`: read it directly (models.inference.cached_predictions would find the
    # path again, one stat per image). Labels and splits come from the dataset, as in cached_predictions; a relabelled
    # manifest keeps the file (same images) but is a new dataset load, hence `load_key` (`dataset_key`) in the key.
    if not Path(cache_file).is_file():
        return None
    # open_table: a float16 table memory-maps its probabilities and reads its compact columns (sidecars beside the
    # file), so a million x 1,000 table opens in about a second instead of decoding 2 GB into a 4 GB float32 matrix
    table = open_table(cache_file, load_dataset(load_workspace(workspace_path)).samples)
    _freeze(table)
    return table


def _freeze(table: PredictionTable) -> None:
    if table.pred_probs.flags.writeable:  # a memory map opened read-only is frozen already
        table.pred_probs.setflags(write=False)
    table.embeddings.setflags(write=False)


# `predictions_path` hashes the dataset's file list and reads the checkpoint's header, so its answer is held per
# (workspace, checkpoint, weights file, config, manifest, dataset load): new weights, a new config or a new manifest
# change the key at once. The hash uses the file stamps the dataset's load took, so a rerun never stats the images
# again (a million images: seconds each time); images edited in place (same paths, new bytes) are noticed when the
# dataset is loaded again: a server restart, or the landing page's "Check the images again" (`recheck_images`).
@st.cache_resource(show_spinner=False, max_entries=64)
def _predictions_path(workspace_path: str, name: str, weights_stamp: tuple, config_stamp: int,
                      manifest_stamp: int, dataset_key: str) -> Path:
    # core.prediction_paths reads the checkpoint's header, not the model: no torch import on the landing page.
    workspace = load_workspace(workspace_path)
    return predictions_path(workspace, name, dataset=load_dataset(workspace))


def predictions_file(workspace: Workspace, name: str) -> Path:
    """Where the predictions of checkpoint `name` are (or would be) cached; cheap on a warm rerun."""
    root = str(workspace.root)
    return _predictions_path(root, name, checkpoint_stamp(workspace, name), _config_stamp(root),
                             _manifest_stamp(workspace), dataset_key(load_dataset(workspace)))


def dataset_key(dataset: Dataset) -> str:
    """A cache-key part naming one load of a dataset: its object id and the time its files were stat-ed (an id alone
    may be reused by the next load once the old object is gone)."""
    stamps = dataset.file_stamps
    return f"{id(dataset)}@{stamps.taken_at if stamps is not None else ''}"


def recheck_images(workspace: Workspace) -> None:
    """Load the workspace's dataset again on the next run: every image stat-ed, new or changed ones checked again
    (through the dataset index), and every cache keyed by the dataset load (predictions path, class counts) renewed."""
    root = str(workspace.root)
    with _CHECKS_LOCK:
        _VERIFIED.pop(root, None)  # a snapshot is checked against the files again
    _load_dataset.clear(root, _config_stamp(root), _manifest_stamp(workspace))


def checkpoint_stamp(workspace: Workspace, name: str) -> tuple:
    """(size, mtime) of the files behind checkpoint `name` (weights and class list); for an ensemble, the spec
    and every member's stamp. `(None,)` for a file that cannot be read."""
    spec = ensemble_spec(workspace, name)
    if spec is not None:
        return (spec.members, spec.method, spec.weights_split, *(checkpoint_stamp(workspace, m) for m in spec.members))
    try:
        checkpoint = workspace.checkpoint(name)
        files = [checkpoint.path] + ([checkpoint.classes] if checkpoint.classes is not None else [])
        return tuple((stat.st_size, stat.st_mtime_ns) for stat in (Path(f).stat() for f in files))
    except (OSError, ValueError):
        return (None,)


# Ensembles -----------------------------------------------------------------------------------------------------------

def ensemble_specs(workspace: Workspace) -> tuple[EnsembleSpec, ...]:
    """The workspace's `[[ensembles]]` (empty when the entries are invalid: `ensemble_problem` says why); an
    ensemble named like a checkpoint is left out (the checkpoint wins)."""
    try:
        specs = read_ensemble_specs(workspace)
    except ValueError:
        return ()
    checkpoints = {c.name for c in workspace.checkpoints}
    return tuple(spec for spec in specs if spec.name not in checkpoints)


def ensemble_problem(workspace: Workspace) -> str | None:
    """Why the workspace's `[[ensembles]]` cannot be used, or None."""
    try:
        read_ensemble_specs(workspace)
    except ValueError as exc:
        return f"Ensembles ignored: {exc}"
    return None


def ensemble_spec(workspace: Workspace, name: str | None) -> EnsembleSpec | None:
    """The ensemble called `name`, or None when `name` is a checkpoint (or unknown)."""
    return next((spec for spec in ensemble_specs(workspace) if spec.name == name), None)


def missing_members(workspace: Workspace, spec: EnsembleSpec) -> list[str]:
    """Members of `spec` whose predictions have not been computed yet (or whose checkpoint file is missing)."""
    return [m for m in spec.members if not _has_predictions(workspace, m)]


def _has_predictions(workspace: Workspace, name: str) -> bool:
    try:
        return predictions_file(workspace, name).is_file()
    except (OSError, ValueError):
        return False


@st.cache_resource(show_spinner="Combining the ensemble…", max_entries=8)
def _cached_ensemble(workspace_path: str, name: str, members: tuple[str, ...], method: str, weights_split: str,
                     member_files: tuple[str, ...], load_key: str) -> PredictionTable:
    tables = [_cached_table(workspace_path, m, f, load_key) for m, f in zip(members, member_files, strict=True)]
    gone = [m for m, t in zip(members, tables, strict=True) if t is None]
    if gone:
        raise FileNotFoundError(f"the predictions of {gone} disappeared while ensemble {name!r} was being combined")
    table = ensemble_tables(tables, method=method, weights_split=weights_split, name=name, member_names=members)
    _freeze(table)
    return table


def predictions_key(workspace: Workspace, name: str) -> str:
    """A cache key for the predictions of `name` (checkpoint or ensemble) that changes whenever they do."""
    spec = ensemble_spec(workspace, name)
    if spec is None:
        return str(predictions_file(workspace, name))
    files = "|".join(str(predictions_file(workspace, m)) for m in spec.members)
    return f"ensemble|{spec.name}|{spec.method}|{spec.weights_split}|{files}"


def get_predictions(workspace: Workspace, name: str) -> PredictionTable | None:
    """The cached predictions table of checkpoint or ensemble `name` (all splits), or `None` when not computed yet
    (for an ensemble: when any member's is missing). Raises `ValueError` when an ensemble's members share no
    sample."""
    spec = ensemble_spec(workspace, name)
    if spec is not None:
        files = [predictions_file(workspace, m) for m in spec.members]
        if not all(f.is_file() for f in files):
            return None
        return _cached_ensemble(str(workspace.root), spec.name, spec.members, spec.method, spec.weights_split,
                                tuple(str(f) for f in files), dataset_key(load_dataset(workspace)))
    path = predictions_file(workspace, name)
    if not path.is_file():
        return None
    return _cached_table(str(workspace.root), name, str(path), dataset_key(load_dataset(workspace)))


def compute_predictions(workspace: Workspace, name: str) -> None:
    """Run the model over the dataset with a progress bar (used by the "compute predictions" button)."""
    from models.inference import predict_workspace

    bar = st.progress(0.0, text=f"Predicting with {name}…")

    def progress(done: int, total: int) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"Predicting with {name}: {done}/{total} images")

    model, _ = load_model(str(workspace.root), name, _sha(workspace, name))
    del model  # loaded once here so the page's later views reuse the cached model
    predict_workspace(workspace, name, dataset=load_dataset(workspace), progress=progress)
    bar.empty()


def _sha(workspace: Workspace, name: str) -> str:
    return file_sha256(workspace.checkpoint(name).path)


@dataclass(frozen=True)
class PageContext:
    """What the sidebar selected: the workspace, its dataset, the checkpoints and the split."""

    workspace: Workspace
    dataset: Dataset
    checkpoints: tuple[str, ...]  # selected checkpoint and ensemble names, first is the primary one
    split: str  # val | train | test | all
    ensembles: tuple[EnsembleSpec, ...] = ()  # the workspace's usable [[ensembles]]
    label_mode: str = "given"  # given | curated: the labels the evaluation pages score against
    confidences: str = "raw"  # raw | calibrated: calibrated applies the checkpoint's stored temperature, if any

    @property
    def checkpoint(self) -> str | None:
        return self.checkpoints[0] if self.checkpoints else None

    @property
    def names(self) -> list[str]:
        """Every checkpoint, then every ensemble: what the sidebar offers."""
        return [c.name for c in self.workspace.checkpoints] + [e.name for e in self.ensembles]

    def ensemble(self, name: str | None = None) -> EnsembleSpec | None:
        """The spec when `name` (default: primary) is an ensemble, else None."""
        name = name or self.checkpoint
        return next((e for e in self.ensembles if e.name == name), None)

    def model(self, name: str | None = None):
        """(model, card) of checkpoint `name` (default: the primary one). Raises `SingleCheckpointError` for an
        ensemble, which has no model of its own."""
        name = name or self.checkpoint
        spec = self.ensemble(name)
        if spec is not None:
            raise SingleCheckpointError(single_checkpoint_message(spec))
        return load_model(str(self.workspace.root), name, _sha(self.workspace, name))

    def table(self, name: str | None = None, *, split: str | None = None) -> PredictionTable | None:
        """Predictions of `name` (default: primary) restricted to the selected split; `None` if not computed."""
        name = name or self.checkpoint
        if name is None:
            return None
        table = get_predictions(self.workspace, name)
        if table is not None and self.confidences == "calibrated":
            table = calibrated(self.workspace, name, table)
        if table is None:
            return None
        split = split or self.split
        if split in (None, "all"):
            return table
        return _split_of(predictions_key(self.workspace, name), dataset_key(self.dataset), id(table), split, table)

    @property
    def confidence_stamp(self) -> tuple:
        """A cache-key part that changes with the confidence mode and with the stored temperature of the primary
        checkpoint."""
        if self.confidences != "calibrated" or not self.checkpoint:
            return (self.confidences,)
        from core.calibration import temperature_path  # scipy and the bootstrap: not on every page's import path

        return (self.confidences, file_mtime_ns(temperature_path(self.workspace.cache_dir, self.checkpoint)))


# A split of a large table copies its rows' probabilities (val of 1M x 1,000: 400 MB of float16), so each split is
# made once per table object, as the full table is held once per file and dataset object (`_cached_table`).
@st.cache_resource(show_spinner=False, max_entries=8)
def _split_of(predictions_key: str, dataset_key: str, table_id: int, split: str, _table: PredictionTable
              ) -> PredictionTable:
    return _table.for_split(split)


def stored_temperature(workspace: Workspace, name: str, table: PredictionTable):
    """The stored `TemperatureFit` of checkpoint `name` for the weights behind `table`, or None."""
    from core.calibration import load_temperature

    return load_temperature(workspace.cache_dir, name, checkpoint_sha256=table.meta.get("checkpoint_sha256"))


@st.cache_resource(show_spinner="Applying the temperature…", max_entries=8)
def _calibrated(key: str, temperature: float, _table: PredictionTable) -> PredictionTable:
    from core.calibration import calibrate_table

    table = calibrate_table(_table, temperature)
    _freeze(table)
    return table


def calibrated(workspace: Workspace, name: str, table: PredictionTable) -> PredictionTable:
    """`table` temperature-scaled with checkpoint `name`'s stored temperature; unchanged when none is stored."""
    fit = stored_temperature(workspace, name, table)
    if fit is None:
        return table
    return _calibrated(f"{predictions_key(workspace, name)}|{len(table)}", fit.temperature, table)


class SingleCheckpointError(TaxaLensError, ValueError):
    """An ensemble was given where a real model is needed (Grad-CAM)."""


def single_checkpoint_message(spec: EnsembleSpec, what: str = "Grad-CAM") -> str:
    """"`what` needs a single checkpoint: `spec` is an ensemble of ...", naming the members to pick instead."""
    return (f"{what} needs a single checkpoint: **{md(spec.name)}** is an ensemble of "
            f"{md_list(spec.members, bold=True)}, which has no model of its own. Pick one member "
            f"(e.g. **{md(spec.members[0])}**) in the sidebar.")


def _select_checkpoint(name: str) -> None:
    selected = st.session_state.get(KEY_CHECKPOINTS) or []
    st.session_state[KEY_CHECKPOINTS] = [name, *[n for n in selected if n != name]]


def require_single_checkpoint(ctx: PageContext, what: str = "Grad-CAM") -> None:
    """When the primary selection is an ensemble: say so, offer its members as the primary one, and stop."""
    spec = ctx.ensemble()
    if spec is None:
        return
    st.info(single_checkpoint_message(spec, what))
    for column, member in zip(st.columns(len(spec.members)), spec.members, strict=True):
        column.button(f"Use {md(member)}", key=f"single-{member}", on_click=_select_checkpoint, args=(member,))
    st.stop()


def page_context() -> PageContext | None:
    """The sidebar's selection, or `None` (with a message shown) when no workspace is open. Stops the run first when
    the session may not see pages (network address without sign-in, not signed in, no role)."""
    from pages._serving import require_access

    require_access()
    path = st.session_state.get(KEY_WORKSPACE) or default_workspace_path()
    try:
        workspace = open_workspace(path)
        dataset = load_dataset(workspace)
    except USER_ERRORS as exc:
        st.error(f"Cannot open workspace {md(path)}: {md(user_message(exc))}")
        return None
    split = st.session_state.get(KEY_SPLIT, "val")
    mode = st.session_state.get(KEY_LABEL_MODE, "given")
    confidences = st.session_state.get(KEY_CONFIDENCES, "raw")
    ctx = PageContext(workspace, dataset, (), split if split in SPLITS else "val", ensemble_specs(workspace),
                      mode if mode in LABEL_MODES else "given", confidences if confidences in CONFIDENCE_MODES
                      else "raw")
    names = ctx.names
    selected = tuple(n for n in st.session_state.get(KEY_CHECKPOINTS, names[:1]) if n in names)
    return replace(ctx, checkpoints=selected)


def start_page(title: str) -> PageContext:
    """Title the page and return the sidebar's selection; when no workspace can be opened, say why and stop."""
    from pages._dataset_check import dataset_check_notice  # it imports this module

    st.title(title)
    ctx = page_context()
    if ctx is None:
        st.stop()
    dataset_check_notice(ctx.workspace)
    return ctx


def require_table(ctx: PageContext, name: str | None = None) -> PredictionTable:
    """The selected split's predictions, or a compute button (and `st.stop()`) when there are none yet."""
    name = name or ctx.checkpoint
    if name is None:
        st.info("This workspace lists no checkpoint yet: add one to `taxalens.toml` under `[[checkpoints]]`.")
        st.stop()
    try:
        table = ctx.table(name)
    except USER_ERRORS as exc:  # a checkpoint file gone or not one, or members that cannot be combined
        what = "combine ensemble" if ctx.ensemble(name) is not None else "read the predictions of"
        st.error(f"Cannot {what} **{md(name)}**: {md(user_message(exc))}")
        st.stop()
    if table is None:
        spec = ctx.ensemble(name)
        if spec is None:
            st.info(f"No predictions for **{md(name)}** on this dataset yet.")
            to_compute = [name]
        else:
            to_compute = missing_members(ctx.workspace, spec)
            st.info(f"Ensemble **{md(name)}** combines {md_list(spec.members, bold=True)}; no predictions "
                    f"for member{'s' if len(to_compute) > 1 else ''} {md_list(to_compute, bold=True)} "
                    "on this dataset yet.")
        for member in to_compute:
            if st.button(f"Compute predictions with {md(member)}", key=f"compute-{member}", type="primary"):
                try:
                    compute_predictions(ctx.workspace, member)
                except USER_ERRORS as exc:
                    st.error(md(user_message(exc)))
                    st.stop()
                st.rerun()
        st.stop()
    if len(table) == 0:
        st.warning(f"The **{ctx.split}** split has no samples. Pick another split in the sidebar.")
        st.stop()
    return table
