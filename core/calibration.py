"""Calibration: reliability bins, ECE/MCE/Brier/NLL with bootstrap intervals, and temperature scaling per checkpoint.

The predictions table stores probabilities, not logits. Temperature scaling needs only logits up to a constant per
row, and `log p = z - logsumexp(z)` is exactly that, so `softmax(log p / T) == softmax(z / T)`: it is fitted and
applied on log-probabilities without loss. (Scores that need the constant itself, such as the energy, cannot be
recovered from probabilities; `core.novelty` says how it handles that.) Temperature scaling never changes the
predicted class, only the confidences.

Intervals come from the one bootstrap (`core.scores`: specimen-cluster, class-stratified). That bootstrap tallies
counts of discrete cells, so each row's continuous values enter it as a level: the top-label confidence as one of
`n_bins * LEVELS_PER_BIN` equal-width levels (and, for equal-mass bins, as many equal-mass levels), each paired with
right/wrong, and the row's Brier and NLL as one of `LEVELS` equal-mass levels. A level's value is the exact mean
of the table's rows in it, so every point estimate equals the exact one; only the spread within a level is lost in
the resamples (a fraction of a bin's width).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from core.errors import TaxaLensError
from core.predictions import PredictionTable, build_prediction_table
from core.ranking import grouped_folds
from core.scores import BootstrapConfig, BootstrapResult, ResamplingPlan, Tally, bootstrap

logger = logging.getLogger(__name__)

BinStrategy = Literal["uniform", "quantile"]
BIN_STRATEGIES: dict[str, str] = {"uniform": "equal width", "quantile": "equal mass"}
DEFAULT_BINS = 15
LEVELS_PER_BIN = 10  # confidence levels per bin in the bootstrap encoding
LEVELS = 150  # equal-mass levels of a row's Brier score and NLL in the bootstrap encoding
CONFIDENCE_MODES: dict[str, str] = {"raw": "as the model gives them", "calibrated": "temperature-scaled"}
CALIBRATION_METRICS: dict[str, str] = {"ece": "ECE", "mce": "MCE", "brier": "Brier score", "nll": "NLL",
                                       "accuracy": "Accuracy", "mean_confidence": "Mean confidence"}
EXACT_FOLD_SPECIMENS = 300  # specimens up to which folds come from core.ranking.grouped_folds
TEMPERATURE_BOUNDS = (0.05, 20.0)  # temperatures searched
_EPS = 1e-12
CALIBRATION_DIR = "calibration"  # under the workspace's cache folder


class CalibrationError(TaxaLensError, ValueError):
    """Calibration that cannot be computed as asked; the message names the value and the fix."""


# ----------------------------------------------------------------------------------------------------------------
# Plain metrics


def _check_strategy(strategy: str) -> None:
    if strategy not in BIN_STRATEGIES:
        raise CalibrationError(f"bin strategy {strategy!r} is unknown; use one of {list(BIN_STRATEGIES)}")


def bin_edges(confidence: np.ndarray, *, n_bins: int = DEFAULT_BINS, strategy: BinStrategy = "uniform") -> np.ndarray:
    """`n_bins + 1` edges over [0, 1]: equal width, or equal mass (quantiles of `confidence`), as scikit-learn's
    `calibration_curve` draws them."""
    _check_strategy(strategy)
    if n_bins < 1:
        raise CalibrationError(f"n_bins must be >= 1, got {n_bins}")
    if strategy == "quantile" and len(confidence):
        return np.percentile(np.asarray(confidence, dtype=np.float64), np.linspace(0, 100, n_bins + 1))
    return np.linspace(0.0, 1.0, n_bins + 1)


def bin_index(confidence: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value (0..len(edges)-2): scikit-learn's assignment (a value on an inner edge goes to the lower
    bin)."""
    return np.searchsorted(edges[1:-1], np.asarray(confidence, dtype=np.float64))


