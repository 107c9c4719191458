"""Fine-tuning a timm classifier on a TaxaLens dataset: the recipe, early stopping on val macro-F1, resume, DDP."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
import torch.distributed as dist
from timm.data import create_transform, resolve_model_data_config
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from core.dataset import Dataset
from core.errors import TaxaLensError
from core.images import load_image_rgb
from core.scores import ClassCounts, class_scores, headline_scores
from models.augment import BatchAugment
from models.checkpoints import ModelCard, load_checkpoint, save_taxalens_checkpoint, select_device
from models.distributed import DistContext, init_distributed
from models.sampling import DistributedShuffleSampler, DistributedWeightedSampler, class_balance_weights

logger = logging.getLogger(__name__)

STATE_NAME = "last.pt"  # resumable training state (weights, optimizer, history), rewritten every epoch
BEST_NAME = "best.safetensors"  # the best checkpoint so far, a TaxaLens checkpoint
RUN_NAME = "run.json"  # config, history and outcome, rewritten every epoch
_STATE_FORMAT = "taxalens-train-state/1"
Progress = Callable[[dict], None]


class TrainingError(TaxaLensError, ValueError):
    """A training run that cannot start or resume as asked; the message names the values and the fix."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train; every field is recorded in the checkpoint's `training` metadata."""

    arch: str = "resnet10t"  # timm architecture (ignored with init_checkpoint: the checkpoint's arch is used)
    img_size: int = 224  # input side in pixels; the demo uses 64
    epochs: int = 30  # maximum number of epochs
    batch_size: int = 64  # images per step per process
    lr: float = 1e-3  # peak learning rate of the head; lower stages get lr * layer_decay ** depth
    min_lr_ratio: float = 0.01  # the cosine schedule ends at lr * min_lr_ratio
    weight_decay: float = 0.05  # AdamW decoupled weight decay (never on biases and norm weights)
    layer_decay: float = 0.8  # lr multiplier per stage going down from the head (1.0 = off)
    label_smoothing: float = 0.1  # cross-entropy label smoothing
    warmup_epochs: float = 1.0  # linear warmup length, in epochs (fractions allowed)
    drop_rate: float = 0.0  # dropout before the classifier (timm drop_rate)
    balance: str = "sampler"  # "sampler" (class-balanced draws) | "loss" (class-weighted loss) | "none"
    balance_power: float = 0.5  # 1 = every class equally often, 0.5 = square-root balancing, 0 = natural frequency
    rare_threshold: int = 20  # classes with fewer train images get the strong augmentation
    patience: int = 5  # stop after this many epochs without a better val macro-F1
    seed: int = 0  # seeds weights, sampling and augmentation
    num_workers: int = 0  # DataLoader worker processes
    pretrained: bool = False  # start from ImageNet weights in timm's own cache (never downloads)
    init_checkpoint: str | None = None  # start from any checkpoint TaxaLens can load
    new_head: bool = False  # with init_checkpoint: replace its classifier with one for the dataset's classes
    max_minutes: float | None = None  # time budget: the schedule is fitted to it and training stops when spent
    cache_images: bool | None = None  # keep decoded, resized images in memory (None: when they fit in cache_max_mb)
    cache_max_mb: int = 1024  # the in-memory image cache's limit for cache_images=None
    amp: bool = True  # mixed precision on CUDA (bfloat16 where supported, else float16 with loss scaling)
    channels_last: bool = True  # channels-last memory format on CUDA
    device: str | None = None  # "cuda", "cpu", ... (default: the best available; under torchrun, the rank's GPU)
    num_threads: int | None = None  # torch CPU threads during the run (1 is fastest on a busy shared CPU); None: as is

    def __post_init__(self) -> None:
        if self.balance not in ("sampler", "loss", "none"):
            raise ValueError(f"balance must be 'sampler', 'loss' or 'none', got {self.balance!r}")
        if self.img_size < 16 or self.epochs < 1 or self.batch_size < 2:  # a batch of one image breaks BatchNorm
            raise ValueError(f"img_size >= 16, epochs >= 1 and batch_size >= 2 are needed, got "
                             f"{self.img_size}, {self.epochs}, {self.batch_size}")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must lie in (0, 1], got {self.layer_decay}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


