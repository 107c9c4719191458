"""Cross-validated (out-of-fold) probabilities for the training split, which label-issue ranking needs.

A model's probabilities on its own training images are memorised labels; each fold's model here never saw the
images it predicts (folds keep every specimen whole, `core.ranking.grouped_folds`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from core.dataset import Dataset
from core.predictions import PredictionTable, build_prediction_table
from core.ranking import grouped_folds
from models.checkpoints import load_checkpoint
from models.inference import run_inference
from models.train import TrainConfig, TrainResult, train_model

HELD_OUT = "heldout"  # split value of a fold's held-out training rows while that fold trains


def cross_validated_predictions(
    dataset: Dataset,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    n_folds: int = 5,
    seed: int = 0,
    progress: Callable[[dict], None] | None = None,
) -> tuple[PredictionTable, list[TrainResult]]:
    """Out-of-fold probabilities for every `train` row of `dataset`: a `PredictionTable` with split `train`.

    Each of `n_folds` models trains (in `out_dir/fold<i>`) on the other folds' training rows, early-stops on the
    dataset's `val` split, and predicts its held-out fold. Pass the result as `cv_table` to
    `core.ranking.rank_label_issues`. Returns the table and the folds' training results.
    """
    out_dir = Path(out_dir)
    samples = dataset.samples
    train_mask = (samples["split"] == "train").to_numpy()
    train_rows = samples[train_mask]
    folds = grouped_folds(train_rows, n_splits=n_folds, seed=seed)
    parts: list[tuple[pd.DataFrame, np.ndarray, np.ndarray]] = []
    results = []
    class_names: tuple[str, ...] | None = None
    for fold in range(n_folds):
        held_out = np.zeros(len(samples), dtype=bool)
        held_out[np.flatnonzero(train_mask)[folds == fold]] = True
        split = samples["split"].where(~held_out, HELD_OUT)
        fold_data = replace(dataset, samples=samples.assign(split=split))

        def fold_progress(event: dict, fold: int = fold) -> None:
            if progress is not None:
                progress({**event, "fold": fold + 1, "folds": n_folds})

        result = train_model(fold_data, config, out_dir / f"fold{fold + 1}", progress=fold_progress)
        results.append(result)
        model, card = load_checkpoint(result.checkpoint_path, device=config.device or "cpu")
        if class_names is None:
            class_names = card.class_names
        elif card.class_names != class_names:  # a fold can only lack a class if the whole training split does
            raise ValueError(f"fold {fold + 1} trained classes {card.class_names}, fold 1 {class_names}")
        rows = samples[held_out]
        inference = run_inference(model, card, rows, num_workers=0)
        parts.append((rows.iloc[inference.rows], inference.pred_probs, inference.embeddings))
    frame = pd.concat([p[0] for p in parts], ignore_index=True)
    return build_prediction_table(
        frame["sample_id"].tolist(),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
        labels=frame["label"].tolist(),
        splits=["train"] * len(frame),
        specimen_ids=frame["specimen_id"].tolist(),
        class_names=class_names or (),
        meta={"checkpoint": f"cv{n_folds}", "cross_validated": True, "folds": n_folds},
    ), results
