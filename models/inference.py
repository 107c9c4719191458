"""Batched predictions: a DataLoader over the dataset, the model's own preprocessing, a cached predictions table."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
from timm.data import create_transform
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from core.dataset import Dataset as SampleSet
from core.images import ImageError, load_image_rgb
from core.pools import Pool, PoolPredictions
from core.prediction_store import (
    StoredPredictions,
    file_stamps,
    model_cache_key,
    read_store,
    store_folder,
    write_part,
)
from core.predictions import (
    PredictionTable,
    load_predictions,
    prediction_cache_key,
    relabel_table,
    save_predictions,
    table_for_samples,
)
from core.workspace import CheckpointSpec, Workspace
from models.checkpoints import ModelCard, load_checkpoint, model_device, read_class_names, read_model_card

logger = logging.getLogger(__name__)

TABLE_KEY_LENGTH = 24  # hex digits of `prediction_cache_key` in a table's file name
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class InferenceResult:
    """Raw outputs for the rows of a samples frame that could be decoded."""

    rows: np.ndarray  # (M,) positions in the samples frame
    pred_probs: np.ndarray  # (M, K) float32
    embeddings: np.ndarray  # (M, D) float32
    failed: pd.DataFrame  # sample_id, reason, detail for images that could not be decoded


def build_eval_transform(card: ModelCard) -> Callable:
    """The eval transform from the card's timm data config (resize, centre crop, to tensor, normalise)."""
    return create_transform(**card.data_config(), is_training=False)


def build_decode_transform(card: ModelCard) -> Callable:
    """The eval transform up to a uint8 CHW tensor (resize, centre crop), as timm builds it for its prefetcher.

    Normalisation is left to `normalise_batch` on the device: workers then ship a quarter of the bytes and the
    float conversion runs once per batch, vectorised (on the GPU when there is one).
    """
    return create_transform(**card.data_config(), is_training=False, use_prefetcher=True)


def normalise_batch(images: torch.Tensor, card: ModelCard) -> torch.Tensor:
    """uint8 `(B, C, H, W)` from `build_decode_transform` -> float32 normalised like `build_eval_transform`."""
    mean = torch.tensor(card.mean, device=images.device).view(1, -1, 1, 1) * 255.0
    std = torch.tensor(card.std, device=images.device).view(1, -1, 1, 1) * 255.0
    return images.float().sub_(mean).div_(std)


class ImageDataset(Dataset):
    """Decoded, resized images of a samples frame (uint8 tensors); a bad image yields zeros and its error."""

    def __init__(self, paths: list[str], transform: Callable, input_size: tuple[int, int, int]) -> None:
        self.paths = paths
        self.transform = transform
        self.input_size = input_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        try:
            return self.transform(load_image_rgb(self.paths[index])), index, ""
        except ImageError as exc:
            return torch.zeros(self.input_size, dtype=torch.uint8), index, f"{exc.reason}\t{exc.detail}"