@dataclass(frozen=True)
class TrainResult:
    """The outcome of `train_model`."""

    checkpoint_path: Path  # the best epoch's TaxaLens .safetensors
    best_macro_f1: float  # val macro-F1 of that epoch
    best_epoch: int  # 1-based epoch of the best checkpoint
    history: list[dict]  # one dict per finished epoch (losses, val metrics, lr, seconds)
    config: TrainConfig  # the config the run used
    data_hash: str  # sha256 of the training table (sample ids, labels, splits) and of the manifest file
    stop_reason: str = "epochs"  # "epochs" | "early_stopping" | "time_budget"
    weights_sha256: str = ""  # sha256 over the final in-memory weights (every DDP rank computes its own)
    run_json: Path | None = None  # the run record written next to the checkpoint
    extra: dict = field(default_factory=dict)  # class counts, device, world size


# --------------------------------------------------------------------------------------------------- public API


def train_model(
    dataset: Dataset,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    progress: Progress | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train on `dataset.split("train")`, early-stop on the macro-F1 of `dataset.split("val")`, write `out_dir`.

    `out_dir` receives `best.safetensors` (a TaxaLens checkpoint whose card's `training` holds the config, the data
    hash and per-epoch metrics), `run.json` (the same as JSON) and `last.pt` (resumable state). `resume=True`
    continues from `last.pt` when it is there and fits this data and config. `progress` gets dicts with an `event`
    key: `decode`, `step`, `epoch`, `done` (with `eta_s` where known). Under torchrun it trains with
    DistributedDataParallel and only rank 0 writes. Raises `TrainingError` for data that cannot be trained on.
    """
    threads_before = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        return _train(dataset, config, Path(out_dir), progress=progress, resume=resume)
    finally:
        torch.set_num_threads(threads_before)


def _train(dataset: Dataset, config: TrainConfig, out_dir: Path, *, progress: Progress | None,
           resume: bool) -> TrainResult:
    """The loop: one `train_one_epoch` and one `evaluate` per epoch, then bookkeeping, until a stop reason."""
    run = _start_run(dataset, config, out_dir, progress=progress, resume=resume)
    state = run.state
    stop_reason = "epochs"
    while state.epoch < state.planned_epochs:
        epoch = state.epoch + 1
        epoch_start = time.monotonic()
        loss_sum, seen, out_of_time = train_one_epoch(run, epoch)
        _sync_buffers(run.model, run.meta.context)
        val = evaluate(run.model, run.val_loader, run.prepare, run.criterion, len(run.meta.class_names),
                       run.amp_dtype, run.meta.device, run.meta.context)
        record = {"epoch": epoch, "train_loss": _all_mean(loss_sum, seen, run.meta.context),
                  **val.summary(run.meta.class_names), "lr": run.optimizer.param_groups[-1]["lr"],
                  "seconds": time.monotonic() - epoch_start, "images_per_s": seen * run.meta.context.world_size /
                  max(time.monotonic() - epoch_start, 1e-9), "partial": out_of_time}
        stop_reason = _end_epoch(run, record, out_of_time)
        if stop_reason != "epochs":
            break
    return _finish_run(run, stop_reason)


@dataclass
class _Run:
    """What a training run holds between epochs (built by `_start_run`)."""

    model: nn.Module  # the bare model (weights saved and restored)
    train_model: nn.Module  # the model the steps call: `model`, or it wrapped in DistributedDataParallel
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    prepare: _Prepare
    augment: BatchAugment
    sampler: DistributedWeightedSampler | DistributedShuffleSampler
    train_loader: DataLoader
    val_loader: DataLoader
    amp_dtype: torch.dtype | None
    meta: _RunMeta
    state: _RunState
    out_dir: Path
    notify: Progress
    started: float  # time.monotonic() at the start
    budget_s: float  # the time budget in seconds (inf: none)
    warmup_steps: int
    first_epoch: int  # finished epochs when this process started (resume)
    epochs_started: float  # time.monotonic() when the first epoch of this process started


def _start_run(dataset: Dataset, config: TrainConfig, out_dir: Path, *, progress: Progress | None,
               resume: bool) -> _Run:
    """Model, data, optimizer and state of a run (restored from `last.pt` when resuming)."""
    context = init_distributed()
    notify = progress if (progress is not None and context.is_main) else _ignore
    started = time.monotonic()

    train_rows, val_rows = dataset.split("train"), dataset.split("val")
    model, class_names, data_config, arch, init_notes = _build_model(config, dataset.class_names)
    _check_classes(train_rows, val_rows, class_names, config)
    index = {name: i for i, name in enumerate(class_names)}
    train_labels = np.array([index[label] for label in train_rows["label"]], dtype=np.int64)
    val_labels = np.array([index[label] for label in val_rows["label"]], dtype=np.int64)
    counts = np.bincount(train_labels, minlength=len(class_names))
    data_hash = training_data_hash(dataset)

    device = _pick_device(config, context)
    cuda = device.type == "cuda"
    torch.manual_seed(config.seed)  # identical start on every rank (DDP also broadcasts rank 0's weights)
    model = model.to(device)
    if cuda and config.channels_last:
        model = model.to(memory_format=torch.channels_last)

    cache = _should_cache(config, len(train_rows) + len(val_rows))
    eval_resize = create_transform(**data_config, is_training=False, normalize=False)
    all_paths = list(train_rows["path"]) + list(val_rows["path"])
    images = _ImageSource(all_paths, eval_resize, cache=cache, progress=notify, workers=max(1, config.num_workers))
    strong = counts[train_labels] < config.rare_threshold
    train_set = _TrainSet(images, np.arange(len(train_rows)), train_labels, strong)
    val_positions = np.arange(len(train_rows), len(all_paths))[context.rank :: context.world_size]
    val_set = _EvalSet(images, val_positions, val_labels[context.rank :: context.world_size])

    sampler = _build_sampler(config, train_labels, counts, context)
    loader_kwargs = {"num_workers": config.num_workers, "pin_memory": cuda,
                     "persistent_workers": config.num_workers > 0}
    drop_last = len(sampler) > config.batch_size  # a batch of 1 breaks BatchNorm
    train_loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, drop_last=drop_last,
                              **loader_kwargs)
    val_loader = DataLoader(val_set, batch_size=config.batch_size * 2, shuffle=False, **loader_kwargs)

    optimizer = build_optimizer(model, lr=config.lr, weight_decay=config.weight_decay,
                                layer_decay=config.layer_decay)
    loss_weights = None
    if config.balance == "loss":
        loss_weights = torch.as_tensor(class_balance_weights(counts, power=config.balance_power), dtype=torch.float32)
    criterion = nn.CrossEntropyLoss(weight=loss_weights, label_smoothing=config.label_smoothing).to(device)
    amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if (cuda and config.amp) \
        else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    state = _RunState(planned_epochs=config.epochs)
    state_path = out_dir / STATE_NAME
    if resume and state_path.is_file():
        state = _restore(state_path, model, optimizer, scaler, config=config, arch=arch, class_names=class_names,
                         data_hash=data_hash)

    train_model_ = model
    if context.enabled:
        from torch.nn.parallel import DistributedDataParallel

        train_model_ = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)

    prepare = _Prepare(device, data_config["mean"], data_config["std"], channels_last=cuda and config.channels_last)
    meta = _RunMeta(arch=arch, class_names=class_names, data_config=data_config, data_hash=data_hash,
                    counts=counts, dataset=dataset, config=config, device=device, context=context,
                    notes=init_notes, cache=cache)
    if context.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    return _Run(
        model=model, train_model=train_model_, optimizer=optimizer, scaler=scaler, criterion=criterion,
        prepare=prepare, augment=BatchAugment(), sampler=sampler, train_loader=train_loader, val_loader=val_loader,
        amp_dtype=amp_dtype, meta=meta, state=state, out_dir=out_dir, notify=notify, started=started,
        budget_s=config.max_minutes * 60 if config.max_minutes is not None else math.inf,
        warmup_steps=int(round(config.warmup_epochs * len(train_loader))), first_epoch=state.epoch,
        epochs_started=time.monotonic(),
    )


def train_one_epoch(run: _Run, epoch: int) -> tuple[float, int, bool]:
    """One pass over the training loader (`epoch` is 1-based): the scheduled lr per step, mixed precision, progress
    events. Returns (summed loss, images seen, out of time); stops early when the time budget is spent."""
    config, context, state = run.meta.config, run.meta.context, run.state
    steps_per_epoch = len(run.train_loader)
    run.sampler.set_epoch(epoch)
    torch.manual_seed(config.seed * 1000 + epoch * 10 + context.rank)  # augmentation draws, per rank
    run.model.train()
    loss_sum, seen, out_of_time = 0.0, 0, False
    for step, (images_u8, targets, rare) in enumerate(run.train_loader, start=1):
        factor = lr_factor(state.global_step, total_steps=state.planned_epochs * steps_per_epoch,
                           warmup_steps=run.warmup_steps, min_ratio=config.min_lr_ratio)
        for group in run.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        inputs = run.prepare(images_u8, augment=run.augment, strong=rare)
        targets = targets.to(run.meta.device, non_blocking=True)
        with torch.autocast(device_type=run.meta.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
            loss = run.criterion(run.train_model(inputs), targets)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        state.global_step += 1
        loss_sum += float(loss.detach()) * len(targets)
        seen += len(targets)
        out_of_time = _all_ranks_any(time.monotonic() - run.started > run.budget_s, context)
        if step == steps_per_epoch or step % max(1, steps_per_epoch // 10) == 0 or out_of_time:
            done_steps = state.global_step - run.first_epoch * steps_per_epoch
            elapsed = time.monotonic() - run.epochs_started
            remaining = state.planned_epochs * steps_per_epoch - state.global_step
            run.notify({"event": "step", "epoch": epoch, "epochs": state.planned_epochs, "step": step,
                        "steps": steps_per_epoch, "loss": loss_sum / max(seen, 1),
                        "lr": run.optimizer.param_groups[-1]["lr"], "elapsed_s": time.monotonic() - run.started,
                        "eta_s": _eta(elapsed, done_steps, remaining, run.budget_s - (time.monotonic() - run.started))})
        if out_of_time:
            break
    return loss_sum, seen, out_of_time


def _end_epoch(run: _Run, record: dict, out_of_time: bool) -> str:
    """Record the epoch, keep the best weights, fit the schedule to the time budget, write the checkpoint, state
    and run record; returns the stop reason ("epochs" to go on)."""
    state, config, epoch = run.state, run.meta.config, record["epoch"]
    steps_per_epoch = len(run.train_loader)
    state.history.append(record)
    state.epoch = epoch
    improved = record["val_macro_f1"] > state.best_macro_f1 + 1e-6
    if improved:
        state.best_macro_f1, state.best_epoch = record["val_macro_f1"], epoch
        state.best_state = {k: v.detach().to("cpu", copy=True) for k, v in run.model.state_dict().items()}
    # Fit the cosine schedule to the time budget: fewer planned epochs when the budget cannot pay for all.
    if run.budget_s < math.inf:
        per_epoch = (time.monotonic() - run.epochs_started) / max(epoch - run.first_epoch, 1)
        affordable = epoch + int((run.budget_s - (time.monotonic() - run.started)) // per_epoch)
        state.planned_epochs = max(epoch, min(state.planned_epochs, affordable))
    logger.info("epoch %d/%d: val macro-F1 %.4f (best %.4f, epoch %d)", epoch, state.planned_epochs,
                record["val_macro_f1"], state.best_macro_f1, state.best_epoch)
    stop_reason = "epochs"
    if out_of_time or (epoch >= state.planned_epochs and state.planned_epochs < config.epochs):
        stop_reason = "time_budget"
    elif epoch - state.best_epoch >= config.patience:
        stop_reason = "early_stopping"
    if run.meta.context.is_main:
        if improved:
            save_taxalens_checkpoint(run.model, _card(run.meta, state, "running"), run.out_dir / BEST_NAME)
        _save_state(run.out_dir / STATE_NAME, run.model, run.optimizer, run.scaler, state, run.meta)
        _write_run_json(run.out_dir / RUN_NAME, run.meta, state, "running", run.out_dir / BEST_NAME)
    eta = _eta(time.monotonic() - run.epochs_started, state.global_step - run.first_epoch * steps_per_epoch,
               state.planned_epochs * steps_per_epoch - state.global_step,
               run.budget_s - (time.monotonic() - run.started))
    run.notify({"event": "epoch", **record, "epochs": state.planned_epochs, "best_macro_f1": state.best_macro_f1,
                "best_epoch": state.best_epoch, "elapsed_s": time.monotonic() - run.started, "eta_s": eta})
    return stop_reason


def _finish_run(run: _Run, stop_reason: str) -> TrainResult:
    """Load the best weights, write the final checkpoint and run record, and say so."""
    state, meta, out_dir = run.state, run.meta, run.out_dir
    if state.best_state is None:
        raise TrainingError(f"no epoch finished in {out_dir} (epochs={meta.config.epochs}, resumed at epoch "
                            f"{run.first_epoch}); raise --epochs or start without --resume")
    run.model.load_state_dict(state.best_state)
    weights_sha256 = weights_digest(run.model)
    checkpoint_path = out_dir / BEST_NAME
    run_json = out_dir / RUN_NAME
    if meta.context.is_main:
        save_taxalens_checkpoint(run.model, _card(meta, state, stop_reason), checkpoint_path)
        _write_run_json(run_json, meta, state, stop_reason, checkpoint_path)
    meta.context.barrier()
    run.notify({"event": "done", "checkpoint_path": str(checkpoint_path), "best_macro_f1": state.best_macro_f1,
                "best_epoch": state.best_epoch, "stop_reason": stop_reason,
                "elapsed_s": time.monotonic() - run.started})
    return TrainResult(
        checkpoint_path=checkpoint_path,
        best_macro_f1=state.best_macro_f1,
        best_epoch=state.best_epoch,
        history=list(state.history),
        config=meta.config,
        data_hash=meta.data_hash,
        stop_reason=stop_reason,
        weights_sha256=weights_sha256,
        run_json=run_json,
        extra={"class_counts": dict(zip(meta.class_names, meta.counts.tolist(), strict=True)),
               "device": str(meta.device), "world_size": meta.context.world_size, "image_cache": meta.cache},
    )


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float, layer_decay: float) -> torch.optim.AdamW:
    """AdamW over `build_param_groups(...)`; each group's `lr` and `initial_lr` already carry its layer scale."""
    groups = build_param_groups(model, lr=lr, weight_decay=weight_decay, layer_decay=layer_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))


