"""Calibration: reliability bins, ECE/MCE/Brier/NLL with bootstrap intervals, and temperature scaling per checkpoint.

The predictions table stores probabilities, not logits. Temperature scaling needs only logits up to a constant per
row, and `log p = z - logsumexp(z)` is exactly that, so `softmax(log p / T) == softmax(z / T)`: it is fitted and
applied on log-probabilities without loss. (Scores that need the constant itself, such as the energy, cannot be
recovered from probabilities; `core.novelty` says how it handles that.) Temperature scaling never changes the
predicted class, only the confidences.

Intervals come from the one bootstrap (`core.scores`: specimen-cluster, class-stratified), all calibration metrics
(overall and per class) from one run of it: the plan's only column is the row's weight group (`weight_groups`: the
rows every draw weights alike, i.e. its resampled unit), so each draw's tally holds every group's weight, and every
metric is a weighted sum of the groups' contributions (sparse matrices for the binned counts, one float32 `(G, 3K)`
matrix for the per-class sums of the probability, its square and -log(1 - p)): a draw of every metric is a few
matrix products, and the resampled values are exact, not binned.

Per class (`per_class_calibration`) the metrics are one-vs-rest: class c's probability against [y = c] over every
row, as scikit-learn computes them on the column (`calibration_curve`, `brier_score_loss`, `log_loss`); its bins
are equal-width (equal-mass bins of a one-vs-rest column put nearly every bin at p ~ 0).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from core.errors import TaxaLensError
from core.modes import CONFIDENCE_MODES  # noqa: F401 (re-exported: the switch's names live in core.modes)
from core.predictions import PredictionTable, build_prediction_table
from core.ranking import grouped_folds
from core.scores import BootstrapConfig, BootstrapResult, ResamplingPlan, Tally, bootstrap

logger = logging.getLogger(__name__)

BinStrategy = Literal["uniform", "quantile"]
BIN_STRATEGIES: dict[str, str] = {"uniform": "equal width", "quantile": "equal mass"}
DEFAULT_BINS = 15
CALIBRATION_METRICS: dict[str, str] = {"ece": "ECE", "mce": "MCE", "brier": "Brier score", "nll": "NLL",
                                       "accuracy": "Accuracy", "mean_confidence": "Mean confidence"}
EXACT_FOLD_SPECIMENS = 300  # specimens up to which folds come from core.ranking.grouped_folds
TEMPERATURE_BOUNDS = (0.05, 20.0)  # temperatures searched
_NEWTON_STEPS = 50  # at most, per temperature fit (it converges in about 5)
_EPS = 1e-12
_EMPTY_BIN = 1e-9  # a one-vs-rest bin whose weight (the total minus the other bins') is below this holds no row
BCA_MAX_ROWS = 20_000  # calibration intervals by BCa up to this many rows (its jackknife is costly above)
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
    from scipy.special import log_softmax  # here, not at the top: every evaluation page loads this module

    logp = np.log(np.clip(np.asarray(pred_probs, dtype=np.float64), _EPS, None))
    return np.exp(log_softmax(logp / temperature, axis=1)).astype(np.float32)


class _Shifted:
    """Log-probabilities shifted so that each row's maximum is 0 (`(N, K)` float32) and the given class's entry:
    the NLL of `softmax(logp * beta)` (beta = 1 / T) is `mean(log sum_j exp(beta a_ij) - beta a_iy)`, convex in
    beta, with derivatives `mean(E_q[a] - a_y)` and `mean(Var_q[a])` (q = the scaled softmax), so Newton's method
    fits it in a few passes over the matrix."""

    def __init__(self, logp: np.ndarray, y: np.ndarray) -> None:
        self.a = logp - logp.max(axis=1, keepdims=True)
        self.given = self.a[np.arange(len(y)), y].astype(np.float64)

    def passes(self, beta: float, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row `sum exp(beta a)`, `E_q[a]` and `E_q[a^2]` (float64), over `rows` (a mask) or all."""
        a = self.a if rows is None else self.a[rows]
        e = np.exp(a * np.float32(beta))
        s0 = e.sum(axis=1, dtype=np.float64)
        e *= a
        s1 = e.sum(axis=1, dtype=np.float64)
        s2 = np.einsum("ij,ij->i", e, a, dtype=np.float64)
        return s0, s1 / s0, s2 / s0

    def fit(self, rows: np.ndarray | None = None, *, start: float = 1.0) -> float:
        """The temperature minimising the NLL of `rows` (a mask, or all): safeguarded Newton on beta = 1 / T within
        `TEMPERATURE_BOUNDS`."""
        given = self.given if rows is None else self.given[rows]
        low, high = 1.0 / TEMPERATURE_BOUNDS[1], 1.0 / TEMPERATURE_BOUNDS[0]
        beta = float(np.clip(start, low, high))
        for _ in range(_NEWTON_STEPS):
            _, mean_a, mean_a2 = self.passes(beta, rows)
            grad = float(np.mean(mean_a - given))
            curvature = float(np.mean(mean_a2 - mean_a ** 2))
            if grad > 0:
                high = beta
            else:
                low = beta
            step = grad / curvature if curvature > 0 else np.inf
            proposal = beta - step
            if not low < proposal < high:
                proposal = 0.5 * (low + high)
            if abs(proposal - beta) <= 1e-7 * beta or high - low <= 1e-9:
                beta = proposal
                break
            beta = proposal
        return float(1.0 / beta)


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
    shifted = _Shifted(np.log(np.clip(rows.pred_probs, np.float32(_EPS), None)).astype(np.float32), y)
    temperature = shifted.fit()
    n_specimens = rows.frame["specimen_id"].nunique()
    folds_used = min(n_folds, n_specimens)
    # out of fold: each row's sum exp(a / T_fold) gives its calibrated NLL and top-label confidence (a's maximum is
    # 0, so the top probability is 1 / sum); the predicted class never changes
    sum_after = np.empty(len(y), dtype=np.float64)
    beta_after = np.empty(len(y), dtype=np.float64)
    fold_ts: list[float] = []
    if folds_used >= 2:
        folds = specimen_folds(rows.frame, n_folds=folds_used, seed=seed)
        for fold in range(folds_used):
            held = folds == fold
            t = shifted.fit(~held, start=1.0 / temperature)
            fold_ts.append(t)
            sum_after[held] = shifted.passes(1.0 / t, held)[0]
            beta_after[held] = 1.0 / t
    else:
        folds_used = 0
        sum_after = shifted.passes(1.0 / temperature)[0]
        beta_after[:] = 1.0 / temperature
    correct = rows.frame["pred_idx"].to_numpy() == y
    fit = TemperatureFit(
        checkpoint=checkpoint, temperature=temperature, split=split, n_rows=len(y), n_folds=folds_used,
        fold_temperatures=tuple(fold_ts), nll_before=float(log_losses(rows.pred_probs, y).mean()),
        nll_after=float(np.mean(np.log(sum_after) - beta_after * shifted.given)),
        ece_before=expected_calibration_error(rows.frame["confidence"].to_numpy(), correct),
        ece_after=expected_calibration_error(1.0 / sum_after, correct),
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


CLASS_METRICS: dict[str, str] = {"ece": "ECE", "mce": "MCE", "brier": "Brier", "nll": "NLL"}  # per class, one-vs-rest
_EXACT_ROWS = 8  # weightings up to this many (the point values) are summed in float64, more in float32
_EXACT_CHUNK = 8192  # weight groups per float64 block of the exact sums


def weight_groups(table_frame: pd.DataFrame) -> np.ndarray:
    """Per row, its group of rows that every draw of `core.scores.ResamplingPlan` weights alike (codes 0..G-1): its
    unit, as that module's docstring defines it: the specimen when some specimen has several images, else the image;
    a specimen that is the only one of its class (its most common label, ties: the lower class) has its images
    resampled instead, so each of its images is a group of its own."""
    n = len(table_frame)
    codes, uniques = pd.factorize(table_frame["specimen_id"], sort=False)
    codes = codes.astype(np.int64)
    if len(uniques) == n:
        return np.arange(n)
    y = table_frame["label_idx"].to_numpy(dtype=np.int64)
    pairs = pd.DataFrame({"unit": codes, "label": y}).value_counts().reset_index(name="count")
    pairs = pairs.sort_values(["unit", "count", "label"], ascending=[True, False, True]).drop_duplicates("unit")
    majority = np.empty(len(uniques), dtype=np.int64)
    majority[pairs["unit"].to_numpy()] = pairs["label"].to_numpy()
    sizes = np.bincount(codes, minlength=len(uniques))
    lone = (np.bincount(majority)[majority] == 1) & (sizes > 1)
    split_rows = lone[codes]
    codes = np.where(split_rows, len(uniques) + np.arange(n), codes)
    return pd.factorize(codes, sort=False)[0].astype(np.int64)


class _Contributions:
    """Every calibration sum's contribution of each weight group (`weight_groups`; see the module docstring), so
    that a tally's group weights `(R, G)` give each metric of each weighting by a few matrix products (`metrics`)."""

    def __init__(self, rows: PredictionTable, groups: np.ndarray, edges: np.ndarray, n_bins: int) -> None:
        y = rows.frame["label_idx"].to_numpy(dtype=np.int64)
        n, k = len(y), len(rows.class_names)
        g = int(groups.max()) + 1
        self.k, self.n_bins = k, n_bins
        self.group_rows = np.bincount(groups, minlength=g).astype(np.float64)
        from scipy import sparse  # here, not at the top: every evaluation page loads this module

        to_group = sparse.csr_matrix((np.ones(n, dtype=np.float32), (groups, np.arange(n))), shape=(g, n))
        probs = np.ascontiguousarray(rows.pred_probs, dtype=np.float32)
        confidence = rows.frame["confidence"].to_numpy(dtype=np.float64)
        correct = (rows.frame["pred_idx"].to_numpy() == y).astype(np.float64)
        # overall: per confidence bin (the chosen strategy) count, confidence sum and hits; Brier and NLL per row
        b = bin_index(confidence, edges)
        cols = np.r_[b, n_bins + b, 2 * n_bins + b, [3 * n_bins] * n, [3 * n_bins + 1] * n]
        vals = np.r_[np.ones(n), confidence, correct, brier_scores(rows.pred_probs, y), log_losses(rows.pred_probs, y)]
        self.overall = sparse.csr_matrix((vals, (np.tile(groups, 5), cols)), shape=(g, 3 * n_bins + 2))
        # per class, one-vs-rest over equal-width bins: the (row, class) pairs above the first bin's edge are few
        # (at most n_bins - 1 per row); the first bin's count and probability sum are the totals minus the others
        uniform = np.linspace(0.0, 1.0, n_bins + 1)
        row_i, cls_i = np.nonzero(probs > uniform[1])
        p_hi = probs[row_i, cls_i].astype(np.float64)
        bin_hi = bin_index(p_hi, uniform)
        p_true = probs[np.arange(n), y].astype(np.float64)
        bin_true = bin_index(p_true, uniform)
        kb = k * n_bins
        cols = np.r_[cls_i * n_bins + bin_hi, kb + cls_i * n_bins + bin_hi, 2 * kb + y * n_bins + bin_true,
                     3 * kb + y, 3 * kb + k + y]
        vals = np.r_[np.ones(len(p_hi)), p_hi, np.ones(n), 1.0 - 2.0 * p_true,
                     -np.log(np.clip(p_true, _EPS, 1.0)) + np.log(np.clip(1.0 - p_true, _EPS, 1.0))]
        at = np.r_[groups[row_i], groups[row_i], groups, groups, groups]
        self.sparse_class = sparse.csr_matrix((vals, (at, cols)), shape=(g, 3 * kb + 2 * k))
        # dense per-class sums of each group: p, p^2 and -log(1 - p) of every (row, class), `(G, 3K)` float32
        dense = np.empty((n, 3 * k), dtype=np.float32)
        dense[:, :k] = probs
        np.square(probs, out=dense[:, k:2 * k])
        np.log(np.clip(1.0 - probs, np.float32(_EPS), None), out=dense[:, 2 * k:])
        dense[:, 2 * k:] *= -1
        self.dense = dense if g == n else np.asarray(to_group @ dense, dtype=np.float32)

    def metrics(self, group_weights: np.ndarray) -> dict[str, np.ndarray]:
        """Every calibration metric under weights `(R, G)` of each group's rows: overall `(R,)`, per class
        `class_*` `(R, K)`."""
        r, k, nb = len(group_weights), self.k, self.n_bins
        weights = group_weights / self.group_rows  # the weight of each of a group's rows
        total = group_weights.sum(axis=1)
        safe_total = np.where(total > 0, total, 1.0)
        sums = np.asarray((self.overall.T @ weights.T).T)
        count, conf, hits = sums[:, :nb], sums[:, nb:2 * nb], sums[:, 2 * nb:3 * nb]
        gap = np.abs(hits - conf)
        out = {
            "ece": gap.sum(axis=1) / safe_total,
            "mce": np.where(count > 0, gap / np.maximum(count, _EPS), 0.0).max(axis=1),
            "brier": sums[:, 3 * nb] / safe_total,
            "nll": sums[:, 3 * nb + 1] / safe_total,
            "accuracy": hits.sum(axis=1) / safe_total,
            "mean_confidence": conf.sum(axis=1) / safe_total,
        }
        if r <= _EXACT_ROWS:
            dense = sum(weights[:, i:i + _EXACT_CHUNK] @ self.dense[i:i + _EXACT_CHUNK].astype(np.float64)
                        for i in range(0, len(self.dense), _EXACT_CHUNK))
        else:  # (D^T W^T)^T: OpenBLAS is far faster on this orientation than on W D with W's few long rows
            dense = (self.dense.T @ weights.astype(np.float32).T).T.astype(np.float64)
        kb = k * nb
        sparse_sums = np.asarray((self.sparse_class.T @ weights.T).T)
        count_c = sparse_sums[:, :kb].reshape(r, k, nb)
        prob_c = sparse_sums[:, kb:2 * kb].reshape(r, k, nb)
        count_c[:, :, 0] = total[:, None] - count_c[:, :, 1:].sum(axis=2)
        prob_c[:, :, 0] = dense[:, :k] - prob_c[:, :, 1:].sum(axis=2)
        gap_c = np.abs(sparse_sums[:, 2 * kb:3 * kb].reshape(r, k, nb) - prob_c)
        out["class_ece"] = gap_c.sum(axis=2) / safe_total[:, None]
        out["class_mce"] = np.where(count_c > _EMPTY_BIN, gap_c / np.maximum(count_c, _EPS), 0.0).max(axis=2)
        out["class_brier"] = (dense[:, k:2 * k] + sparse_sums[:, 3 * kb:3 * kb + k]) / safe_total[:, None]
        out["class_nll"] = (dense[:, 2 * k:] + sparse_sums[:, 3 * kb + k:]) / safe_total[:, None]
        return out


def calibration_intervals(table: PredictionTable, config: BootstrapConfig, *, n_bins: int = DEFAULT_BINS,
                          strategy: BinStrategy = "uniform") -> BootstrapResult:
    """ECE, MCE, Brier, NLL, accuracy and mean confidence of the labelled rows of `table` (the top label, bins of
    `strategy`), and per class one-vs-rest (`class_ece`, `class_mce`, `class_brier`, `class_nll`: `(K,)`, equal-width
    bins), with intervals from one run of `core.scores.bootstrap` (specimen-cluster, class-stratified; the module
    docstring says how). The "bca" method's jackknife holds a `(types, 3 G)` block per chunk, so above
    `BCA_MAX_ROWS` rows the percentile interval of the same draws is given instead (the caption says so)."""
    _check_strategy(strategy)
    rows = _labelled(table)
    if len(rows) == 0:
        raise CalibrationError("no row has a label the model knows; there is nothing to calibrate")
    if config.method == "bca" and len(rows) > BCA_MAX_ROWS:
        logger.warning("calibration intervals: BCa above %d rows is too costly; percentile intervals instead",
                       BCA_MAX_ROWS)
        config = replace(config, method="percentile")
    y = rows.frame["label_idx"].to_numpy(dtype=np.int64)
    confidence = rows.frame["confidence"].to_numpy(dtype=np.float64)
    groups = weight_groups(rows.frame)
    n_groups = int(groups.max()) + 1
    parts = _Contributions(rows, groups, bin_edges(confidence, n_bins=n_bins, strategy=strategy), n_bins)
    # the plan's one column is the row's weight group: a tally's counts of it are the groups' weights
    plan = ResamplingPlan(y, {"group": groups}, k=max(n_groups, len(rows.class_names)),
                          groups=rows.frame["specimen_id"].to_numpy(), class_prior=False)

    def statistic(tally: Tally) -> Mapping[str, np.ndarray]:
        return parts.metrics(np.asarray(tally.predicted["group"][:, :n_groups], dtype=np.float64))

    return bootstrap(plan, statistic, config)


def per_class_calibration(table: PredictionTable, *, n_bins: int = DEFAULT_BINS,
                          result: BootstrapResult | None = None) -> pd.DataFrame:
    """One row per model class with labelled rows: `class`, `support`, `accuracy` (recall), `mean_confidence` (of
    the class's rows' top label), `gap` (accuracy - mean confidence), and one-vs-rest over every row (class c's
    probability against [y = c], `n_bins` equal-width bins) `ece`, `mce`, `brier`, `nll` each with `_low` and `_high`
    from `result` (`calibration_intervals` of the same rows; NaN without it). `ece`/`mce` are those of
    `sklearn.calibration.calibration_curve(y == c, p[:, c])`, `brier` is `brier_score_loss(y == c, p[:, c])`, `nll`
    is `log_loss(y == c, p[:, c])`."""
    rows = _labelled(table)
    y = rows.frame["label_idx"].to_numpy(dtype=np.int64)
    k = len(rows.class_names)
    support = np.bincount(y, minlength=k)
    correct = (rows.frame["pred_idx"].to_numpy() == y).astype(np.float64)
    safe = np.maximum(support, 1)
    confidence = rows.frame["confidence"].to_numpy(dtype=np.float64)
    if result is None:
        groups = np.arange(len(y))
        parts = _Contributions(rows, groups, bin_edges(confidence, n_bins=n_bins), n_bins)
        values = {name: v[0] for name, v in parts.metrics(np.ones((1, len(y)))).items()}
        low = high = {f"class_{m}": np.full(k, np.nan) for m in CLASS_METRICS}
    else:
        values, low, high = result.values, result.low, result.high
    frame = pd.DataFrame({
        "class": list(rows.class_names),
        "support": support,
        "accuracy": np.bincount(y, weights=correct, minlength=k) / safe,
        "mean_confidence": np.bincount(y, weights=confidence, minlength=k) / safe,
    })
    frame["gap"] = frame["accuracy"] - frame["mean_confidence"]
    for metric in CLASS_METRICS:
        key = f"class_{metric}"
        frame[metric] = np.asarray(values[key], dtype=np.float64)
        frame[f"{metric}_low"] = np.asarray(low[key], dtype=np.float64)
        frame[f"{metric}_high"] = np.asarray(high[key], dtype=np.float64)
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
    return CalibrationReport(bins=bins, metrics=metrics, per_class=per_class_calibration(rows, n_bins=n_bins,
                                                                                         result=result),
                             n_rows=len(rows), caption=result.caption, strategy=strategy, n_bins=n_bins)