def forward_with_embeddings(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and penultimate features; timm models split features and head, other modules give no features."""
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        features = model.forward_features(images)
        pre_logits = model.forward_head(features, pre_logits=True)
        logits = model.forward_head(features)
        return logits, pre_logits.flatten(1)
    logits = model(images)
    return logits, logits.new_zeros((logits.shape[0], 0))


def default_num_workers() -> int:
    """Decoding workers: leave one core to the model on CPU; more on a GPU host."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores - 1)) if torch.cuda.is_available() else max(0, min(4, cores // 2))


def run_inference(
    model: nn.Module,
    card: ModelCard,
    samples: pd.DataFrame,
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    sampler: Sampler | None = None,
    progress: Progress | None = None,
) -> InferenceResult:
    """Predict every row of `samples` (needs `sample_id` and `path`) under `torch.inference_mode()`.

    Workers decode and resize to uint8; the batch is normalised where the model runs. On CUDA: pinned memory,
    non-blocking copies, channels_last and fp16/bf16 autocast.
    """
    device = model_device(model)
    dataset = ImageDataset(samples["path"].tolist(), build_decode_transform(card), tuple(card.input_size))
    workers = default_num_workers() if num_workers is None else num_workers
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
    on_cuda = device.type == "cuda"
    amp_dtype = torch.bfloat16 if on_cuda and torch.cuda.is_bf16_supported() else torch.float16
    total = len(sampler) if sampler is not None else len(dataset)
    probs, feats, rows, failed, done = [], [], [], [], 0
    with torch.inference_mode():
        for images, index, errors in loader:
            images = normalise_batch(images.to(device, non_blocking=on_cuda), card)
            if on_cuda:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=on_cuda):
                logits, embedding = forward_with_embeddings(model, images)
            good = np.array([not e for e in errors], dtype=bool)
            probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy()[good])
            feats.append(embedding.float().cpu().numpy()[good])
            rows.append(index.numpy()[good])
            for i, error in zip(index.tolist(), errors, strict=True):
                if error:
                    reason, detail = error.split("\t", 1)
                    failed.append((samples["sample_id"].iloc[i], reason, detail))
            done += len(index)
            if progress is not None:
                progress(done, total)
    k = card.num_classes
    return InferenceResult(
        rows=np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64),
        pred_probs=np.concatenate(probs) if probs else np.zeros((0, k), dtype=np.float32),
        embeddings=np.concatenate(feats) if feats else np.zeros((0, 0), dtype=np.float32),
        failed=pd.DataFrame(failed, columns=["sample_id", "reason", "detail"]),
    )


def table_from_result(
    result: InferenceResult, samples: pd.DataFrame, card: ModelCard, meta: dict | None = None
) -> PredictionTable:
    """A predictions table for the decoded rows of `samples`."""
    return table_for_samples(samples.iloc[result.rows], result.pred_probs, result.embeddings,
                             class_names=card.class_names, meta=meta)


def spec_class_names(spec: CheckpointSpec, dataset: SampleSet) -> tuple[tuple[str, ...] | None, str | None]:
    """Class names for a workspace checkpoint: its own card, its `classes` file, or (with a note) the dataset's."""
    if read_model_card(spec.path) is not None:
        return None, None
    if spec.classes is not None:
        return read_class_names(spec.classes), None
    return dataset.class_names, "class names assumed to be the dataset's sorted classes (set `classes` to be sure)"


def load_workspace_model(
    workspace: Workspace, name: str, *, dataset: SampleSet | None = None, device: str | None = None
) -> tuple[nn.Module, ModelCard]:
    """Load the workspace checkpoint `name` with the arch/classes/trust settings of `taxalens.toml`."""
    spec = workspace.checkpoint(name)
    dataset = dataset if dataset is not None else workspace.load_dataset()
    class_names, note = spec_class_names(spec, dataset)
    model, card = load_checkpoint(spec.path, arch=spec.arch, class_names=class_names, trust_checkpoint=spec.trust,
                                  device=device)
    if note:
        from dataclasses import replace

        card = replace(card, notes=card.notes + (note,))
    return model, card


def model_identity(workspace: Workspace, spec: CheckpointSpec, dataset: SampleSet) -> dict:
    """What a prediction of one image depends on besides the image: the checkpoint's sha256 and the preprocessing
    (`checkpoint`, `preprocessing`); computable without loading weights."""
    from models.checkpoints import file_sha256

    card = read_model_card(spec.path)
    if card is not None:
        preprocessing = card.preprocessing_key()
    else:
        class_names, _ = spec_class_names(spec, dataset)
        preprocessing = {"arch": spec.arch, "classes": list(class_names or ()), "timm": timm.__version__}
    return {"checkpoint": file_sha256(spec.path), "preprocessing": preprocessing}