def build_param_groups(model: nn.Module, *, lr: float, weight_decay: float, layer_decay: float) -> list[dict]:
    """Parameter groups with layer-wise lr decay: depth d below the head gets `lr * layer_decay ** d`.

    Depth follows the model's coarse timm `group_matcher` (stem, then one group per stage; the classifier is the
    top), or timm's `auto_group_layers` for models without one. timm's own `param_groups_layer_decay` groups by
    block (`coarse=False`) and leaves the lr to timm's schedulers via `lr_scale`; here the scaled lr is written into
    each group so any loop (ours sets `lr = initial_lr * schedule`) applies it. Biases and norm weights (1-d) get
    no weight decay. Each group has `name` (`layer_<i>_decay|no_decay`), `layer`, `lr_scale`, `lr`, `initial_lr`.
    """
    from timm.models import group_parameters
    from timm.optim._param_groups import auto_group_layers

    if hasattr(model, "group_matcher"):
        layer_of = group_parameters(model, model.group_matcher(coarse=True), reverse=True)
    else:
        layer_of = auto_group_layers(model)
    top = max(layer_of.values()) if layer_of else 0
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_of.get(name, top)
        decay = param.ndim > 1 and weight_decay > 0
        key = f"layer_{layer}_{'decay' if decay else 'no_decay'}"
        if key not in groups:
            scale = layer_decay ** (top - layer)
            groups[key] = {"name": key, "layer": layer, "lr_scale": scale, "lr": lr * scale, "initial_lr": lr * scale,
                           "weight_decay": weight_decay if decay else 0.0, "params": []}
        groups[key]["params"].append(param)
    return sorted(groups.values(), key=lambda g: (g["layer"], g["name"]))


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """The schedule's multiplier at `step`: linear warmup from 1/warmup to 1, then cosine down to `min_ratio`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def training_data_hash(dataset: Dataset) -> str:
    """sha256 over what a run learns from: sorted (sample_id, label, split) rows, plus the manifest file's bytes."""
    digest = hashlib.sha256()
    rows = dataset.samples[["sample_id", "label", "split"]].sort_values("sample_id")
    for sample_id, label, split in rows.itertuples(index=False):
        digest.update(f"{sample_id}\t{label}\t{split}\n".encode())
    source = Path(dataset.source)
    if dataset.source != "imagefolder" and source.is_file():
        digest.update(hashlib.sha256(source.read_bytes()).hexdigest().encode())
    return digest.hexdigest()


