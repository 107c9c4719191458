"""Cached wrappers and the shared page context: everything pages read from the open workspace goes through here."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from core.dataset import Dataset
from core.predictions import PredictionTable, load_predictions, relabel_table
from core.workspace import Workspace, load_workspace

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_WORKSPACE = REPO_ROOT / "demo_workspace"
SPLITS = ("val", "train", "test", "all")

# Session-state keys of the sidebar (UI state only; reviewer actions go to the label store). They hold the committed
# values and are never widget keys: Streamlit drops a widget's state when a run does not render it (a page switch,
# the first run of a `streamlit run`, which goes through the pages/ folder fallback), so app.py gives each sidebar
# widget its own key, re-seeds it from these every run and copies it back in an on_change callback.
KEY_WORKSPACE = "tl_workspace"
KEY_CHECKPOINTS = "tl_checkpoints"
KEY_SPLIT = "tl_split"


def default_workspace_path() -> str:
    """`--workspace DIR` after `--` on the streamlit command line, else $TAXALENS_WORKSPACE, else the demo."""
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg == "--workspace" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--workspace="):
            return arg.split("=", 1)[1]
    return os.environ.get("TAXALENS_WORKSPACE") or str(DEMO_WORKSPACE)


def _config_stamp(path: str) -> float:
    config = Path(path) / "taxalens.toml"
    return config.stat().st_mtime_ns if config.is_file() else 0.0


@st.cache_resource(show_spinner=False)
def _open_workspace(path: str, stamp: float) -> Workspace:
    return load_workspace(path)


def open_workspace(path: str) -> Workspace:
    """The workspace at `path`, re-read when its `taxalens.toml` changes."""
    return _open_workspace(str(Path(path).expanduser().resolve()), _config_stamp(path))


@st.cache_resource(show_spinner="Reading the dataset…")
def _load_dataset(path: str, stamp: float, manifest_stamp: float) -> Dataset:
    return load_workspace(path).load_dataset()


def load_dataset(workspace: Workspace) -> Dataset:
    """The workspace dataset (shared across sessions, treated as read-only), re-read when the manifest changes."""
    source = workspace.dataset_source
    manifest_stamp = source.stat().st_mtime_ns if source.is_file() else 0.0
    return _load_dataset(str(workspace.root), _config_stamp(str(workspace.root)), manifest_stamp)


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def load_model(workspace_path: str, name: str, sha256: str):
    """(model, card) for a workspace checkpoint; keyed by file content so a replaced file reloads."""
    from models.inference import load_workspace_model

    workspace = load_workspace(workspace_path)
    return load_workspace_model(workspace, name, dataset=_load_dataset(workspace_path, _config_stamp(workspace_path),
                                                                      _manifest_stamp(workspace)))


def _manifest_stamp(workspace: Workspace) -> float:
    source = workspace.dataset_source
    return source.stat().st_mtime_ns if source.is_file() else 0.0


# Tables are held with cache_resource, not cache_data: cache_data would pickle a copy of a 100k x 300 probability
# matrix on every rerun of every session. They are made read-only instead, so no page can mutate the shared copy.
@st.cache_resource(show_spinner="Reading predictions…", max_entries=16)
def _cached_table(workspace_path: str, name: str, cache_file: str, dataset_id: int) -> PredictionTable | None:
    # `cache_file` is `predictions_file(...)`: read it directly (models.inference.cached_predictions would find the
    # path again, one stat per image). Labels and splits come from the dataset, as in cached_predictions; a relabelled
    # manifest keeps the file (same images) but is a new dataset object, hence `dataset_id` in the key.
    if not Path(cache_file).is_file():
        return None
    table = relabel_table(load_predictions(cache_file), load_dataset(load_workspace(workspace_path)).samples)
    _freeze(table)
    return table


def _freeze(table: PredictionTable) -> None:
    table.pred_probs.setflags(write=False)
    table.embeddings.setflags(write=False)


# `predictions_path` hashes the dataset's file list (one stat per image: about 1 s at 100,000 images) and reads the
# checkpoint's header, so its answer is held per (workspace, checkpoint, weights file, config, manifest, dataset
# object): new weights, a new config or a new manifest change the key at once; images replaced in place (same
# paths, new bytes) are noticed within PREDICTIONS_PATH_TTL_S.
PREDICTIONS_PATH_TTL_S = 30


@st.cache_resource(show_spinner=False, ttl=PREDICTIONS_PATH_TTL_S, max_entries=64)
def _predictions_path(workspace_path: str, name: str, weights_stamp: tuple, config_stamp: float,
                      manifest_stamp: float, dataset_id: int) -> Path:
    from models.inference import predictions_path

    workspace = load_workspace(workspace_path)
    return predictions_path(workspace, name, dataset=load_dataset(workspace))


def predictions_file(workspace: Workspace, name: str) -> Path:
    """Where the predictions of checkpoint `name` are (or would be) cached; cheap on a warm rerun."""
    root = str(workspace.root)
    return _predictions_path(root, name, checkpoint_stamp(workspace, name), _config_stamp(root),
                             _manifest_stamp(workspace), id(load_dataset(workspace)))


def checkpoint_stamp(workspace: Workspace, name: str) -> tuple:
    """(size, mtime) of the files behind checkpoint `name` (weights and class list); `(None,)` for a file that
    cannot be read."""
    try:
        checkpoint = workspace.checkpoint(name)
        files = [checkpoint.path] + ([checkpoint.classes] if checkpoint.classes is not None else [])
        return tuple((stat.st_size, stat.st_mtime_ns) for stat in (Path(f).stat() for f in files))
    except (OSError, ValueError):
        return (None,)


def get_predictions(workspace: Workspace, name: str) -> PredictionTable | None:
    """The cached predictions table of checkpoint `name` (all splits), or `None` when not computed yet."""
    path = predictions_file(workspace, name)
    if not path.is_file():
        return None
    return _cached_table(str(workspace.root), name, str(path), id(load_dataset(workspace)))


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
    from models.checkpoints import file_sha256

    return file_sha256(workspace.checkpoint(name).path)


@dataclass(frozen=True)
class PageContext:
    """What the sidebar selected: the workspace, its dataset, the checkpoints and the split."""

    workspace: Workspace
    dataset: Dataset
    checkpoints: tuple[str, ...]  # selected checkpoint names, first is the primary one
    split: str  # val | train | test | all

    @property
    def checkpoint(self) -> str | None:
        return self.checkpoints[0] if self.checkpoints else None

    def model(self, name: str | None = None):
        """(model, card) of checkpoint `name` (default: the primary one)."""
        name = name or self.checkpoint
        return load_model(str(self.workspace.root), name, _sha(self.workspace, name))

    def table(self, name: str | None = None, *, split: str | None = None) -> PredictionTable | None:
        """Predictions of `name` (default: primary) restricted to the selected split; `None` if not computed."""
        name = name or self.checkpoint
        if name is None:
            return None
        table = get_predictions(self.workspace, name)
        return None if table is None else table.for_split(split or self.split)


def page_context() -> PageContext | None:
    """The sidebar's selection, or `None` (with a message shown) when no workspace is open."""
    path = st.session_state.get(KEY_WORKSPACE) or default_workspace_path()
    try:
        workspace = open_workspace(path)
        dataset = load_dataset(workspace)
    except (FileNotFoundError, ValueError) as exc:
        st.error(f"Cannot open workspace {path}: {exc}")
        return None
    names = [c.name for c in workspace.checkpoints]
    selected = tuple(n for n in st.session_state.get(KEY_CHECKPOINTS, names[:1]) if n in names)
    split = st.session_state.get(KEY_SPLIT, "val")
    return PageContext(workspace, dataset, selected, split if split in SPLITS else "val")


def require_table(ctx: PageContext, name: str | None = None) -> PredictionTable:
    """The selected split's predictions, or a compute button (and `st.stop()`) when there are none yet."""
    name = name or ctx.checkpoint
    if name is None:
        st.info("This workspace lists no checkpoint yet: add one to `taxalens.toml` under `[[checkpoints]]`.")
        st.stop()
    table = ctx.table(name)
    if table is None:
        st.info(f"No predictions for **{name}** on this dataset yet.")
        if st.button(f"Compute predictions with {name}", key=f"compute-{name}", type="primary"):
            try:
                compute_predictions(ctx.workspace, name)
            except (ValueError, FileNotFoundError) as exc:
                st.error(str(exc))
                st.stop()
            st.rerun()
        st.stop()
    if len(table) == 0:
        st.warning(f"The **{ctx.split}** split has no samples. Pick another split in the sidebar.")
        st.stop()
    return table