def predictions_path(workspace: Workspace, name: str, *, dataset: SampleSet | None = None) -> Path:
    """Where the predictions table of checkpoint `name` on the workspace dataset is (or would be) cached: keyed by
    checkpoint, preprocessing and dataset fingerprint."""
    dataset = dataset if dataset is not None else workspace.load_dataset()
    identity = model_identity(workspace, workspace.checkpoint(name), dataset)
    key = prediction_cache_key(identity["checkpoint"], dataset.fingerprint(), identity["preprocessing"])
    return predictions_dir(workspace) / f"{safe_file_name(name)}-{key}.parquet"


def predictions_dir(workspace: Workspace) -> Path:
    """The folder of the workspace's predictions tables (and, under `store/`, the per-sample stores)."""
    return workspace.cache_dir / "predictions"


def store_path(workspace: Workspace, name: str, *, dataset: SampleSet | None = None) -> Path:
    """The per-sample prediction store (`core.prediction_store`) of checkpoint `name` under its current weights
    and preprocessing."""
    dataset = dataset if dataset is not None else workspace.load_dataset()
    identity = model_identity(workspace, workspace.checkpoint(name), dataset)
    return store_folder(predictions_dir(workspace), safe_file_name(name),
                        model_cache_key(identity["checkpoint"], identity["preprocessing"]))


def predict_workspace(
    workspace: Workspace,
    name: str,
    *,
    dataset: SampleSet | None = None,
    progress: Progress | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | None = None,
    force: bool = False,
) -> PredictionTable | None:
    """Predictions of checkpoint `name` on every usable sample, computing only what no cache holds.

    The table for the current dataset is read when it exists (no forward pass). Otherwise only the images the
    per-sample store (`store_path`) lacks under their current size and mtime are predicted (`force`: all of them),
    appended to the store, and the table is assembled and saved; tables of `name` for older datasets or weights,
    with their side files, are removed. Labels and splits are refreshed from the dataset on every read. Images that
    fail to decode are listed in `<table>.skipped.csv` and left out of the table (and not retried until they change).

    Under torchrun every rank predicts its share of the missing images into the store (which must be on a
    filesystem all nodes share) and rank 0 assembles the table; the other ranks return None.
    """
    import torch.distributed as dist

    from models.distributed import init_distributed, shutdown_distributed

    dataset = dataset if dataset is not None else workspace.load_dataset()
    path = predictions_path(workspace, name, dataset=dataset)
    joined_here = not (dist.is_available() and dist.is_initialized())  # a caller's process group is left to it
    context = init_distributed()
    if path.is_file() and not force:
        logger.debug("predictions of %s read from the cache %s", name, path)
        if joined_here:
            shutdown_distributed(context)
        return relabel_table(load_predictions(path), dataset.samples) if context.is_main else None
    samples = dataset.samples
    folder = store_path(workspace, name, dataset=dataset)
    sizes, mtimes = file_stamps(samples["path"].tolist())
    stored = None if force else read_store(folder)
    fresh = stored.positions(samples["sample_id"], sizes, mtimes) if stored is not None else \
        np.full(len(samples), -1)
    missing = np.flatnonzero(fresh < 0)
    logger.info("predicting %d of %d images with %s (%d from the store)", len(missing), len(samples), name,
                len(samples) - len(missing))
    model = card = None
    if len(missing):
        target = device or (str(context.device()) if context.enabled else None)
        model, card = load_workspace_model(workspace, name, dataset=dataset, device=target)
        todo = samples.iloc[missing].reset_index(drop=True)
        sampler = None
        if context.enabled:
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(range(len(todo)), num_replicas=context.world_size, rank=context.rank,
                                         shuffle=False, drop_last=False)
        result = run_inference(model, card, todo, batch_size=batch_size, num_workers=num_workers, sampler=sampler,
                               progress=progress if context.is_main else None)
        write_part(folder, _store_rows(result, todo, sizes[missing], mtimes[missing], card), tag=str(context.rank))
    context.barrier()
    table = None
    if context.is_main:
        table = _assemble_table(workspace, name, dataset, folder, sizes, mtimes, path, card)
    if joined_here:
        shutdown_distributed(context)
    else:
        context.barrier()  # the other ranks wait until the table is there
    return table