def weights_digest(model: nn.Module) -> str:
    """sha256 over a model's state dict (names, shapes and bytes), e.g. to check DDP ranks agree."""
    module = getattr(model, "module", model)
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        array = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}{tuple(array.shape)}{array.dtype}".encode())
        digest.update(array.reshape(-1).view(torch.uint8).numpy().tobytes() if array.numel() else b"")
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------- plumbing


def _ignore(_: dict) -> None:
    return None


@dataclass
class _RunState:
    planned_epochs: int  # epochs the cosine schedule spans (shrinks to fit a time budget)
    epoch: int = 0  # finished epochs
    global_step: int = 0
    best_macro_f1: float = -1.0
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best_state: dict | None = None


@dataclass(frozen=True)
class _RunMeta:
    arch: str
    class_names: tuple[str, ...]
    data_config: dict
    data_hash: str
    counts: np.ndarray
    dataset: Dataset
    config: TrainConfig
    device: torch.device
    context: DistContext
    notes: tuple[str, ...]
    cache: bool


def _build_model(config: TrainConfig, dataset_classes: tuple[str, ...]) -> tuple[nn.Module, tuple[str, ...], dict,
                                                                                   str, tuple[str, ...]]:
    notes: tuple[str, ...] = ()
    if config.init_checkpoint:
        model, card = load_checkpoint(config.init_checkpoint, device="cpu")
        arch = card.arch
        if arch == "torchscript":
            raise TrainingError(f"{config.init_checkpoint} is TorchScript, which cannot be fine-tuned; "
                                "give a timm checkpoint or train from --arch")
        missing = sorted(set(dataset_classes) - set(card.class_names))
        if config.new_head:
            model.reset_classifier(len(dataset_classes))
            class_names = tuple(dataset_classes)
            notes += (f"classifier of {config.init_checkpoint} replaced for {len(class_names)} classes",)
        elif missing:
            raise TrainingError(
                f"the training data names {len(missing)} class(es) that init checkpoint {config.init_checkpoint} "
                f"lacks: {missing[:10]}{' ...' if len(missing) > 10 else ''}; its classes are "
                f"{list(card.class_names)[:10]}{' ...' if card.num_classes > 10 else ''}. Relabel those samples to "
                "known classes, or pass --new-head to train a fresh classifier for the data's classes"
            )
        else:
            class_names = tuple(card.class_names)
            unused = sorted(set(class_names) - set(dataset_classes))
            if unused:
                notes += (f"{len(unused)} checkpoint class(es) have no data and are kept untrained: {unused[:10]}",)
        base = card.data_config()
    else:
        arch = config.arch
        try:
            with _hub_offline():
                model = timm.create_model(arch, pretrained=config.pretrained, num_classes=len(dataset_classes),
                                          drop_rate=config.drop_rate)
        except (OSError, RuntimeError) as exc:  # huggingface_hub's LocalEntryNotFoundError is an OSError
            if config.pretrained:
                raise TrainingError(f"ImageNet weights for {arch} are not in timm's cache ({type(exc).__name__}); "
                                    "train without --pretrained, or put the weights in the Hugging Face cache "
                                    "(HF_HOME) on a machine that may download") from exc
            raise
        class_names = tuple(dataset_classes)
        base = resolve_model_data_config(model)
    data_config = {**base, "input_size": (3, config.img_size, config.img_size)}
    return model, class_names, data_config, arch, notes


