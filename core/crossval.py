"""Out-of-sample probabilities for every split: specimen-grouped folds, a linear probe on the stored embeddings, and
the cache of cross-validated tables kept beside the predictions they complete.

A checkpoint's probabilities on its own training images are memorised labels, so label-issue ranking cannot use
them (`core.ranking.out_of_sample_table`). Cross-validation gives every training row a probability from a model
that never saw it: `probe` fits a regularised linear classifier on the checkpoint's penultimate embeddings per fold
(seconds, CPU; this module), `finetune` retrains the checkpoint's recipe per fold (`models.crossval`).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import TaxaLensError
from core.predictions import PredictionTable, build_prediction_table, load_predictions, relabel_table
from core.ranking import OUT_OF_SAMPLE_SPLITS, grouped_folds

logger = logging.getLogger(__name__)

CROSSVAL_MODES = ("probe", "finetune")  # finetune first where both exist: a better model than a probe
DEFAULT_FOLDS = 5
NOT_HELD_OUT = -1  # fold index of training rows that stay in every fold's training data (never get probabilities)
_PREFERENCE = ("finetune", "probe")
Progress = Callable[[dict], None]


class CrossvalError(TaxaLensError, ValueError):
    """Cross-validation that cannot run as asked; the message names the values and the fix."""


@dataclass(frozen=True)
class ProbeConfig:
    """How the linear probe is fitted on each fold's training embeddings."""

    c_grid: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03)  # inverse L2 strengths tried; the best out-of-fold loss wins
    max_iter: int = 2000  # lbfgs iterations per fit
    class_weight: str | None = "balanced"  # "balanced" (every class weighs the same) or None (natural frequency)


@dataclass(frozen=True)
class CrossvalFolds:
    """Fold assignment of the training rows."""

    folds: np.ndarray  # (N,) int64 per training row: 0..n_folds-1, or NOT_HELD_OUT
    messages: tuple[str, ...]  # rows left without out-of-fold probabilities, and why


def validate_crossval_request(mode: str, n_folds: int) -> None:
    """Raise `CrossvalError` for a mode not in CROSSVAL_MODES or fewer than 2 folds."""
    if mode not in CROSSVAL_MODES:
        raise CrossvalError(f"cross-validation mode {mode!r} is unknown; use one of {list(CROSSVAL_MODES)} "
                            "(--mode probe: a linear probe on the stored embeddings; --mode finetune: retrain)")
    if n_folds < 2:
        raise CrossvalError(f"--folds {n_folds}: cross-validation needs at least 2 folds (5 is usual)")


def crossval_folds(train_rows: pd.DataFrame, *, n_folds: int = DEFAULT_FOLDS, seed: int = 0) -> CrossvalFolds:
    """Specimen-grouped, class-stratified folds over `train_rows` (`label`, `specimen_id`; one row per image).

    Wraps `core.ranking.grouped_folds`. A class whose training images come from one specimen cannot be held out
    (its fold would train without the class): its rows get `NOT_HELD_OUT` and stay in every fold's training data.
    Classes with fewer specimens than folds are held out in as many folds as they have specimens. Rows a fold would
    hold out although its training rows lack their class are moved to `NOT_HELD_OUT` too (reported).
    """
    validate_crossval_request("probe", n_folds)
    labels = train_rows["label"].astype(str).to_numpy()
    specimens_per_class = train_rows.groupby("label")["specimen_id"].nunique()
    single = sorted(str(c) for c in specimens_per_class.index[specimens_per_class < 2])
    folds = np.full(len(train_rows), NOT_HELD_OUT, dtype=np.int64)
    usable = ~np.isin(labels, single)
    messages: list[str] = []
    if single:
        counts = pd.Series(labels[~usable]).value_counts()
        messages.append("class(es) with training images of a single specimen cannot be held out, so their "
                        f"{int((~usable).sum())} training image(s) get no out-of-fold probabilities: "
                        + ", ".join(f"{c} ({counts[c]})" for c in single) + "; review these classes in full")
    n_specimens = train_rows.loc[usable, "specimen_id"].nunique()
    if n_specimens < n_folds:
        raise CrossvalError(f"--folds {n_folds} needs at least {n_folds} training specimens in classes with two or "
                            f"more specimens; found {n_specimens}. Use fewer folds.")
    folds[usable] = grouped_folds(train_rows[usable], n_splits=n_folds, seed=seed)
    moved = 0
    for fold in range(n_folds):
        held = folds == fold
        trained = set(labels[(folds != fold)])
        orphan = held & ~np.isin(labels, list(trained))
        moved += int(orphan.sum())
        folds[orphan] = NOT_HELD_OUT
    if moved:
        messages.append(f"{moved} training image(s) were held out in a fold without their class and got no "
                        "out-of-fold probabilities")
    return CrossvalFolds(folds, tuple(messages))


