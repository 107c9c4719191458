"""The curation loop simulated end to end: noisy training labels -> train -> rank label issues -> a simulated reviewer
fixes the top of the queue with the recorded truth -> curated export -> retrain, and the clean val macro-F1 before
and after. `benchmarks/bench_loop.py` prints its table; `tests/models/test_loop.py` runs it with fast settings.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from core.dataset import load_dataset
from core.demo import generate_demo_dataset
from core.export import export_curated_labels
from core.labelstore import NewEvent, open_label_store
from core.ranking import rank_label_issues
from core.training_data import load_training_dataset
from models.checkpoints import load_checkpoint
from models.crossval import cross_validated_predictions
from models.inference import run_inference, table_from_result
from models.train import TrainConfig, train_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopSettings:
    """One experiment."""

    scale: float = 1.0  # demo dataset size multiplier (1.0: about 1,200 images)
    noise: float = 0.25  # share of training specimens given a wrong label on top of the demo's own flips
    review_factor: float = 1.5  # the reviewer checks the top review_factor x (noisy training images) of the queue
    img_size: int = 64  # training input side
    epochs: int = 14  # per training run
    folds: int = 2  # cross-validation folds for out-of-sample training probabilities
    max_minutes: float | None = None  # per training run
    seed: int = 0
    threads: int | None = 1  # torch threads (1 is fastest on a busy shared CPU)


@dataclass(frozen=True)
class LoopOutcome:
    """What the loop did and what it bought."""

    n_train: int
    n_noisy: int  # training images whose given label is wrong before review
    n_reviewed: int
    n_fixed: int  # wrong labels the reviewer corrected
    precision_at_k: float  # share of reviewed samples that were wrong
    macro_f1_before: float  # clean val macro-F1 of the model trained on the noisy labels
    macro_f1_after: float  # ... of the model retrained on the curated export
    seconds: float


def inject_noise(manifest: pd.DataFrame, truth: pd.Series, *, share: float, seed: int) -> pd.DataFrame:
    """Give `share` of the training specimens another class's label (whole specimens); val gets its true labels."""
    rng = np.random.default_rng(seed)
    frame = manifest.copy()
    val = frame["split"] == "val"
    frame.loc[val, "label"] = truth[val]  # the clean validation split the outcome is measured on
    train_specimens = np.array(sorted(frame.loc[~val, "specimen_id"].unique()))
    chosen = rng.choice(train_specimens, size=int(round(share * len(train_specimens))), replace=False)
    classes = sorted(frame["label"].unique())
    for specimen in chosen:
        rows = frame.index[(frame["specimen_id"] == specimen) & ~val]
        current = truth[rows[0]]
        frame.loc[rows, "label"] = rng.choice([c for c in classes if c != current])
    return frame


def run_loop(settings: LoopSettings, work: Path) -> LoopOutcome:
    """Run the whole loop once in the empty folder `work` (demo data, two trainings, a cross-validated ranking);
    progress goes to this module's logger."""
    started = time.monotonic()
    data = work / "data"
    samples = generate_demo_dataset(data, seed=settings.seed, scale=settings.scale)
    truth_by_path = {s.path: s.true_label for s in samples}
    base = load_dataset(data / "manifest.csv", verify="none")  # assigns the specimen-safe split
    manifest = base.samples[["sample_id", "label", "split", "specimen_id"]].rename(columns={"sample_id": "path"})
    truth = manifest["path"].map(truth_by_path)
    noisy = inject_noise(manifest, truth, share=settings.noise, seed=settings.seed)
    noisy.to_csv(data / "noisy.csv", index=False)
    dataset = load_training_dataset(data / "noisy.csv", root=data)
    train = dataset.split("train")
    wrong = set(train["sample_id"][train["label"].to_numpy() != train["sample_id"].map(truth_by_path).to_numpy()])
    logger.info("%d images, %d train, %d noisy training labels", len(dataset), len(train), len(wrong))

    config = TrainConfig(arch="resnet10t", img_size=settings.img_size, epochs=settings.epochs, batch_size=64,
                         lr=3e-3, weight_decay=0.02, patience=settings.epochs, seed=settings.seed,
                         max_minutes=settings.max_minutes, num_threads=settings.threads)
    before = train_model(dataset, config, work / "before")
    logger.info("before: val macro-F1 %.3f", before.best_macro_f1)

    model, card = load_checkpoint(before.checkpoint_path, device="cpu")
    table = table_from_result(run_inference(model, card, dataset.samples, num_workers=0), dataset.samples, card)
    cv_table, _ = cross_validated_predictions(dataset, config, work / "cv", n_folds=settings.folds,
                                              seed=settings.seed)
    ranking = rank_label_issues(table, cv_table=cv_table)
    queue = ranking.frame[ranking.frame["split"] == "train"]
    k = int(round(settings.review_factor * len(wrong)))
    reviewed = queue.head(k)

    store = open_label_store(f"sqlite:///{work / 'labels.db'}")
    store.migrate()
    events = []
    for sample_id, label in zip(reviewed["sample_id"], reviewed["label"], strict=True):
        true = truth_by_path[sample_id]
        action = "relabel" if true != label else "confirm"
        events.append(NewEvent(sample_id, action, "simulated-reviewer", label=true, given_label=label))
    store.record_many(events)
    n_fixed = sum(e.action == "relabel" for e in events)
    export_curated_labels(dataset, store, data / "curated.csv")
    store.close()
    curated = load_training_dataset(data / "curated.csv", root=data)
    logger.info("reviewed %d, fixed %d of %d noisy labels", k, n_fixed, len(wrong))

    after = train_model(curated, replace(config), work / "after")
    logger.info("after: val macro-F1 %.3f", after.best_macro_f1)
    return LoopOutcome(
        n_train=len(train), n_noisy=len(wrong), n_reviewed=k, n_fixed=n_fixed,
        precision_at_k=n_fixed / max(k, 1), macro_f1_before=before.best_macro_f1,
        macro_f1_after=after.best_macro_f1, seconds=time.monotonic() - started,
    )