@contextmanager
def _hub_offline() -> Iterator[None]:
    """Hugging Face Hub lookups from the local cache only while pretrained weights are resolved (never download)."""
    try:
        from huggingface_hub import constants
    except ImportError:  # timm without the hub: it can only read local files anyway
        yield
        return
    before_env, before = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before
        if before_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before_env


def _check_classes(train_rows: pd.DataFrame, val_rows: pd.DataFrame, class_names: tuple[str, ...],
                   config: TrainConfig) -> None:
    if train_rows.empty:
        raise TrainingError("the dataset has no `train` rows; give a manifest with a split column or let the "
                            "loader assign one (leave `split` empty)")
    if val_rows.empty:
        raise TrainingError("the dataset has no `val` rows, so early stopping has nothing to measure; raise "
                            "val_fraction or mark some specimens `val` in the manifest")
    train_classes = set(train_rows["label"])
    data_classes = train_classes | set(val_rows["label"])
    no_train = sorted(data_classes - train_classes)
    if no_train:
        raise TrainingError(f"class(es) {no_train} have validation images but no training images; add training "
                            "images, relabel or exclude those samples")
    known = set(class_names)
    unknown = sorted(data_classes - known)
    if unknown:  # only reachable with an init checkpoint; _build_model reports it first
        raise TrainingError(f"labels {unknown} are not classes of the model {sorted(known)[:10]}")


