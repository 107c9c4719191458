"""Batched predictions: a DataLoader over the dataset, the model's own preprocessing, a cached predictions table."""

from __future__ import annotations

import json
import logging
import os
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


def _cache_identity(workspace: Workspace, spec: CheckpointSpec, dataset: SampleSet) -> dict:
    """Everything the cached table depends on, computable without loading weights."""
    from models.checkpoints import file_sha256

    card = read_model_card(spec.path)
    if card is not None:
        preprocessing = card.preprocessing_key()
    else:
        class_names, _ = spec_class_names(spec, dataset)
        preprocessing = {"arch": spec.arch, "classes": list(class_names or ()), "timm": timm.__version__}
    return {"checkpoint": file_sha256(spec.path), "dataset": dataset.fingerprint(), "preprocessing": preprocessing}


def predictions_path(workspace: Workspace, name: str, *, dataset: SampleSet | None = None) -> Path:
    """Where the predictions of checkpoint `name` on the workspace dataset are (or would be) cached."""
    dataset = dataset if dataset is not None else workspace.load_dataset()
    identity = _cache_identity(workspace, workspace.checkpoint(name), dataset)
    key = prediction_cache_key(identity["checkpoint"], identity["dataset"], identity["preprocessing"])
    return workspace.cache_dir / "predictions" / f"{safe_file_name(name)}-{key}.parquet"


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
) -> PredictionTable:
    """Predictions of checkpoint `name` on every usable sample, from the cache when nothing changed.

    A hit performs no forward pass; labels and splits are refreshed from the dataset on every read.
    Images that fail to decode are listed in `<cache>/<name>-<key>.skipped.csv` and left out of the table.
    """
    dataset = dataset if dataset is not None else workspace.load_dataset()
    path = predictions_path(workspace, name, dataset=dataset)
    if path.is_file() and not force:
        logger.debug("predictions of %s read from the cache %s", name, path)
        return relabel_table(load_predictions(path), dataset.samples)
    logger.info("predicting %d images with %s", len(dataset.samples), name)
    model, card = load_workspace_model(workspace, name, dataset=dataset, device=device)
    result = run_inference(model, card, dataset.samples, batch_size=batch_size, num_workers=num_workers,
                           progress=progress)
    meta = {"checkpoint": name, "checkpoint_sha256": card.sha256, "dataset_fingerprint": dataset.fingerprint(),
            "preprocessing": card.preprocessing_key(), "source_format": card.source_format,
            "created": pd.Timestamp.now(tz="UTC").isoformat(), "n_failed": len(result.failed)}
    table = table_from_result(result, dataset.samples, card, meta)
    save_predictions(table, path)
    result.failed.to_csv(path.with_suffix(".skipped.csv"), index=False)
    if len(result.failed):
        logger.warning("%d image(s) could not be decoded and are left out; listed in %s", len(result.failed),
                       path.with_suffix(".skipped.csv"))
    logger.debug("%d predictions of %s cached in %s", len(table), name, path)
    return table


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