def _store_rows(result: InferenceResult, todo: pd.DataFrame, sizes: np.ndarray, mtimes: np.ndarray,
                card: ModelCard) -> StoredPredictions:
    """Store rows for what `run_inference` saw of `todo`: decoded images with their outputs, failures with zeros."""
    done = pd.Index(todo["sample_id"].iloc[result.rows])
    failed = result.failed
    fail_rows = pd.Index(todo["sample_id"]).get_indexer(failed["sample_id"])
    rows = np.concatenate([result.rows, fail_rows]).astype(np.int64)
    d = result.embeddings.shape[1] if len(result.rows) else 0
    probs = np.concatenate([result.pred_probs.reshape(len(result.rows), card.num_classes),
                            np.zeros((len(fail_rows), card.num_classes), np.float32)])
    feats = np.concatenate([result.embeddings.reshape(len(result.rows), d), np.zeros((len(fail_rows), d), np.float32)])
    reasons = np.array([""] * len(done) + failed["reason"].astype(str).tolist(), dtype=object)
    details = np.array([""] * len(done) + failed["detail"].astype(str).tolist(), dtype=object)
    return StoredPredictions(todo["sample_id"].to_numpy(object)[rows], sizes[rows], mtimes[rows], probs, feats,
                             reasons, details, tuple(card.class_names))


def _assemble_table(workspace: Workspace, name: str, dataset: SampleSet, folder: Path, sizes: np.ndarray,
                    mtimes: np.ndarray, path: Path, card: ModelCard | None) -> PredictionTable:
    """The predictions table of the current dataset from the store; saved at `path`, older tables of `name`
    removed."""
    samples = dataset.samples
    stored = read_store(folder)
    if stored is None:
        raise FileNotFoundError(f"the prediction store {folder} disappeared while predicting; run the prediction again")
    fresh = stored.positions(samples["sample_id"], sizes, mtimes)
    if (fresh < 0).any():
        lost = samples["sample_id"].iloc[np.flatnonzero(fresh < 0)[:3]].tolist()
        raise FileNotFoundError(f"{int((fresh < 0).sum())} image(s) changed while being predicted (e.g. {lost}); "
                                "run the prediction again")
    rows = stored.take(fresh)
    ok = rows.reasons == ""
    if card is None:
        card = read_model_card(workspace.checkpoint(name).path)
    identity = model_identity(workspace, workspace.checkpoint(name), dataset)
    meta = {"checkpoint": name, "checkpoint_sha256": identity["checkpoint"],
            "dataset_fingerprint": dataset.fingerprint(), "preprocessing": identity["preprocessing"],
            "source_format": card.source_format if card is not None else "",
            "created": pd.Timestamp.now(tz="UTC").isoformat(), "n_failed": int((~ok).sum())}
    table = table_for_samples(samples[ok], rows.pred_probs[ok], rows.embeddings[ok], class_names=stored.class_names,
                              meta=meta)
    save_predictions(table, path)
    failed = pd.DataFrame({"sample_id": rows.sample_ids[~ok], "reason": rows.reasons[~ok],
                           "detail": rows.details[~ok]})
    failed.to_csv(path.with_suffix(".skipped.csv"), index=False)
    if len(failed):
        logger.warning("%d image(s) could not be decoded and are left out; listed in %s", len(failed),
                       path.with_suffix(".skipped.csv"))
    for old in stale_table_files(path):
        old.unlink(missing_ok=True)
        logger.info("removed %s (predictions of %s for an older dataset or weights)", old, name)
    logger.debug("%d predictions of %s cached in %s", len(table), name, path)
    return table