def probe_crossval(table: PredictionTable, *, n_folds: int = DEFAULT_FOLDS, seed: int = 0,
                   config: ProbeConfig = ProbeConfig(), folds: CrossvalFolds | None = None,
                   progress: Progress | None = None) -> PredictionTable:
    """Out-of-fold probabilities of a linear probe on `table.embeddings` (shape `(N, D)`, D > 0).

    Training rows (split not in val/test) get the probabilities of the probe fitted on the other folds' training
    rows; val/test rows the mean over the fold probes. Rows whose label is not one of `table.class_names`, and
    training rows `crossval_folds` cannot hold out, are left out. The probe standardises the embeddings and fits
    `sklearn.linear_model.LogisticRegression` (L2, class-balanced); its C is the one of `config.c_grid` with the
    lowest out-of-fold log-loss. `folds`: a fixed assignment of the training rows (in table order; default
    `crossval_folds(..., n_folds, seed)`). Returns a table in `table.class_names` order; `meta["messages"]` says
    what was left out, `meta["C"]` the chosen C.
    """
    if table.embeddings.ndim != 2 or table.embeddings.shape[1] == 0:
        raise CrossvalError("the predictions carry no embeddings, so the probe has nothing to fit; recompute them "
                            "(`python -m cli predict --workspace DIR --checkpoint NAME`) or use --mode finetune")
    frame = table.frame
    known = frame["label_idx"].to_numpy() >= 0
    is_train = ~frame["split"].isin(OUT_OF_SAMPLE_SPLITS).to_numpy() & known
    train_index = np.flatnonzero(is_train)
    if len(train_index) == 0:
        raise CrossvalError("no training rows with a label the model knows: nothing to cross-validate")
    assignment = folds if folds is not None else crossval_folds(frame.iloc[train_index], n_folds=n_folds, seed=seed)
    if len(assignment.folds) != len(train_index):
        raise CrossvalError(f"folds cover {len(assignment.folds)} rows but the table has {len(train_index)} training "
                            "rows with known labels")
    folds = assignment.folds
    n_folds = int(folds.max()) + 1
    other_index = np.flatnonzero(~is_train & known)
    x = table.embeddings.astype(np.float64)
    y = frame["label_idx"].to_numpy()
    k = len(table.class_names)
    best: tuple[float, float, np.ndarray, np.ndarray] | None = None
    steps = len(config.c_grid) * n_folds
    for c_position, c_value in enumerate(config.c_grid):
        oof = np.zeros((len(train_index), k))
        others = np.zeros((len(other_index), k))
        for fold in range(n_folds):
            held = folds == fold
            fit_rows = train_index[~held]
            probe = _fit_probe(x[fit_rows], y[fit_rows], c_value, config)
            oof[held] = _predict(probe, x[train_index[held]], k)
            if len(other_index):
                others += _predict(probe, x[other_index], k) / n_folds
            if progress is not None:
                progress({"event": "fold", "fold": fold + 1, "folds": n_folds, "C": c_value,
                          "step": c_position * n_folds + fold + 1, "steps": steps})
        scored = folds != NOT_HELD_OUT
        loss = float(-np.mean(np.log(np.clip(oof[scored, y[train_index[scored]]], 1e-12, None))))
        logger.info("probe C=%g: out-of-fold log-loss %.4f", c_value, loss)
        if best is None or loss < best[0]:
            best = (loss, c_value, oof, others)
    loss, c_value, oof, others = best
    held_rows = train_index[folds != NOT_HELD_OUT]
    rows = np.concatenate([held_rows, other_index])
    probs = np.concatenate([oof[folds != NOT_HELD_OUT], others]).astype(np.float32)
    part = frame.iloc[rows]
    meta = {**{key: table.meta.get(key) for key in ("checkpoint", "checkpoint_sha256", "dataset_fingerprint")},
            "cross_validated": True, "mode": "probe", "folds": n_folds, "seed": seed, "C": c_value,
            "oof_log_loss": loss, "messages": list(assignment.messages)}
    return build_prediction_table(part["sample_id"].tolist(), probs, table.embeddings[rows],
                                  labels=part["label"].tolist(), splits=part["split"].tolist(),
                                  specimen_ids=part["specimen_id"].tolist(), class_names=table.class_names,
                                  meta=meta)


