"""Where a workspace's predictions are cached: the table and store paths, keyed by checkpoint content,
preprocessing and dataset, computed from file headers alone (no torch, no timm), so the landing page and every cache
lookup stay light. `models.inference` predicts into these paths."""

from __future__ import annotations

from pathlib import Path

from core.checkpoint_header import file_sha256, read_class_names, stored_preprocessing_key, timm_version
from core.dataset import Dataset
from core.dataset_snapshot import dataset_fingerprint
from core.prediction_store import model_cache_key, store_folder
from core.predictions import PredictionTable, load_predictions, prediction_cache_key, relabel_table
from core.workspace import CheckpointSpec, Workspace

TABLE_KEY_LENGTH = 24  # hex digits of `prediction_cache_key` in a table's file name


def safe_file_name(text: str) -> str:
    """`text` as one file-name part: letters, digits, `-`, `_` and `.` kept, anything else (`/`, spaces) as `_`."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))


def spec_class_names(spec: CheckpointSpec, dataset: Dataset) -> tuple[tuple[str, ...] | None, str | None]:
    """Class names for a workspace checkpoint: `(None, None)` when its own header names them (a TaxaLens file),
    else its `classes` file, else (with a note) the dataset's sorted classes."""
    if stored_preprocessing_key(spec.path) is not None:
        return None, None
    if spec.classes is not None:
        return read_class_names(spec.classes), None
    return dataset.class_names, "class names assumed to be the dataset's sorted classes (set `classes` to be sure)"


def model_identity(workspace: Workspace, spec: CheckpointSpec, dataset: Dataset) -> dict:
    """What a prediction of one image depends on besides the image: the checkpoint's sha256 and the preprocessing
    (`checkpoint`, `preprocessing`); read from the file's header, without loading weights or importing torch.

    For a TaxaLens checkpoint the preprocessing is its card's (`ModelCard.preprocessing_key()`); for another format,
    the workspace's arch, the class list and the timm version (whose default configs the model's transform takes)."""
    preprocessing = stored_preprocessing_key(spec.path)
    if preprocessing is None:
        class_names, _ = spec_class_names(spec, dataset)
        preprocessing = {"arch": spec.arch, "classes": list(class_names or ()), "timm": timm_version()}
    return {"checkpoint": file_sha256(spec.path), "preprocessing": preprocessing}


def predictions_dir(workspace: Workspace) -> Path:
    """The folder of the workspace's predictions tables (and, under `store/`, the per-sample stores)."""
    return workspace.cache_dir / "predictions"


def predictions_path(workspace: Workspace, name: str, *, dataset: Dataset | None = None,
                     max_stamp_age_s: float | None = None) -> Path:
    """Where the predictions table of checkpoint `name` on the workspace dataset is (or would be) cached: keyed by
    checkpoint, preprocessing and dataset fingerprint (`Dataset.fingerprint(max_age_s=max_stamp_age_s)`: the file
    stamps taken when the dataset was loaded, re-read when older than `max_stamp_age_s`)."""
    dataset = dataset if dataset is not None else workspace.load_dataset()
    identity = model_identity(workspace, workspace.checkpoint(name), dataset)
    key = prediction_cache_key(identity["checkpoint"], dataset_fingerprint(dataset, max_age_s=max_stamp_age_s),
                               identity["preprocessing"])
    return predictions_dir(workspace) / f"{safe_file_name(name)}-{key}.parquet"


def store_path(workspace: Workspace, name: str, *, dataset: Dataset | None = None) -> Path:
    """The per-sample prediction store (`core.prediction_store`) of checkpoint `name` under its current weights
    and preprocessing."""
    dataset = dataset if dataset is not None else workspace.load_dataset()
    identity = model_identity(workspace, workspace.checkpoint(name), dataset)
    return store_folder(predictions_dir(workspace), safe_file_name(name),
                        model_cache_key(identity["checkpoint"], identity["preprocessing"]))


def stored_predictions(workspace: Workspace, name: str, *, dataset: Dataset | None = None) -> PredictionTable | None:
    """The cached predictions table of checkpoint `name` on the current data and weights (labels as the dataset
    gives them now), or `None` when it has not been computed; reads it without importing torch."""
    dataset = dataset if dataset is not None else workspace.load_dataset()
    path = predictions_path(workspace, name, dataset=dataset)
    return relabel_table(load_predictions(path), dataset.samples) if path.is_file() else None