def predict_pool(
    workspace: Workspace,
    name: str,
    pool: Pool,
    *,
    dataset: SampleSet | None = None,
    progress: Progress | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | None = None,
) -> PoolPredictions:
    """Checkpoint `name`'s predictions on the images of `pool`, predicting only those its per-sample store
    (`store_path`, shared with the dataset: pool ids never collide with dataset ids) lacks under their current size
    and mtime. Images that fail to decode are stored as failures (`PoolPredictions.failed`), not retried until they
    change."""
    dataset = dataset if dataset is not None else workspace.load_dataset()
    folder = store_path(workspace, name, dataset=dataset)
    samples = pool.samples
    sizes, mtimes = file_stamps(samples["path"].tolist())
    stored = read_store(folder)
    fresh = stored.positions(samples["sample_id"], sizes, mtimes) if stored is not None else \
        np.full(len(samples), -1)
    missing = np.flatnonzero(fresh < 0)
    logger.info("predicting %d of %d images of pool %s with %s", len(missing), len(samples), pool.name, name)
    if len(missing):
        model, card = load_workspace_model(workspace, name, dataset=dataset, device=device)
        todo = samples.iloc[missing].reset_index(drop=True)
        result = run_inference(model, card, todo, batch_size=batch_size, num_workers=num_workers, progress=progress)
        write_part(folder, _store_rows(result, todo, sizes[missing], mtimes[missing], card), tag=f"pool-{pool.name}")
    elif progress is not None:
        progress(len(samples), len(samples))
    found = cached_pool_predictions(workspace, name, pool, dataset=dataset)
    if found is None:
        raise FileNotFoundError(f"images of pool {pool.name!r} changed while being predicted; predict it again")
    return found


def cached_pool_predictions(workspace: Workspace, name: str, pool: Pool, *,
                            dataset: SampleSet | None = None) -> PoolPredictions | None:
    """Checkpoint `name`'s stored predictions on every image of `pool`, or None while any image lacks one (new or
    changed since): `predict_pool` fills them in."""
    dataset = dataset if dataset is not None else workspace.load_dataset()
    stored = read_store(store_path(workspace, name, dataset=dataset))
    samples = pool.samples
    if stored is None:
        return None if len(samples) else PoolPredictions(pool.name, np.zeros(0, object), np.zeros(0, object),
                                                        np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), ())
    sizes, mtimes = file_stamps(samples["path"].tolist())
    fresh = stored.positions(samples["sample_id"], sizes, mtimes)
    if (fresh < 0).any():
        return None
    rows = stored.take(fresh)
    ok = rows.reasons == ""
    failed = pd.DataFrame({"sample_id": rows.sample_ids[~ok], "reason": rows.reasons[~ok],
                           "detail": rows.details[~ok]})
    return PoolPredictions(pool.name, rows.sample_ids[ok], samples["path"].to_numpy(object)[ok],
                           rows.pred_probs[ok], rows.embeddings[ok], stored.class_names, failed)


def stale_table_files(current: Path) -> list[Path]:
    """Files beside the predictions table `current` that belong to an older table of the same checkpoint (another
    key): the table, its skipped list and its cross-validated tables."""
    stem = current.name.removesuffix(".parquet")
    prefix = stem[: -(TABLE_KEY_LENGTH + 1)]
    pattern = re.compile(rf"{re.escape(prefix)}-([0-9a-f]{{{TABLE_KEY_LENGTH}}})(\.parquet|\.skipped\.csv|\.cv-.+)")
    return sorted(p for p in current.parent.glob(f"{prefix}-*") if p.is_file() and
                  (m := pattern.fullmatch(p.name)) is not None and m.group(1) != stem[-TABLE_KEY_LENGTH:])


def cached_predictions(workspace: Workspace, name: str, *, dataset: SampleSet | None = None) -> PredictionTable | None:
    """The cached table for `name`, or `None` when it has not been computed for the current data and weights."""
    dataset = dataset if dataset is not None else workspace.load_dataset()
    path = predictions_path(workspace, name, dataset=dataset)
    return relabel_table(load_predictions(path), dataset.samples) if path.is_file() else None