def _pick_device(config: TrainConfig, context: DistContext) -> torch.device:
    if context.enabled:
        return context.device()
    return select_device(config.device)


def _should_cache(config: TrainConfig, n_images: int) -> bool:
    if config.cache_images is not None:
        return config.cache_images
    return n_images * 3 * config.img_size**2 <= config.cache_max_mb * 2**20


class _ImageSource:
    """uint8 (3, S, S) tensors of the eval resize/crop, decoded once into memory or on every access."""

    def __init__(self, paths: list[str], resize: Callable, *, cache: bool, progress: Progress, workers: int) -> None:
        self.paths = paths
        self.resize = resize
        self.cached: torch.Tensor | None = None
        if cache and paths:
            first = self._decode(0)
            self.cached = torch.empty((len(paths), *first.shape), dtype=torch.uint8)
            self.cached[0] = first
            step = max(1, len(paths) // 20)
            with ThreadPoolExecutor(max_workers=min(workers, 8)) as pool:  # PIL releases the GIL while decoding
                for i, tensor in enumerate(pool.map(self._decode, range(1, len(paths))), start=1):
                    self.cached[i] = tensor
                    if i % step == 0 or i == len(paths) - 1:
                        progress({"event": "decode", "done": i + 1, "total": len(paths)})

    def _decode(self, i: int) -> torch.Tensor:
        return self.resize(load_image_rgb(self.paths[i]))

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.cached[i] if self.cached is not None else self._decode(i)


class _TrainSet(TorchDataset):
    """(uint8 image, label, rare) triples; augmentation happens per batch on the device (`BatchAugment`)."""

    def __init__(self, images: _ImageSource, positions: np.ndarray, labels: np.ndarray, strong: np.ndarray) -> None:
        self.images, self.positions, self.labels, self.strong = images, positions, labels, strong

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, bool]:
        return self.images[int(self.positions[i])], int(self.labels[i]), bool(self.strong[i])


