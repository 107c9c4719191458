""""None of the known classes": per-image novelty scores (max-logit, energy, k-NN distance in the embedding space,
and the maximum-softmax baseline) and their leave-one-class-out evaluation (AUROC per held-out class).

Higher score = more likely unknown. The predictions table stores probabilities, not logits: log p equals the
logits minus a per-row constant (the log-partition), and that constant is exactly what max-logit and energy use
(Vaze et al. 2022: max-logit beats max-softmax because it keeps the feature norm the softmax divides out). So on a
probabilities-only table `max_logit` is computed on log-probabilities, where it ranks like max-softmax, and
`energy` (-logsumexp of log p = 0 for every row) is undefined: both are NaN-free but flagged by
`logits_available=False`. Where real logits exist (the leave-one-class-out probe below, which fits a linear head on
the stored embeddings), both are computed properly. The k-NN score needs only the embeddings.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import logsumexp, softmax

from core.calibration import specimen_folds
from core.errors import TaxaLensError
from core.predictions import PredictionTable

logger = logging.getLogger(__name__)

DEFAULT_NEIGHBOURS = 10
PROBE_C = 0.01  # inverse L2 strength of the leave-one-class-out probe (the middle of core.crossval's grid)
_EPS = 1e-12


class NoveltyError(TaxaLensError, ValueError):
    """Novelty scores that cannot be computed as asked; the message names the value and the fix."""


def _msp(logits: np.ndarray) -> np.ndarray:
    return -softmax(logits, axis=1).max(axis=1)


def _max_logit(logits: np.ndarray) -> np.ndarray:
    return -logits.max(axis=1)


def _energy(logits: np.ndarray) -> np.ndarray:
    return -logsumexp(logits, axis=1)


# Scores from logits `(N, K)`; higher = more likely unknown. A new score is one entry.
LOGIT_SCORES: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "msp": ("max softmax (baseline)", _msp),
    "max_logit": ("max-logit", _max_logit),
    "energy": ("energy", _energy),
}
NOVELTY_LABELS: dict[str, str] = {**{name: label for name, (label, _) in LOGIT_SCORES.items()},
                                  "knn": "k-NN distance (embeddings)"}


def knn_distance(query: np.ndarray, reference: np.ndarray, *, k: int = DEFAULT_NEIGHBOURS,
                 query_groups: np.ndarray | None = None, reference_groups: np.ndarray | None = None,
                 chunk: int = 2048) -> np.ndarray:
    """(N,) mean cosine distance of each `query` row `(N, D)` to its `k` nearest `reference` rows `(M, D)`; a row
    never counts a reference row of its own group (specimen), so a training image is not its own neighbour."""
    if query.shape[1] == 0 or query.shape[1] != reference.shape[1]:
        raise NoveltyError("the k-NN score needs embeddings of one width in both tables; recompute the predictions "
                           "(`python -m core predict`) so they carry embeddings")
    ref = reference.astype(np.float32)
    ref = ref / (np.linalg.norm(ref, axis=1, keepdims=True) + _EPS)
    k = max(1, min(k, len(ref) - 1))
    out = np.empty(len(query))
    for start in range(0, len(query), chunk):
        q = query[start:start + chunk].astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True) + _EPS
        sims = q @ ref.T
        if query_groups is not None and reference_groups is not None:
            sims[query_groups[start:start + chunk, None] == reference_groups[None, :]] = -np.inf
        top = -np.partition(-sims, k - 1, axis=1)[:, :k]
        top = np.where(np.isfinite(top), top, -1.0)
        out[start:start + chunk] = 1.0 - top.mean(axis=1)
    return out


@dataclass(frozen=True)
class NoveltyScores:
    """Per-image novelty scores of one table."""

    frame: pd.DataFrame  # sample_id, msp, max_logit, energy (NaN without logits), knn (NaN without embeddings)
    logits_available: bool  # False: max_logit ranks like msp and energy is NaN (see the module docstring)
    messages: tuple[str, ...]


def table_novelty(table: PredictionTable, reference: PredictionTable, *, k: int = DEFAULT_NEIGHBOURS
                  ) -> NoveltyScores:
    """Novelty scores of every row of `table`; `reference`: the rows whose embeddings define "known" (the training
    split with known labels)."""
    logp = np.log(np.clip(table.pred_probs.astype(np.float64), _EPS, None))
    frame = pd.DataFrame({"sample_id": table.frame["sample_id"].to_numpy(), "msp": _msp(logp),
                          "max_logit": _max_logit(logp), "energy": np.nan, "knn": np.nan})
    messages = ["the predictions store probabilities, not logits: max-logit is computed on log-probabilities (it "
                "ranks like max-softmax) and energy is not available; the leave-one-class-out evaluation fits a "
                "probe with real logits"]
    known = reference.frame["label_idx"].to_numpy() >= 0
    if table.embeddings.shape[1] and reference.embeddings.shape[1] == table.embeddings.shape[1] and known.sum() > 1:
        frame["knn"] = knn_distance(table.embeddings, reference.embeddings[known], k=k,
                                    query_groups=table.frame["specimen_id"].to_numpy(),
                                    reference_groups=reference.frame["specimen_id"].to_numpy()[known])
    else:
        messages.append("no embeddings (or no labelled reference rows): the k-NN score is not available")
    return NoveltyScores(frame, False, tuple(messages))


def queue_score(scores: NoveltyScores) -> pd.Series:
    """The score the "possibly unknown" review queue sorts by (sample_id -> score): k-NN distance where available,
    else max-softmax."""
    column = "knn" if scores.frame["knn"].notna().all() and len(scores.frame) else "msp"
    return pd.Series(scores.frame[column].to_numpy(), index=scores.frame["sample_id"].to_numpy(), name=column)


def _probe_logits(x_fit: np.ndarray, y_fit: np.ndarray, x_eval: np.ndarray) -> np.ndarray:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=300, tol=1e-3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x_fit, y_fit)
    logits = model.decision_function(x_eval)
    if logits.ndim == 1:  # two known classes: sklearn returns one margin
        logits = np.column_stack([-logits / 2, logits / 2])
    return logits


def leave_one_class_out(table: PredictionTable, *, k: int = DEFAULT_NEIGHBOURS, seed: int = 0,
                        min_images: int = 5, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """AUROC of each novelty score at telling a held-out class's images from the known classes' images.

    For each class with at least `min_images` labelled images: the labelled rows are split in two halves by
    specimen (`specimen_folds`); a linear probe (standardised, L2 logistic regression) is fitted on one half's
    embeddings *without the class* and scores the other half (both ways round); the k-NN reference is the fitting
    half without the class. AUROC: the held-out class's images are the positives. The checkpoint's own backbone may
    have seen the class in training, which helps the k-NN score; this measures the scores, not a truly new species.
    `classes`: only these held-out classes (default: every class). Returns one row per class: `class`,
    `n_unknown`, `n_known`, `auroc_<score>` for msp, max_logit, energy, knn.
    """
    from sklearn.metrics import roc_auc_score

    known = table.frame["label_idx"].to_numpy() >= 0
    rows = table.subset(known) if not known.all() else table
    if rows.embeddings.shape[1] == 0:
        raise NoveltyError("the predictions carry no embeddings, so no probe can be fitted; recompute them "
                           "(`python -m core predict --workspace DIR --checkpoint NAME`)")
    y = rows.frame["label_idx"].to_numpy(dtype=np.int64)
    groups = rows.frame["specimen_id"].to_numpy()
    x = rows.embeddings.astype(np.float64)
    half = specimen_folds(rows.frame, n_folds=2, seed=seed) == 0
    counts = np.bincount(y, minlength=len(rows.class_names))
    out = []
    wanted = set(classes) if classes is not None else set(rows.class_names)
    for c in np.flatnonzero(counts >= min_images):
        if rows.class_names[c] not in wanted:
            continue
        scores: dict[str, list[np.ndarray]] = {name: [] for name in (*LOGIT_SCORES, "knn")}
        truth: list[np.ndarray] = []
        for fit_side in (half, ~half):
            fit = fit_side & (y != c)
            evaluate = ~fit_side
            if len(np.unique(y[fit])) < 2 or not (evaluate & (y == c)).any():
                continue
            logits = _probe_logits(x[fit], y[fit], x[evaluate])
            for name, (_, score) in LOGIT_SCORES.items():
                scores[name].append(score(logits))
            scores["knn"].append(knn_distance(x[evaluate], x[fit], k=k, query_groups=groups[evaluate],
                                              reference_groups=groups[fit]))
            truth.append(y[evaluate] == c)
        if not truth:
            continue
        positives = np.concatenate(truth)
        if positives.all() or not positives.any():
            continue
        row = {"class": rows.class_names[c], "n_unknown": int(positives.sum()), "n_known": int((~positives).sum())}
        for name, parts in scores.items():
            row[f"auroc_{name}"] = float(roc_auc_score(positives, np.concatenate(parts)))
        out.append(row)
        logger.info("leave-one-class-out %s: %s", rows.class_names[c],
                    ", ".join(f"{key} {value:.3f}" for key, value in row.items() if key.startswith("auroc")))
    return pd.DataFrame(out, columns=["class", "n_unknown", "n_known",
                                      *(f"auroc_{name}" for name in (*LOGIT_SCORES, "knn"))])
