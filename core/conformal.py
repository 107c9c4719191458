"""Split-conformal prediction sets: APS and RAPS scores, marginal or class-conditional (Mondrian) calibration, the
set of each image, and empirical coverage and set size per class over repeated specimen-grouped splits.

Why not `mapie`: it installs here, but it wraps an estimator to fit or a prefit one and draws its own calibration
split; TaxaLens has stored probabilities and must split by specimen (images of one individual are not
exchangeable), and needs per-class quantiles for rare classes. APS itself is a few lines (Romano et al. 2020): sort a
row's probabilities, a class's score is the mass ranked above it plus a uniform share of its own; RAPS (Angelopoulos
et al. 2021) adds `lam * max(0, rank - k_reg)`. The uniform draw per image is a hash of its sample id, so an image
keeps its set across reruns and table orders.

Coverage: with n calibration scores the threshold is the ceil((n + 1)(1 - alpha))-th smallest; a class-conditional
quantile with fewer than 1/alpha - 1 calibration images of its class is infinite (the class is always in the set:
no finite threshold can promise its coverage) and is reported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from core.calibration import specimen_folds
from core.errors import TaxaLensError
from core.predictions import PredictionTable

logger = logging.getLogger(__name__)

ConformalMethod = Literal["aps", "raps"]
CONFORMAL_METHODS: dict[str, str] = {"aps": "APS (adaptive prediction sets)",
                                     "raps": "RAPS (APS with a penalty on long sets)"}
_CHUNK = 20_000  # rows scored at once (bounds the (rows, K) temporaries)


class ConformalError(TaxaLensError, ValueError):
    """Prediction sets that cannot be computed as asked; the message names the value and the fix."""


@dataclass(frozen=True)
class ConformalConfig:
    """How prediction sets are calibrated."""

    coverage: float = 0.9  # target share of images whose true class is in their set (1 - alpha)
    method: ConformalMethod = "aps"  # aps | raps
    class_conditional: bool = False  # one threshold per true class (Mondrian): coverage per class, not on average
    raps_lambda: float = 0.01  # RAPS: penalty per rank beyond raps_k
    raps_k: int = 1  # RAPS: ranks without penalty
    randomized: bool = True  # uniform share of the own class's mass (exact coverage); False: conservative sets
    nonempty: bool = False  # always keep the top class (coverage then rises to at least the top-1 accuracy)

    def __post_init__(self) -> None:
        if not 0.0 < self.coverage < 1.0:
            raise ConformalError(f"coverage must be in (0, 1), got {self.coverage}; e.g. 0.9")
        if self.method not in CONFORMAL_METHODS:
            raise ConformalError(f"conformal method {self.method!r} is unknown; use one of {list(CONFORMAL_METHODS)}")


@dataclass(frozen=True)
class ConformalCalibration:
    """Thresholds on the conformal score: one (marginal) or one per class (class-conditional)."""

    thresholds: np.ndarray  # (K,) score threshold per class (all equal when marginal); inf: always in the set
    n_calibration: np.ndarray  # (K,) calibration images per class
    config: ConformalConfig

    @property
    def always_included(self) -> np.ndarray:
        """(K,) classes whose threshold is infinite (too few calibration images of the class)."""
        return ~np.isfinite(self.thresholds)


def uniform_draws(sample_ids: pd.Series | np.ndarray | list) -> np.ndarray:
    """(N,) a uniform number in [0, 1) per sample id, fixed by the id (a hash)."""
    hashed = pd.util.hash_pandas_object(pd.Series(list(sample_ids), dtype=object), index=False).to_numpy()
    return (hashed >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def class_scores(pred_probs: np.ndarray, u: np.ndarray, config: ConformalConfig) -> np.ndarray:
    """(N, K) conformal score of every class for every row (lower: more plausible). `pred_probs` `(N, K)`; `u`
    `(N,)` uniform draws (ignored unless `config.randomized`)."""
    pred_probs = np.asarray(pred_probs, dtype=np.float64)
    n, k = pred_probs.shape
    out = np.empty((n, k))
    ranks = np.arange(1, k + 1, dtype=np.float64)
    penalty = config.raps_lambda * np.maximum(0.0, ranks - config.raps_k) if config.method == "raps" else 0.0
    for start in range(0, n, _CHUNK):
        probs = pred_probs[start:start + _CHUNK]
        order = np.argsort(-probs, axis=1, kind="stable")
        ranked = np.take_along_axis(probs, order, axis=1)
        score = np.cumsum(ranked, axis=1) + penalty
        if config.randomized:
            score -= u[start:start + _CHUNK, None] * ranked
        np.put_along_axis(out[start:start + _CHUNK], order, score, axis=1)
    return out


def _quantile(scores: np.ndarray, coverage: float) -> float:
    n = len(scores)
    rank = int(np.ceil((n + 1) * coverage))
    if n == 0 or rank > n:
        return float("inf")
    return float(np.partition(scores, rank - 1)[rank - 1])


def calibrate_sets(pred_probs: np.ndarray, y_true: np.ndarray, u: np.ndarray, config: ConformalConfig
                   ) -> ConformalCalibration:
    """Thresholds from calibration rows: `pred_probs` `(N, K)`, `y_true` `(N,)` class indices, `u` `(N,)`."""
    y_true = np.asarray(y_true, dtype=np.int64)
    k = np.asarray(pred_probs).shape[1]
    if len(y_true) == 0:
        raise ConformalError("no calibration image with a label the model knows; prediction sets need labelled "
                             "images (the val split)")
    scores = class_scores(pred_probs, u, config)[np.arange(len(y_true)), y_true]
    counts = np.bincount(y_true, minlength=k)
    if config.class_conditional:
        thresholds = np.array([_quantile(scores[y_true == c], config.coverage) for c in range(k)])
    else:
        thresholds = np.full(k, _quantile(scores, config.coverage))
    return ConformalCalibration(thresholds, counts, config)


def prediction_sets(pred_probs: np.ndarray, u: np.ndarray, calibration: ConformalCalibration) -> np.ndarray:
    """(N, K) booleans: class c is in row i's set. A randomized set may be empty (the model is so sure that even
    its top class is not needed for the coverage) unless `config.nonempty`."""
    scores = class_scores(pred_probs, u, calibration.config)
    sets = scores <= calibration.thresholds[None, :]
    if calibration.config.nonempty:
        sets[np.arange(len(sets)), np.asarray(pred_probs).argmax(axis=1)] = True
    return sets


def _labelled(table: PredictionTable) -> PredictionTable:
    known = table.frame["label_idx"].to_numpy() >= 0
    return table if known.all() else table.subset(known)


def calibrate_on_table(table: PredictionTable, config: ConformalConfig) -> ConformalCalibration:
    """Thresholds from the labelled rows of `table` (e.g. the validation split)."""
    rows = _labelled(table)
    return calibrate_sets(rows.pred_probs, rows.frame["label_idx"].to_numpy(), uniform_draws(rows.frame["sample_id"]),
                          config)


def set_frame(table: PredictionTable, calibration: ConformalCalibration) -> pd.DataFrame:
    """One row per row of `table`: `sample_id`, `prediction_set` (class names, most probable first), `set_size`,
    `label_in_set` (NaN-free bool; False also for labels the model does not know)."""
    sets = prediction_sets(table.pred_probs, uniform_draws(table.frame["sample_id"]), calibration)
    names = np.asarray(table.class_names, dtype=object)
    order = np.argsort(-table.pred_probs, axis=1, kind="stable")
    members = [tuple(names[o[s[o]]]) for o, s in zip(order, sets, strict=True)]
    label_idx = table.frame["label_idx"].to_numpy()
    inside = np.zeros(len(table), dtype=bool)
    known = label_idx >= 0
    inside[known] = sets[np.flatnonzero(known), label_idx[known]]
    return pd.DataFrame({"sample_id": table.frame["sample_id"].to_numpy(), "prediction_set": members,
                         "set_size": sets.sum(axis=1), "label_in_set": inside})


@dataclass(frozen=True)
class CoverageReport:
    """Empirical coverage and set size over repeated calibration/evaluation splits."""

    per_class: pd.DataFrame  # class, support, coverage, coverage_sd, mean_set_size, always_included_share
    coverage: float  # mean over repeats of the share of evaluation images covered
    coverage_sd: float  # its standard deviation over repeats
    mean_set_size: float
    repeats: int
    config: ConformalConfig


def evaluate_coverage(table: PredictionTable, config: ConformalConfig, *, repeats: int = 10, seed: int = 0
                      ) -> CoverageReport:
    """Split the labelled rows of `table` in two halves by specimen (class-stratified, `specimen_folds`), calibrate
    on one, measure coverage and set size on the other; `repeats` times with new splits. Per class: the mean over
    the repeats of its evaluation images' coverage and set size."""
    rows = _labelled(table)
    if rows.frame["specimen_id"].nunique() < 2:
        raise ConformalError("coverage needs at least two specimens to split into calibration and evaluation")
    y = rows.frame["label_idx"].to_numpy(dtype=np.int64)
    u = uniform_draws(rows.frame["sample_id"])
    k = len(rows.class_names)
    scores = class_scores(rows.pred_probs, u, config)
    top = rows.pred_probs.argmax(axis=1)
    hit_sum, size_sum, count = np.zeros(k), np.zeros(k), np.zeros(k)
    hit_sq, always = np.zeros(k), np.zeros(k)
    overall, sizes = [], []
    for repeat in range(repeats):
        half = specimen_folds(rows.frame, n_folds=2, seed=seed + repeat) == 0
        cal_scores = scores[np.flatnonzero(half), y[half]]
        if config.class_conditional:
            thresholds = np.array([_quantile(cal_scores[y[half] == c], config.coverage) for c in range(k)])
        else:
            thresholds = np.full(k, _quantile(cal_scores, config.coverage))
        test = ~half
        sets = scores[test] <= thresholds[None, :]
        if config.nonempty:
            sets[np.arange(int(test.sum())), top[test]] = True
        covered = sets[np.arange(int(test.sum())), y[test]]
        yt = y[test]
        n_c = np.bincount(yt, minlength=k)
        cov_c = np.bincount(yt, weights=covered, minlength=k) / np.maximum(n_c, 1)
        present = n_c > 0
        hit_sum += np.where(present, cov_c, 0.0)
        hit_sq += np.where(present, cov_c**2, 0.0)
        size_sum += np.where(present, np.bincount(yt, weights=sets.sum(axis=1), minlength=k) / np.maximum(n_c, 1), 0)
        count += present
        always += present & ~np.isfinite(thresholds)
        overall.append(covered.mean())
        sizes.append(sets.sum(axis=1).mean())
    seen = np.maximum(count, 1)
    mean_cov = hit_sum / seen
    per_class = pd.DataFrame({
        "class": list(rows.class_names), "support": np.bincount(y, minlength=k), "coverage": mean_cov,
        "coverage_sd": np.sqrt(np.clip(hit_sq / seen - mean_cov**2, 0, None)), "mean_set_size": size_sum / seen,
        "always_included_share": always / seen,
    })
    per_class = per_class[count > 0].reset_index(drop=True)
    return CoverageReport(per_class, float(np.mean(overall)), float(np.std(overall)), float(np.mean(sizes)),
                          repeats, config)