class _EvalSet(TorchDataset):
    def __init__(self, images: _ImageSource, positions: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.positions, self.labels = images, positions, labels

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[int(self.positions[i])], int(self.labels[i])


class _Prepare:
    """uint8 batch -> (augmented) normalised float batch on the device; copying uint8 moves 4x fewer bytes."""

    def __init__(self, device: torch.device, mean: tuple, std: tuple, *, channels_last: bool) -> None:
        self.device, self.channels_last = device, channels_last
        self.mean = torch.tensor(mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, images_u8: torch.Tensor, *, augment: BatchAugment | None = None,
                 strong: torch.Tensor | None = None) -> torch.Tensor:
        x = images_u8.to(self.device, non_blocking=True).float().div_(255)
        if augment is not None:
            strong = strong.to(self.device) if strong is not None else torch.zeros(len(x), dtype=torch.bool,
                                                                                     device=self.device)
            x = augment(x, strong)
        x = (x - self.mean) / self.std
        if augment is not None:
            x = augment.erase(x, strong)  # after normalising, so 0 fills with the mean colour
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def _build_sampler(config: TrainConfig, labels: np.ndarray, counts: np.ndarray,
                   context: DistContext) -> DistributedWeightedSampler | DistributedShuffleSampler:
    if config.balance == "sampler":
        per_class = class_balance_weights(counts, power=config.balance_power)
        return DistributedWeightedSampler(per_class[labels], num_samples=len(labels),
                                          num_replicas=context.world_size, rank=context.rank, seed=config.seed)
    return DistributedShuffleSampler(len(labels), num_replicas=context.world_size, rank=context.rank,
                                     seed=config.seed)


@dataclass
class _EvalResult:
    confusion: np.ndarray  # (K, K) counts, rows = truth
    loss_sum: float
    n: int

    def summary(self, class_names: tuple[str, ...]) -> dict:
        counts = ClassCounts.from_confusion(self.confusion)
        f1, present = class_scores(counts)["f1"], counts.support > 0
        scores = headline_scores(counts, ("accuracy", "macro_f1", "weighted_f1"))
        return {
            "val_loss": self.loss_sum / max(self.n, 1),
            **{f"val_{name}": float(value) for name, value in scores.items()},
            "val_per_class_f1": {name: round(float(f1[i]), 4) for i, name in enumerate(class_names) if present[i]},
        }


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, prepare: _Prepare, criterion: nn.Module, k: int,
             amp_dtype: torch.dtype | None, device: torch.device, context: DistContext) -> _EvalResult:
    """Val loss and the `(K, K)` confusion of `model` over `loader` (summed over ranks under DDP)."""
    model.eval()
    confusion = torch.zeros((k, k), dtype=torch.float64)
    loss_sum, n = 0.0, 0
    plain_ce = nn.CrossEntropyLoss(reduction="sum")
    for images_u8, targets in loader:
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(prepare(images_u8)).float()
        targets_d = targets.to(device)
        loss_sum += float(plain_ce(logits, targets_d))
        predicted = logits.argmax(dim=1).cpu()
        confusion += torch.bincount(targets * k + predicted, minlength=k * k).reshape(k, k).double()
        n += len(targets)
    if context.enabled:
        totals = torch.tensor([loss_sum, float(n)], dtype=torch.float64)
        dist.all_reduce(confusion)
        dist.all_reduce(totals)
        loss_sum, n = float(totals[0]), int(totals[1])
    return _EvalResult(confusion.numpy(), loss_sum, n)


def _all_ranks_any(flag: bool, context: DistContext) -> bool:
    if not context.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def _all_mean(total: float, count: int, context: DistContext) -> float:
    if context.enabled:
        values = torch.tensor([total, float(count)], dtype=torch.float64)
        dist.all_reduce(values)
        total, count = float(values[0]), int(values[1])
    return total / max(count, 1)