def reliability_table(confidence: np.ndarray, correct: np.ndarray, *, n_bins: int = DEFAULT_BINS,
                      strategy: BinStrategy = "uniform") -> pd.DataFrame:
    """One row per non-empty bin: `bin`, `lower`, `upper`, `count`, `mean_confidence`, `accuracy`, `gap`
    (accuracy - confidence). `confidence`: `(N,)` top-label confidences; `correct`: `(N,)` booleans.

    `accuracy` and `mean_confidence` equal `sklearn.calibration.calibration_curve(correct, confidence, ...)`.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = bin_edges(confidence, n_bins=n_bins, strategy=strategy)
    which = bin_index(confidence, edges)
    k = len(edges) - 1
    count = np.bincount(which, minlength=k)
    conf_sum = np.bincount(which, weights=confidence, minlength=k)
    hit_sum = np.bincount(which, weights=correct, minlength=k)
    keep = count > 0
    safe = np.where(keep, count, 1)
    frame = pd.DataFrame({"bin": np.arange(k), "lower": edges[:-1], "upper": edges[1:], "count": count,
                          "mean_confidence": conf_sum / safe, "accuracy": hit_sum / safe})
    frame = frame[keep].reset_index(drop=True)
    frame["gap"] = frame["accuracy"] - frame["mean_confidence"]
    return frame


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, *, n_bins: int = DEFAULT_BINS,
                               strategy: BinStrategy = "uniform") -> float:
    """ECE: the count-weighted mean of |accuracy - confidence| over the bins (Guo et al. 2017); 0 for no rows."""
    bins = reliability_table(confidence, correct, n_bins=n_bins, strategy=strategy)
    total = bins["count"].sum()
    return float((bins["count"] * bins["gap"].abs()).sum() / total) if total else 0.0


def maximum_calibration_error(confidence: np.ndarray, correct: np.ndarray, *, n_bins: int = DEFAULT_BINS,
                              strategy: BinStrategy = "uniform") -> float:
    """MCE: the largest |accuracy - confidence| over the non-empty bins; 0 for no rows."""
    bins = reliability_table(confidence, correct, n_bins=n_bins, strategy=strategy)
    return float(bins["gap"].abs().max()) if len(bins) else 0.0


def brier_scores(pred_probs: np.ndarray, y_true: np.ndarray) -> np.ndarray:
    """Per-row multiclass Brier score `(N,)`: sum over classes of (p_k - [y = k])^2, in [0, 2] (the mean is
    scikit-learn's `brier_score_loss(y, pred_probs, labels=range(K), scale_by_half=False)`)."""
    pred_probs = np.asarray(pred_probs, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64)
    rows = np.arange(len(y_true))
    squares = np.einsum("ij,ij->i", pred_probs, pred_probs)
    return squares - 2.0 * pred_probs[rows, y_true] + 1.0


def log_losses(pred_probs: np.ndarray, y_true: np.ndarray) -> np.ndarray:
    """Per-row negative log-likelihood `(N,)` of the given class (probabilities clipped at 1e-12); the mean is
    scikit-learn's `log_loss` of rows that sum to 1."""
    pred_probs = np.asarray(pred_probs, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64)
    return -np.log(np.clip(pred_probs[np.arange(len(y_true)), y_true], _EPS, 1.0))


# ----------------------------------------------------------------------------------------------------------------
# Temperature scaling


def apply_temperature(pred_probs: np.ndarray, temperature: float) -> np.ndarray:
    """`softmax(log(pred_probs) / temperature)` `(N, K)` float32: temperature scaling on log-probabilities (equal to
    scaling the logits; see the module docstring). T > 1 softens, T < 1 sharpens; the argmax never changes."""
    if not temperature > 0:
        raise CalibrationError(f"temperature must be > 0, got {temperature}")
    logp = np.log(np.clip(np.asarray(pred_probs, dtype=np.float64), _EPS, None))
    return np.exp(log_softmax(logp / temperature, axis=1)).astype(np.float32)


def _nll_at(logp: np.ndarray, y: np.ndarray, temperature: float, row_max: np.ndarray, given: np.ndarray) -> float:
    """Mean NLL of softmax(logp / T): logsumexp(logp / T) - logp[y] / T per row, shifted by the row maximum."""
    scaled = np.exp((logp - row_max[:, None]) * np.float32(1.0 / temperature))
    lse = np.log(scaled.sum(axis=1, dtype=np.float64)) + row_max / temperature
    return float(np.mean(lse - given / temperature))


def specimen_folds(frame: pd.DataFrame, *, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold index per row (`label`, `specimen_id` columns), every image of a specimen in one fold, stratified by
    class: `core.ranking.grouped_folds` (scikit-learn's `StratifiedGroupKFold`) up to `EXACT_FOLD_SPECIMENS`
    specimens; above that (its greedy search costs about 2 ms per specimen and fold) specimens are dealt
    round-robin in a random order within their majority class, which stratifies as well at that size."""
    specimens = frame["specimen_id"].to_numpy()
    codes, uniques = pd.factorize(pd.Series(specimens), sort=False)
    codes = codes.astype(np.int64)
    if len(uniques) <= EXACT_FOLD_SPECIMENS:
        return grouped_folds(frame, n_splits=n_folds, seed=seed)
    labels = pd.factorize(frame["label"])[0].astype(np.int64)
    n_labels = int(labels.max()) + 1
    pairs, counts = np.unique(codes * n_labels + labels, return_counts=True)
    best = np.lexsort((-counts, pairs // n_labels))  # per specimen, its most common label first
    first = np.r_[True, (pairs // n_labels)[best][1:] != (pairs // n_labels)[best][:-1]]
    majority = np.empty(len(uniques), dtype=np.int64)
    majority[(pairs // n_labels)[best][first]] = (pairs % n_labels)[best][first]
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(uniques)), majority))
    fold_of_specimen = np.empty(len(uniques), dtype=np.int64)
    fold_of_specimen[order] = np.arange(len(uniques)) % n_folds
    return fold_of_specimen[codes]


def _fit(logp: np.ndarray, y: np.ndarray) -> float:
    logp = np.asarray(logp, dtype=np.float32)
    row_max = logp.max(axis=1).astype(np.float64)
    given = logp[np.arange(len(y)), y].astype(np.float64)
    low, high = np.log(TEMPERATURE_BOUNDS[0]), np.log(TEMPERATURE_BOUNDS[1])
    result = minimize_scalar(lambda log_t: _nll_at(logp, y, float(np.exp(log_t)), row_max, given),
                             bounds=(low, high), method="bounded", options={"xatol": 1e-3})
    return float(np.exp(result.x))


@dataclass(frozen=True)
class TemperatureFit:
    """A temperature fitted on one split of one checkpoint, with its specimen-grouped cross-validation."""

    checkpoint: str  # the checkpoint's name in the workspace
    temperature: float  # fitted on every row of the split (what "calibrated" applies)
    split: str  # the split it was fitted on
    n_rows: int  # rows with a known label used
    n_folds: int  # specimen-grouped folds of the cross-validation (0: too few specimens, no cross-validation)
    fold_temperatures: tuple[float, ...]  # the temperature of each fold's training rows
    nll_before: float  # NLL of the uncalibrated rows
    nll_after: float  # out-of-fold NLL (each fold scaled by the temperature of the other folds)
    ece_before: float  # equal-width ECE, uncalibrated
    ece_after: float  # equal-width ECE of the out-of-fold calibrated rows
    checkpoint_sha256: str | None = None  # the weights it belongs to (a new file makes it stale)


def fit_temperature(table: PredictionTable, *, checkpoint: str = "", split: str = "val", n_folds: int = 5,
                    seed: int = 0) -> TemperatureFit:
    """Fit the temperature on the rows of `table` with a known label (usually the validation split).

    The reported "after" numbers are out-of-fold: specimen-grouped folds (`core.ranking.grouped_folds`; every image
    of a specimen in one fold), each scaled by the temperature fitted on the other folds, so the improvement is not
    measured on the rows it was fitted to. The returned temperature is fitted on all rows.
    """
    known = table.frame["label_idx"].to_numpy() >= 0
    if known.sum() < 2:
        raise CalibrationError(f"the {split!r} split has {int(known.sum())} row(s) with a label the model knows; "
                               "temperature scaling needs labelled rows (pick the val split in the sidebar)")
    rows = table.subset(known) if not known.all() else table
    y = rows.frame["label_idx"].to_numpy(dtype=np.int64)
    logp = np.log(np.clip(rows.pred_probs, np.float32(_EPS), None)).astype(np.float32)
    n_specimens = rows.frame["specimen_id"].nunique()
    folds_used = min(n_folds, n_specimens)
    oof = np.empty(logp.shape, dtype=np.float64)
    fold_ts: list[float] = []
    if folds_used >= 2:
        folds = specimen_folds(rows.frame, n_folds=folds_used, seed=seed)
        for fold in range(folds_used):
            held = folds == fold
            t = _fit(logp[~held], y[~held])
            fold_ts.append(t)
            oof[held] = log_softmax(logp[held].astype(np.float64) / t, axis=1)
    else:
        folds_used = 0
        oof = log_softmax(logp.astype(np.float64) / _fit(logp, y), axis=1)
    temperature = _fit(logp, y)
    probs_after = np.exp(oof)
    correct = rows.frame["pred_idx"].to_numpy() == y
    fit = TemperatureFit(
        checkpoint=checkpoint, temperature=temperature, split=split, n_rows=len(y), n_folds=folds_used,
        fold_temperatures=tuple(fold_ts), nll_before=float(log_losses(rows.pred_probs, y).mean()),
        nll_after=float(-oof[np.arange(len(y)), y].mean()),
        ece_before=expected_calibration_error(rows.frame["confidence"].to_numpy(), correct),
        ece_after=expected_calibration_error(probs_after.max(axis=1), probs_after.argmax(axis=1) == y),
        checkpoint_sha256=table.meta.get("checkpoint_sha256"),
    )
    logger.info("temperature %.3f for %s on %s (%d rows, %d folds): NLL %.4f -> %.4f out of fold", temperature,
                checkpoint, split, len(y), folds_used, fit.nll_before, fit.nll_after)
    return fit


def calibrate_table(table: PredictionTable, temperature: float) -> PredictionTable:
    """`table` with its probabilities temperature-scaled (confidence and loss follow; predictions are unchanged);
    `meta["temperature"]` records the temperature."""
    if temperature == 1.0:
        return table
    frame = table.frame
    return build_prediction_table(
        frame["sample_id"].tolist(), apply_temperature(table.pred_probs, temperature), table.embeddings,
        labels=frame["label"].tolist(), splits=frame["split"].tolist(), specimen_ids=frame["specimen_id"].tolist(),
        class_names=table.class_names, meta={**table.meta, "temperature": float(temperature)},
    )


# ----------------------------------------------------------------------------------------------------------------
# Stored temperatures


def temperature_path(cache_dir: str | Path, checkpoint: str) -> Path:
    """Where the temperature of `checkpoint` is stored: `<cache_dir>/calibration/<checkpoint>.json` (`cache_dir`
    is the workspace's `.taxalens` folder)."""
    safe = "".join(ch if ch.isalnum() or ch in "._-()+" else "_" for ch in checkpoint)
    return Path(cache_dir) / CALIBRATION_DIR / f"{safe}.json"


def save_temperature(cache_dir: str | Path, fit: TemperatureFit) -> Path:
    """Store `fit` for its checkpoint (atomically: a temp file renamed into place); returns the path."""
    path = temperature_path(cache_dir, fit.checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json.tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(asdict(fit), handle, indent=2)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_temperature(cache_dir: str | Path, checkpoint: str, *, checkpoint_sha256: str | None = None
                     ) -> TemperatureFit | None:
    """The stored fit of `checkpoint`, or None when there is none or it belongs to other weights (a stale fit
    is ignored, logged). Raises `CalibrationError` for a file that cannot be read, naming it."""
    path = temperature_path(cache_dir, checkpoint)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["fold_temperatures"] = tuple(data.get("fold_temperatures", ()))
        fit = TemperatureFit(**data)
    except (OSError, ValueError, TypeError) as exc:
        raise CalibrationError(f"cannot read the stored temperature {path}: {exc}; delete the file and fit it "
                               "again on the Calibration page") from exc
    if checkpoint_sha256 and fit.checkpoint_sha256 and fit.checkpoint_sha256 != checkpoint_sha256:
        logger.warning("temperature of %s in %s was fitted on other weights; ignored", checkpoint, path)
        return None
    return fit


# ----------------------------------------------------------------------------------------------------------------
# The report: bins, metrics with bootstrap intervals, per class


@dataclass(frozen=True)
class CalibrationReport:
    """Calibration of one table's labelled rows."""

    bins: pd.DataFrame  # reliability_table of the chosen strategy
    metrics: pd.DataFrame  # metric, label, value, low, high (ECE/MCE of the chosen strategy)
    per_class: pd.DataFrame  # per_class_calibration
    n_rows: int
    caption: str  # how the intervals were computed
    strategy: str
    n_bins: int


def _labelled(table: PredictionTable) -> PredictionTable:
    known = table.frame["label_idx"].to_numpy() >= 0
    return table if known.all() else table.subset(known)


def _levels(values: np.ndarray, n_levels: int) -> np.ndarray:
    """Equal-mass level (0..n_levels-1) of each value."""
    edges = np.unique(np.percentile(values, np.linspace(0, 100, n_levels + 1)[1:-1]))
    return np.searchsorted(edges, values, side="right")


def _level_means(level: np.ndarray, values: np.ndarray, n_levels: int) -> np.ndarray:
    count = np.bincount(level, minlength=n_levels)
    return np.bincount(level, weights=values, minlength=n_levels) / np.maximum(count, 1)


def calibration_intervals(table: PredictionTable, config: BootstrapConfig, *, n_bins: int = DEFAULT_BINS,
                          strategy: BinStrategy = "uniform") -> BootstrapResult:
    """ECE, MCE, Brier, NLL, accuracy and mean confidence of the labelled rows of `table`, with intervals from
    `core.scores.bootstrap` (specimen-cluster, class-stratified; the encoding is in the module docstring)."""
    _check_strategy(strategy)
    rows = _labelled(table)
    if len(rows) == 0:
        raise CalibrationError("no row has a label the model knows; there is nothing to calibrate")
    y = rows.frame["label_idx"].to_numpy(dtype=np.int64)
    confidence = rows.frame["confidence"].to_numpy(dtype=np.float64)
    correct = (rows.frame["pred_idx"].to_numpy() == y).astype(np.int64)
    k = len(rows.class_names)
    n_conf = n_bins * LEVELS_PER_BIN
    edges = bin_edges(confidence, n_bins=n_bins, strategy=strategy)
    bin_of_row = bin_index(confidence, edges)
    # confidence levels nested in the bins (equal-mass within each bin): a level never straddles two bins
    level = np.zeros(len(y), dtype=np.int64)
    for b in np.unique(bin_of_row):
        inside = bin_of_row == b
        level[inside] = b * LEVELS_PER_BIN + np.minimum(_levels(confidence[inside], LEVELS_PER_BIN),
                                                        LEVELS_PER_BIN - 1)
    conf_cell = level + n_conf * correct  # (level, right/wrong)
    brier, nll = brier_scores(rows.pred_probs, y), log_losses(rows.pred_probs, y)
    brier_level, nll_level = _levels(brier, LEVELS), _levels(nll, LEVELS)
    k_plan = max(k, 2 * n_conf, LEVELS + 1)
    conf_mean = _level_means(conf_cell, confidence, 2 * n_conf)
    brier_mean, nll_mean = _level_means(brier_level, brier, LEVELS + 1), _level_means(nll_level, nll, LEVELS + 1)
    plan = ResamplingPlan(y, {"conf": conf_cell, "brier": brier_level, "nll": nll_level}, k=k_plan,
                          groups=rows.frame["specimen_id"].to_numpy(), class_prior=False)

    def statistic(tally: Tally) -> Mapping[str, np.ndarray]:
        counts = tally.predicted["conf"][:, : 2 * n_conf]
        n = counts.sum(axis=1)
        wrong, right = counts[:, :n_conf], counts[:, n_conf:]
        per_level = wrong + right
        conf_sum = wrong * conf_mean[:n_conf] + right * conf_mean[n_conf:]
        bin_n = np.add.reduceat(per_level, np.arange(0, n_conf, LEVELS_PER_BIN), axis=1)
        bin_conf = np.add.reduceat(conf_sum, np.arange(0, n_conf, LEVELS_PER_BIN), axis=1)
        bin_hit = np.add.reduceat(right, np.arange(0, n_conf, LEVELS_PER_BIN), axis=1)
        gap = np.abs(bin_hit - bin_conf)
        safe_n = np.where(n > 0, n, 1.0)
        mce = np.where(bin_n > 0, gap / np.maximum(bin_n, 1e-12), 0.0).max(axis=1)
        return {
            "ece": gap.sum(axis=1) / safe_n,
            "mce": mce,
            "brier": tally.predicted["brier"][:, : LEVELS + 1] @ brier_mean / safe_n,
            "nll": tally.predicted["nll"][:, : LEVELS + 1] @ nll_mean / safe_n,
            "accuracy": right.sum(axis=1) / safe_n,
            "mean_confidence": conf_sum.sum(axis=1) / safe_n,
        }

    return bootstrap(plan, statistic, config)


def per_class_calibration(table: PredictionTable, *, n_bins: int = DEFAULT_BINS) -> pd.DataFrame:
    """One row per model class with labelled rows: `class`, `support`, `accuracy` (recall), `mean_confidence` (of
    the class's rows' top label), `classwise_ece` (one-vs-rest: class c's probability against [y = c] over every
    row, equal-width bins), `brier` (the class's rows' mean multiclass Brier), `nll` (their mean NLL)."""
    rows = _labelled(table)
    y = rows.frame["label_idx"].to_numpy(dtype=np.int64)
    k = len(rows.class_names)
    support = np.bincount(y, minlength=k)
    correct = (rows.frame["pred_idx"].to_numpy() == y).astype(np.float64)
    safe = np.maximum(support, 1)
    confidence = rows.frame["confidence"].to_numpy(dtype=np.float64)
    brier, nll = brier_scores(rows.pred_probs, y), log_losses(rows.pred_probs, y)
    # (N, K) equal-width bin of each class probability (a value on an inner edge goes to the upper bin here)
    which = np.minimum((rows.pred_probs * n_bins).astype(np.int64), n_bins - 1)
    classwise = np.zeros(k)
    n = len(y)
    if n:
        onehot = np.zeros_like(rows.pred_probs, dtype=np.float64)
        onehot[np.arange(n), y] = 1.0
        flat = (which + n_bins * np.arange(k)[None, :]).ravel()
        prob_sum = np.bincount(flat, weights=rows.pred_probs.astype(np.float64).ravel(),
                               minlength=n_bins * k).reshape(k, n_bins)
        hit_sum = np.bincount(flat, weights=onehot.ravel(), minlength=n_bins * k).reshape(k, n_bins)
        classwise = np.abs(hit_sum - prob_sum).sum(axis=1) / n
    frame = pd.DataFrame({
        "class": list(rows.class_names),
        "support": support,
        "accuracy": np.bincount(y, weights=correct, minlength=k) / safe,
        "mean_confidence": np.bincount(y, weights=confidence, minlength=k) / safe,
        "classwise_ece": classwise,
        "brier": np.bincount(y, weights=brier, minlength=k) / safe,
        "nll": np.bincount(y, weights=nll, minlength=k) / safe,
    })
    frame["gap"] = frame["accuracy"] - frame["mean_confidence"]
    return frame[frame["support"] > 0].reset_index(drop=True)


def calibration_report(table: PredictionTable, *, n_bins: int = DEFAULT_BINS, strategy: BinStrategy = "uniform",
                       config: BootstrapConfig = BootstrapConfig()) -> CalibrationReport:
    """Everything the Calibration page shows for one table (its labelled rows)."""
    rows = _labelled(table)
    if len(rows) == 0:
        raise CalibrationError("no row in this split has a label the model knows; there is nothing to calibrate")
    y = rows.frame["label_idx"].to_numpy()
    correct = rows.frame["pred_idx"].to_numpy() == y
    bins = reliability_table(rows.frame["confidence"].to_numpy(), correct, n_bins=n_bins, strategy=strategy)
    result = calibration_intervals(rows, config, n_bins=n_bins, strategy=strategy)
    metrics = pd.DataFrame({
        "metric": list(CALIBRATION_METRICS),
        "label": list(CALIBRATION_METRICS.values()),
        "value": [float(result.values[m]) for m in CALIBRATION_METRICS],
        "low": [float(result.low[m]) for m in CALIBRATION_METRICS],
        "high": [float(result.high[m]) for m in CALIBRATION_METRICS],
    })
    return CalibrationReport(bins=bins, metrics=metrics, per_class=per_class_calibration(rows, n_bins=n_bins),
                             n_rows=len(rows), caption=result.caption, strategy=strategy, n_bins=n_bins)