def _fit_probe(x: np.ndarray, y: np.ndarray, c_value: float, config: ProbeConfig):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c_value, class_weight=config.class_weight,
                                                               max_iter=config.max_iter))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a probe a little short of the optimum still ranks
        probe.fit(x, y)
    return probe


def _predict(probe, x: np.ndarray, k: int) -> np.ndarray:
    """(n, k) probabilities in the model's class order; a class absent from the fit's rows gets 0."""
    out = np.zeros((len(x), k))
    out[:, probe.classes_] = probe.predict_proba(x)
    return out


# ------------------------------------------------------------------------------------------------------- the cache


def labels_digest(samples: pd.DataFrame) -> str:
    """sha256 (first 12 hex) of what cross-validation learns from: sample ids, labels, splits and specimens.

    The sample ids (one per row) are hashed without factorising them first: the same row hashes
    (`hash_pandas_object`'s `categorize` changes only the speed) in half the time (0.34 s instead of 0.73 s at a
    million ids), so the digests, and the names of the tables cached under them, stay what they were."""
    digest = hashlib.sha256()
    for column in ("sample_id", "label", "split", "specimen_id"):
        digest.update(pd.util.hash_pandas_object(samples[column].astype(str), index=False,
                                                 categorize=column != "sample_id").to_numpy().tobytes())
    return digest.hexdigest()[:12]


def crossval_path(predictions_file: str | Path, samples: pd.DataFrame, *, mode: str, n_folds: int,
                  seed: int = 0) -> Path:
    """Where the cross-validated table is cached: beside `predictions_file` (whose name carries the checkpoint's
    sha256, the dataset fingerprint and the preprocessing), plus mode, folds, seed and the labels' digest."""
    validate_crossval_request(mode, n_folds)
    predictions_file = Path(predictions_file)
    stem = predictions_file.name.removesuffix(".parquet")
    return predictions_file.with_name(f"{stem}.cv-{mode}-{n_folds}f-s{seed}-{labels_digest(samples)}.parquet")


def find_crossval(predictions_file: str | Path, samples: pd.DataFrame, *, mode: str | None = None) -> Path | None:
    """The cached cross-validated table for these predictions and labels (finetune before probe; the newest of a
    mode), or None. `mode` restricts the search to one mode."""
    predictions_file = Path(predictions_file)
    stem = predictions_file.name.removesuffix(".parquet")
    if next(predictions_file.parent.glob(f"{stem}.cv-*.parquet"), None) is None:
        return None  # none cached for these predictions: no need to hash a million labels to know it
    digest = labels_digest(samples)
    for wanted in ((mode,) if mode else _PREFERENCE):
        found = sorted(predictions_file.parent.glob(f"{stem}.cv-{wanted}-*-{digest}.parquet"),
                       key=lambda p: p.stat().st_mtime_ns, reverse=True)
        if found:
            return found[0]
    return None


def load_crossval(path: str | Path, samples: pd.DataFrame) -> PredictionTable:
    """A cached cross-validated table, labels and splits refreshed from `samples` like the predictions'."""
    return relabel_table(load_predictions(path), samples)