def safe_file_name(text: str) -> str:
    """`text` as one file-name part: letters, digits, `-`, `_` and `.` kept, anything else (`/`, spaces) as `_`."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))


def write_run_summary(out_dir: Path, table: PredictionTable, failed: pd.DataFrame, card: ModelCard) -> None:
    """Side files of a CLI run: skipped images and a JSON summary."""
    failed.to_csv(out_dir / "skipped.csv", index=False)
    summary = {"n_samples": len(table), "n_failed": len(failed), "arch": card.arch, "classes": list(card.class_names),
               "source_format": card.source_format, "checkpoint_sha256": card.sha256, "notes": list(card.notes)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")


def predict_to_dir(
    dataset: SampleSet,
    checkpoint_path: str | Path,
    out_dir: str | Path,
    *,
    arch: str | None = None,
    class_names: tuple[str, ...] | None = None,
    trust_checkpoint: bool = False,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | None = None,
    progress: Progress | None = None,
) -> Path | None:
    """Predict `dataset` with one checkpoint into `out_dir/predictions.parquet` (+ skipped.csv, summary.json).

    Under torchrun each rank predicts its DistributedSampler shard and writes it; rank 0 merges the shards into one
    table (the sampler's padding duplicates are dropped) and returns its path; other ranks return `None`.
    """
    from torch.utils.data.distributed import DistributedSampler

    from models.distributed import init_distributed, shutdown_distributed

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    context = init_distributed()
    target = device or (str(context.device()) if context.enabled else None)
    model, card = load_checkpoint(checkpoint_path, arch=arch, class_names=class_names,
                                  trust_checkpoint=trust_checkpoint, device=target)
    sampler = None
    if context.enabled:
        sampler = DistributedSampler(range(len(dataset.samples)), num_replicas=context.world_size, rank=context.rank,
                                     shuffle=False, drop_last=False)
    result = run_inference(model, card, dataset.samples, batch_size=batch_size, num_workers=num_workers,
                           sampler=sampler, progress=progress if context.is_main else None)
    meta = {"checkpoint": Path(checkpoint_path).name, "checkpoint_sha256": card.sha256,
            "dataset_fingerprint": dataset.fingerprint(), "preprocessing": card.preprocessing_key(),
            "source_format": card.source_format, "world_size": context.world_size}
    if not context.enabled:
        table = table_from_result(result, dataset.samples, card, meta)
        path = save_predictions(table, out_dir / "predictions.parquet")
        write_run_summary(out_dir, table, result.failed, card)
        return path
    shard_dir = out_dir / ".shards"
    shard_dir.mkdir(exist_ok=True)
    np.savez(shard_dir / f"rank{context.rank}.npz", rows=result.rows, probs=result.pred_probs, feats=result.embeddings)
    result.failed.to_csv(shard_dir / f"rank{context.rank}.failed.csv", index=False)
    context.barrier()
    path = None
    if context.is_main:
        path = _merge_shards(shard_dir, context.world_size, dataset, card, meta, out_dir)
    shutdown_distributed(context)
    return path


def _merge_shards(shard_dir: Path, world_size: int, dataset: SampleSet, card: ModelCard, meta: dict,
                  out_dir: Path) -> Path:
    shards = [np.load(shard_dir / f"rank{r}.npz") for r in range(world_size)]
    rows = np.concatenate([s["rows"] for s in shards])
    probs = np.concatenate([s["probs"] for s in shards])
    feats = np.concatenate([s["feats"] for s in shards])
    rows, first = np.unique(rows, return_index=True)  # DistributedSampler pads by repeating samples
    failed = pd.concat([pd.read_csv(shard_dir / f"rank{r}.failed.csv", dtype=str) for r in range(world_size)])
    failed = failed.drop_duplicates("sample_id").reset_index(drop=True)
    result = InferenceResult(rows=rows, pred_probs=probs[first], embeddings=feats[first], failed=failed)
    table = table_from_result(result, dataset.samples, card, meta)
    path = save_predictions(table, out_dir / "predictions.parquet")
    write_run_summary(out_dir, table, failed, card)
    for file in shard_dir.iterdir():
        file.unlink()
    shard_dir.rmdir()
    return path
