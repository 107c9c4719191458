"""Cross-validated (out-of-fold) probabilities by retraining: the `finetune` mode of `python -m cli crossval`.

A model's probabilities on its own training images are memorised labels; each fold's model here never saw the
images it predicts (folds keep every specimen whole, `core.crossval.crossval_folds`). The linear-probe mode needs no
torch and lives in `core.crossval`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pandas as pd

from core.crossval import NOT_HELD_OUT, CrossvalError, crossval_folds
from core.dataset import Dataset
from core.predictions import PredictionTable, build_prediction_table
from core.ranking import OUT_OF_SAMPLE_SPLITS
from models.checkpoints import ModelCard, load_checkpoint
from models.distributed import init_distributed
from models.inference import run_inference
from models.train import TrainConfig, TrainResult, train_model

logger = logging.getLogger(__name__)

HELD_OUT = "heldout"  # split value of a fold's held-out training rows while that fold trains


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
    `core.ranking.rank_label_issues`. Under torchrun every rank trains (DDP) and rank 0 predicts; other ranks get
    `None` for the table. Returns the table and the folds' training results.
    """
    context = init_distributed()
    out_dir = Path(out_dir)
    samples = dataset.samples
    train_mask = (samples["split"] == "train").to_numpy()
    assignment = crossval_folds(samples[train_mask], n_folds=n_folds, seed=seed)
    for message in assignment.messages:
        logger.warning(message)
    folds = np.full(len(samples), NOT_HELD_OUT, dtype=np.int64)
    folds[train_mask] = assignment.folds
    others = samples[samples["split"].isin(OUT_OF_SAMPLE_SPLITS).to_numpy()]
    held_parts: list[tuple[pd.DataFrame, np.ndarray, np.ndarray]] = []
    other_sum: dict[str, np.ndarray] = {}
    other_emb: dict[str, np.ndarray] = {}
    results = []
    class_names: tuple[str, ...] | None = None
    for fold in range(n_folds):
        held_out = folds == fold
        fold_data = replace(dataset, samples=samples.assign(split=samples["split"].where(~held_out, HELD_OUT)))

        def fold_progress(event: dict, fold: int = fold) -> None:
            if progress is not None:
                progress({**event, "fold": fold + 1, "folds": n_folds})

        result = train_model(fold_data, config, out_dir / f"fold{fold + 1}", progress=fold_progress)
        results.append(result)
        if not context.is_main:
            continue
        model, card = load_checkpoint(result.checkpoint_path, device=config.device or "cpu")
        if class_names is None:
            class_names = card.class_names
        elif card.class_names != class_names:  # folds train the dataset's classes; only a bug reaches this
            raise CrossvalError(f"fold {fold + 1} trained classes {card.class_names}, fold 1 {class_names}")
        rows = samples[held_out]
        inference = run_inference(model, card, pd.concat([rows, others]), num_workers=0, batch_size=batch_size)
        held = inference.rows < len(rows)
        held_parts.append((rows.iloc[inference.rows[held]], inference.pred_probs[held], inference.embeddings[held]))
        for row, probs, emb in zip(inference.rows[~held] - len(rows), inference.pred_probs[~held],
                                   inference.embeddings[~held], strict=True):
            sample_id = str(others["sample_id"].iloc[row])
            other_sum[sample_id] = other_sum.get(sample_id, 0.0) + probs / n_folds
            other_emb.setdefault(sample_id, emb)
    context.barrier()
    if not context.is_main:
        return None, results
    other_rows = others[others["sample_id"].isin(list(other_sum))]
    other_ids = other_rows["sample_id"].tolist()
    frame = pd.concat([*(p[0] for p in held_parts), other_rows], ignore_index=True)
    probs = np.concatenate([*(p[1] for p in held_parts), *([np.stack([other_sum[s] for s in other_ids])]
                                                          if other_ids else [])])
    # held-out rows carry their fold model's embedding, val/test rows fold 1's: each fold is its own space
    embeddings = np.concatenate([*(p[2] for p in held_parts), *([np.stack([other_emb[s] for s in other_ids])]
                                                               if other_ids else [])])
    return build_prediction_table(
        frame["sample_id"].tolist(),
        probs / probs.sum(axis=1, keepdims=True),
        embeddings,
        labels=frame["label"].tolist(),
        splits=frame["split"].tolist(),
        specimen_ids=frame["specimen_id"].tolist(),
        class_names=class_names or (),
        meta={"checkpoint": f"cv{n_folds}", "cross_validated": True, "mode": "finetune", "folds": n_folds,
              "seed": seed, "messages": list(assignment.messages),
              "fold_macro_f1": [round(r.best_macro_f1, 4) for r in results]},
    ), results
