"""Cross-validated (out-of-fold) probabilities by retraining: the `finetune` mode of `python -m cli crossval`.

A model's probabilities on its own training images are memorised labels; each fold's model here never saw the
images it predicts (folds keep every specimen whole, `core.crossval.crossval_folds`). The linear-probe mode needs no
torch and lives in `core.crossval`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from core.crossval import NOT_HELD_OUT, CrossvalError, crossval_folds
from core.dataset import Dataset
from core.predictions import PredictionTable, build_prediction_table
from core.ranking import OUT_OF_SAMPLE_SPLITS
from models.checkpoints import ModelCard, load_checkpoint
from models.distributed import DistContext, init_distributed
from models.inference import run_inference
from models.train import TrainConfig, TrainResult, train_model

logger = logging.getLogger(__name__)

HELD_OUT = "heldout"  # split value of a fold's held-out training rows while that fold trains
GATHER_TIMEOUT = timedelta(days=7)  # under torchrun: how long a rank that finished its folds waits for the others


def recipe_config(card: ModelCard | None, *, arch: str | None = None, **overrides: object) -> TrainConfig:
    """The `TrainConfig` a checkpoint was trained with (its card's `training.config`), with `overrides` applied.

    A checkpoint without a recorded recipe (a foreign file) gets the defaults for its arch and input size. Fields
    the recorded config has but this version's `TrainConfig` lacks are dropped. Raises `CrossvalError` when not even
    the architecture is known.
    """
    known = {f.name for f in fields(TrainConfig)}
    recorded = dict(((card.training or {}).get("config") or {}) if card is not None else {})
    values = {key: value for key, value in recorded.items() if key in known}
    if not values:
        arch = arch or (card.arch if card is not None else None)
        if not arch:
            raise CrossvalError("the checkpoint records no training recipe and no architecture; add `arch = ...` to "
                                "its [[checkpoints]] entry in taxalens.toml or use --mode probe")
        values = {"arch": arch}
        if card is not None and card.input_size:
            values["img_size"] = int(card.input_size[-1])
        logger.warning("checkpoint records no training recipe; fine-tuning folds with the defaults for %s at %s px",
                       values["arch"], values.get("img_size", TrainConfig.img_size))
    if isinstance(values.get("img_size"), list | tuple):
        values["img_size"] = int(values["img_size"][-1])
    values.update({key: value for key, value in overrides.items() if value is not None})
    return TrainConfig(**values)


def cross_validated_predictions(
    dataset: Dataset,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    n_folds: int = 5,
    seed: int = 0,
    progress: Callable[[dict], None] | None = None,
    batch_size: int = 64,
) -> tuple[PredictionTable | None, list[TrainResult]]:
    """Out-of-fold probabilities for the `train` rows of `dataset`, and fold-averaged ones for val/test rows.

    Each of `n_folds` models trains (in `out_dir/fold<i>`) on the other folds' training rows with `config`,
    early-stops on the dataset's `val` split, and predicts its held-out fold and the val/test rows (whose table rows
    are the mean over folds; they saw val only through early stopping). Training rows `crossval_folds` cannot hold
    out (a class with one specimen) stay in every fold and get no row. Pass the table as `cv_table` to
    `core.ranking.rank_label_issues`.

    Under torchrun the folds are split across the ranks (fold i on rank i % world size, each trained whole on its
    process without DDP, with the recipe's own batch size, so a fold model is the same whether one process or many
    train it); every rank predicts with its own fold models and rank 0 gathers the probabilities (no shared folder
    needed) and returns the table and every fold's result; other ranks return `None` and their own folds' results.
    """
    context = init_distributed()
    gather_group = _gather_group(context)  # made before training: every rank must join it at the same point
    out_dir = Path(out_dir)
    samples = dataset.samples
    train_mask = (samples["split"] == "train").to_numpy()
    assignment = crossval_folds(samples[train_mask], n_folds=n_folds, seed=seed)
    for message in assignment.messages:
        logger.warning(message)
    folds = np.full(len(samples), NOT_HELD_OUT, dtype=np.int64)
    folds[train_mask] = assignment.folds
    others = samples[samples["split"].isin(OUT_OF_SAMPLE_SPLITS).to_numpy()]
    # a rank's GPU under torchrun; the fold trains alone on this process (`_training_alone`: no DDP)
    fold_config = replace(config, device=config.device or (f"cuda:{context.local_rank}" if context.backend == "nccl"
                                                           else None))
    mine: list[_FoldPart] = []
    for fold in range(context.rank, n_folds, context.world_size):
        held_out = folds == fold
        fold_data = replace(dataset, samples=samples.assign(split=samples["split"].where(~held_out, HELD_OUT)))

        def fold_progress(event: dict, fold: int = fold) -> None:
            if progress is not None:
                progress({**event, "fold": fold + 1, "folds": n_folds, "rank": context.rank})

        with _training_alone():
            result = train_model(fold_data, fold_config, out_dir / f"fold{fold + 1}", progress=fold_progress)
        model, card = load_checkpoint(result.checkpoint_path, device=fold_config.device or "cpu")
        rows = samples[held_out]
        inference = run_inference(model, card, pd.concat([rows, others]), num_workers=0, batch_size=batch_size)
        held = inference.rows < len(rows)
        mine.append(_FoldPart(fold=fold, rank=context.rank, class_names=tuple(card.class_names), result=result,
                              held_positions=np.flatnonzero(held_out)[inference.rows[held]],
                              held_probs=inference.pred_probs[held], held_embeddings=inference.embeddings[held],
                              other_rows=inference.rows[~held] - len(rows), other_probs=inference.pred_probs[~held],
                              other_embeddings=inference.embeddings[~held]))
    parts = _gather_to_main(mine, context, gather_group)
    if parts is None:
        return None, [part.result for part in mine]
    parts.sort(key=lambda part: part.fold)
    class_names = parts[0].class_names if parts else ()
    for part in parts:  # folds train the dataset's classes; only a bug reaches this
        if part.class_names != class_names:
            raise CrossvalError(f"fold {part.fold + 1} trained classes {part.class_names}, fold 1 {class_names}")
    other_sum: dict[int, np.ndarray] = {}
    other_emb: dict[int, np.ndarray] = {}
    for part in parts:
        for row, probs, emb in zip(part.other_rows, part.other_probs, part.other_embeddings, strict=True):
            other_sum[int(row)] = other_sum.get(int(row), 0.0) + probs / n_folds
            other_emb.setdefault(int(row), emb)  # fold 1's embedding: each fold is its own space
    other_positions = sorted(other_sum)
    frame = pd.concat([*(samples.iloc[part.held_positions] for part in parts), others.iloc[other_positions]],
                      ignore_index=True)
    probs = np.concatenate([*(part.held_probs for part in parts),
                            *([np.stack([other_sum[r] for r in other_positions])] if other_positions else [])])
    # held-out rows carry their fold model's embedding, val/test rows fold 1's: each fold is its own space
    embeddings = np.concatenate([*(part.held_embeddings for part in parts),
                                 *([np.stack([other_emb[r] for r in other_positions])] if other_positions else [])])
    results = [part.result for part in parts]
    return build_prediction_table(
        frame["sample_id"].tolist(),
        probs / probs.sum(axis=1, keepdims=True),
        embeddings,
        labels=frame["label"].tolist(),
        splits=frame["split"].tolist(),
        specimen_ids=frame["specimen_id"].tolist(),
        class_names=class_names,
        meta={"checkpoint": f"cv{n_folds}", "cross_validated": True, "mode": "finetune", "folds": n_folds,
              "seed": seed, "messages": list(assignment.messages),
              "fold_macro_f1": [round(r.best_macro_f1, 4) for r in results],
              "world_size": context.world_size, "fold_ranks": [part.rank for part in parts]},
    ), results


@dataclass(frozen=True)
class _FoldPart:
    """One fold's model's predictions, as a rank sends them to rank 0."""

    fold: int  # 0-based fold index
    rank: int  # the rank that trained it
    class_names: tuple[str, ...]
    result: TrainResult
    held_positions: np.ndarray  # (n,) positions in dataset.samples of the held-out rows predicted
    held_probs: np.ndarray  # (n, K)
    held_embeddings: np.ndarray  # (n, D)
    other_rows: np.ndarray  # (m,) positions in the val/test rows
    other_probs: np.ndarray  # (m, K)
    other_embeddings: np.ndarray  # (m, D)


@contextmanager
def _training_alone() -> Iterator[None]:
    """`train_model` trains on this process alone (no DDP) inside the block, also under torchrun: it reads the
    process group from WORLD_SIZE (`models.distributed.init_distributed`), so the block shows it a world of one.
    (A `train_model` argument would say the same; `models/train.py` is one of the sources the cached demo workspace
    is keyed on, so it is left as it is.)"""
    before = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("WORLD_SIZE", None)
        else:
            os.environ["WORLD_SIZE"] = before


def _gather_group(context: DistContext):
    """A gloo group for gathering the folds' results: CPU objects whatever the training backend, and a timeout long
    enough for a rank with one fold fewer to wait while the others train theirs (the default group's is 30 min)."""
    if not context.enabled:
        return None
    import torch.distributed as dist

    return dist.new_group(backend="gloo", timeout=GATHER_TIMEOUT)


def _gather_to_main(parts: list[_FoldPart], context: DistContext, group) -> list[_FoldPart] | None:
    """Every rank's fold parts on rank 0 (a list), None on the other ranks; the parts themselves without torchrun."""
    if not context.enabled:
        return parts
    import torch.distributed as dist

    gathered: list[list[_FoldPart]] | None = [[] for _ in range(context.world_size)] if context.is_main else None
    dist.gather_object(parts, gathered, dst=0, group=group)
    return [part for rank_parts in gathered for part in rank_parts] if context.is_main else None