def _sync_buffers(model: nn.Module, context: DistContext) -> None:
    # DDP broadcasts buffers at the start of each forward, but the last forward's BatchNorm statistics are each
    # rank's own; take rank 0's so evaluation and the saved weights agree on every rank.
    if context.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)


def _eta(elapsed: float, done_steps: int, remaining_steps: int, budget_left: float) -> float | None:
    if done_steps <= 0:
        return None
    estimate = elapsed / done_steps * max(remaining_steps, 0)
    return float(min(estimate, max(budget_left, 0.0)))


def _training_metadata(meta: _RunMeta, state: _RunState, status: str) -> dict:
    dataset = meta.dataset
    return {
        "status": status,
        "config": asdict(meta.config),
        "data_hash": meta.data_hash,
        "data_source": dataset.source,
        "dataset_root": str(dataset.root),
        "class_counts_train": dict(zip(meta.class_names, meta.counts.tolist(), strict=True)),
        "n_train": int((dataset.samples["split"] == "train").sum()),
        "n_val": int((dataset.samples["split"] == "val").sum()),
        "best_epoch": state.best_epoch,
        "best_val_macro_f1": state.best_macro_f1,
        "epochs_run": state.epoch,
        "history": [{k: v for k, v in record.items() if k != "val_per_class_f1"} for record in state.history],
        "best_val_per_class_f1": next((r["val_per_class_f1"] for r in state.history
                                       if r["epoch"] == state.best_epoch), {}),
        "world_size": meta.context.world_size,
        "device": str(meta.device),
        "image_cache": meta.cache,
        "notes": list(meta.notes),
        "versions": {"torch": torch.__version__, "timm": timm.__version__},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z") if status != "running" else None,
    }


def _card(meta: _RunMeta, state: _RunState, status: str) -> ModelCard:
    config = meta.data_config
    return ModelCard(
        arch=meta.arch,
        class_names=meta.class_names,
        input_size=tuple(config["input_size"]),
        mean=tuple(float(v) for v in config["mean"]),
        std=tuple(float(v) for v in config["std"]),
        interpolation=str(config.get("interpolation", "bicubic")),
        crop_pct=float(config.get("crop_pct", 0.875)),
        crop_mode=str(config.get("crop_mode", "center")),
        training=_training_metadata(meta, state, status),
    )


def _write_run_json(path: Path, meta: _RunMeta, state: _RunState, status: str, checkpoint: Path) -> None:
    record = {"arch": meta.arch, "class_names": list(meta.class_names), "checkpoint": str(checkpoint),
              **_training_metadata(meta, state, status), "history": state.history}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _save_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                state: _RunState, meta: _RunMeta) -> None:
    payload = {
        "format": _STATE_FORMAT,
        "arch": meta.arch,
        "class_names": list(meta.class_names),
        "img_size": meta.config.img_size,
        "data_hash": meta.data_hash,
        "epoch": state.epoch,
        "global_step": state.global_step,
        "planned_epochs": state.planned_epochs,
        "best_macro_f1": state.best_macro_f1,
        "best_epoch": state.best_epoch,
        "history_json": json.dumps(state.history, default=str),
        "model": {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
        "best_state": state.best_state,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
    }
    tmp = path.with_suffix(".pt.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _restore(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, *,
             config: TrainConfig, arch: str, class_names: tuple[str, ...], data_hash: str) -> _RunState:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != _STATE_FORMAT:
        raise TrainingError(f"{path} is not a TaxaLens training state; start without --resume or use a fresh --out")
    saved = (payload["arch"], tuple(payload["class_names"]), payload["img_size"], payload["data_hash"])
    wanted = (arch, class_names, config.img_size, data_hash)
    labels = ("arch", "classes", "img_size", "data hash")
    differ = [f"{label}: saved {s!r} vs now {w!r}" for label, s, w in zip(labels, saved, wanted, strict=True)
              if s != w]
    if differ:
        shown = "; ".join(d if len(d) < 200 else d[:200] + "..." for d in differ)
        raise TrainingError(f"cannot resume from {path}: the run was for other data or another model ({shown}); "
                            "use a fresh --out directory or drop --resume")
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scaler.load_state_dict(payload["scaler"])
    return _RunState(
        planned_epochs=config.epochs,  # a new time budget is fitted again after the first resumed epoch
        epoch=int(payload["epoch"]),
        global_step=int(payload["global_step"]),
        best_macro_f1=float(payload["best_macro_f1"]),
        best_epoch=int(payload["best_epoch"]),
        history=json.loads(payload["history_json"]),
        best_state=payload["best_state"],
    )
