"""Auto-accept thresholds: per predicted class, the lowest confidence above which predictions reach a target
precision (its lower confidence bound, not the point estimate), checked on held-out specimen-grouped folds; the
risk-coverage curve; CSV/JSON export for a deployment.

The scan over thresholds bounds each candidate's precision with the Wilson score bound (`core.scores.wilson_interval`)
on the class's effective number of specimens (accepted images divided by the table's images per specimen, as
`core.scores.class_interval_bounds` does at the boundary): a bootstrap per candidate threshold would cost thousands
of bootstraps. The chosen thresholds are then scored once with the shared bootstrap (`class_interval_bounds` on a
prediction column where rejected images predict no class), which gives the reported `precision_low`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.calibration import specimen_folds
from core.errors import TaxaLensError
from core.predictions import PredictionTable
from core.scores import BootstrapConfig, ResamplingPlan, class_interval_bounds, wilson_interval

logger = logging.getLogger(__name__)

THRESHOLD_COLUMNS = ("class", "threshold", "reachable", "n_predicted", "n_accepted", "coverage", "precision",
                     "precision_low", "heldout_precision", "heldout_coverage", "heldout_accepted")
_CURVE_POINTS = 500


class ThresholdError(TaxaLensError, ValueError):
    """Thresholds that cannot be computed as asked; the message names the value and the fix."""


@dataclass(frozen=True)
class ThresholdConfig:
    """What the thresholds must reach."""

    precision: float = 0.95  # target precision of the accepted predictions of each class
    confidence_level: float = 0.95  # of the lower bound that must reach the target
    n_folds: int = 5  # specimen-grouped folds of the held-out check (capped at the number of specimens)
    seed: int = 0  # fold assignment and bootstrap
    n_boot: int = 1000  # bootstrap resamples of the reported precision_low

    def __post_init__(self) -> None:
        if not 0.0 < self.precision < 1.0:
            raise ThresholdError(f"target precision must be in (0, 1), got {self.precision}; e.g. --precision 0.95")
        if not 0.0 < self.confidence_level < 1.0:
            raise ThresholdError(f"confidence level must be in (0, 1), got {self.confidence_level}")


@dataclass(frozen=True)
class AutoAcceptThresholds:
    """Per-class thresholds and what they let through."""

    frame: pd.DataFrame  # THRESHOLD_COLUMNS, one row per model class
    config: ThresholdConfig
    n_rows: int  # labelled rows the thresholds were chosen on
    accepted_share: float  # share of all rows accepted unreviewed
    heldout_precision: float  # precision of everything accepted on held-out folds
    unreachable: tuple[str, ...]  # classes whose predictions never reach the target

    def as_dict(self, **extra: object) -> dict:
        """The deployment file's content: target, bounds and one entry per class (threshold null: always review)."""
        rows = self.frame.to_dict(orient="records")
        classes = {str(r["class"]): {k: (None if isinstance(v, float) and math.isnan(v) else v)
                                     for k, v in r.items() if k != "class"} for r in rows}
        return {"target_precision": self.config.precision, "confidence_level": self.config.confidence_level,
                "rule": "accept a prediction unreviewed when its confidence >= its predicted class's threshold",
                **extra, "n_rows": self.n_rows, "accepted_share": self.accepted_share,
                "heldout_precision": self.heldout_precision, "unreachable": list(self.unreachable),
                "classes": classes}


def risk_coverage_curve(confidence: np.ndarray, correct: np.ndarray, *, max_points: int = _CURVE_POINTS
                        ) -> pd.DataFrame:
    """`threshold`, `coverage` (share of rows with confidence >= threshold) and `risk` (their error rate), from the
    most confident row down; at most `max_points` rows (evenly spaced in coverage, the last always kept)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    n = len(confidence)
    if n == 0:
        return pd.DataFrame({"threshold": [], "coverage": [], "risk": []})
    order = np.argsort(-confidence, kind="stable")
    sorted_conf = confidence[order]
    hits = np.cumsum(correct[order])
    last = np.r_[sorted_conf[1:] != sorted_conf[:-1], True]  # a threshold accepts every tie
    idx = np.flatnonzero(last)
    if len(idx) > max_points:
        idx = np.unique(np.r_[idx[np.linspace(0, len(idx) - 1, max_points).astype(int)], idx[-1]])
    m = idx + 1
    return pd.DataFrame({"threshold": sorted_conf[idx], "coverage": m / n, "risk": 1.0 - hits[idx] / m})


def _choose(confidence: np.ndarray, pred: np.ndarray, correct: np.ndarray, k: int, config: ThresholdConfig,
            images_per_unit: float) -> np.ndarray:
    """(K,) lowest threshold per predicted class whose accepted rows' Wilson lower bound reaches the target
    (NaN: none does)."""
    thresholds = np.full(k, np.nan)
    order = np.lexsort((-confidence, pred))
    pred_s, conf_s, hit_s = pred[order], confidence[order], correct[order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, pred_s[1:] != pred_s[:-1]])
    stops = np.r_[starts[1:], len(pred_s)]
    for start, stop in zip(starts, stops, strict=True):
        conf, hits = conf_s[start:stop], np.cumsum(hit_s[start:stop])
        m = np.arange(1, stop - start + 1, dtype=np.float64)
        low, _ = wilson_interval(hits / images_per_unit, m / images_per_unit, 2 * config.confidence_level - 1)
        ok = (low >= config.precision) & np.r_[conf[1:] != conf[:-1], True]  # only where the next row is lower
        if ok.any():
            thresholds[pred_s[start]] = conf[np.flatnonzero(ok)[-1]]
    return thresholds


def auto_accept_thresholds(table: PredictionTable, config: ThresholdConfig = ThresholdConfig()
                           ) -> AutoAcceptThresholds:
    """Per-class auto-accept thresholds on the labelled rows of `table` (usually the validation split).

    The lower bound is one-sided at `config.confidence_level` (a 95% bound: the 90% two-sided interval's lower
    end). Held-out check: specimen-grouped folds (`core.calibration.specimen_folds`), thresholds chosen on the other
    folds and applied to each held-out fold; `heldout_precision` and `heldout_coverage` pool the held-out folds.
    `coverage`: share of the images predicted as the class that the threshold accepts.
    """
    known = table.frame["label_idx"].to_numpy() >= 0
    rows = table.subset(known) if not known.all() else table
    if len(rows) == 0:
        raise ThresholdError("no row has a label the model knows: thresholds need labelled rows (the val split)")
    k = len(rows.class_names)
    frame = rows.frame
    y = frame["label_idx"].to_numpy(dtype=np.int64)
    pred = frame["pred_idx"].to_numpy(dtype=np.int64)
    confidence = frame["confidence"].to_numpy(dtype=np.float64)
    correct = pred == y
    specimens = frame["specimen_id"].to_numpy()
    images_per_unit = len(rows) / max(pd.unique(specimens).size, 1)
    thresholds = _choose(confidence, pred, correct, k, config, images_per_unit)

    heldout_accept = np.zeros(len(rows), dtype=bool)
    n_folds = min(config.n_folds, pd.unique(specimens).size)
    if n_folds >= 2:
        folds = specimen_folds(frame, n_folds=n_folds, seed=config.seed)
        for fold in range(n_folds):
            held = folds == fold
            fold_t = _choose(confidence[~held], pred[~held], correct[~held], k, config, images_per_unit)
            t = fold_t[pred[held]]
            heldout_accept[held] = ~np.isnan(t) & (confidence[held] >= np.nan_to_num(t, nan=np.inf))
    else:
        logger.warning("one specimen only: no held-out check of the thresholds")

    accepted = ~np.isnan(thresholds[pred]) & (confidence >= np.nan_to_num(thresholds[pred], nan=np.inf))
    n_predicted = np.bincount(pred, minlength=k)
    n_accepted = np.bincount(pred[accepted], minlength=k)
    n_hits = np.bincount(pred[accepted & correct], minlength=k)
    ho_accepted = np.bincount(pred[heldout_accept], minlength=k)
    ho_hits = np.bincount(pred[heldout_accept & correct], minlength=k)
    precision_low = np.full(k, np.nan)
    if accepted.any() and config.n_boot:
        column = np.where(accepted, pred, k)  # rejected images predict "no class" (index k)
        plan = ResamplingPlan(y, {"accepted": column}, k=k + 1, groups=specimens)
        bounds = class_interval_bounds(plan, BootstrapConfig(n_boot=config.n_boot, seed=config.seed,
                                                             confidence_level=2 * config.confidence_level - 1),
                                       column="accepted")
        precision_low = np.where(n_accepted > 0, bounds["precision_low"][:k], np.nan)
    safe = np.maximum(n_predicted, 1)
    out = pd.DataFrame({
        "class": list(rows.class_names),
        "threshold": thresholds,
        "reachable": ~np.isnan(thresholds),
        "n_predicted": n_predicted,
        "n_accepted": n_accepted,
        "coverage": n_accepted / safe,
        "precision": np.where(n_accepted > 0, n_hits / np.maximum(n_accepted, 1), np.nan),
        "precision_low": precision_low,
        "heldout_precision": np.where(ho_accepted > 0, ho_hits / np.maximum(ho_accepted, 1), np.nan),
        "heldout_coverage": ho_accepted / safe,
        "heldout_accepted": ho_accepted,
    })
    unreachable = tuple(str(c) for c, r, n in zip(out["class"], out["reachable"], n_predicted, strict=True)
                        if not r and n > 0)
    return AutoAcceptThresholds(
        frame=out, config=config, n_rows=len(rows), accepted_share=float(accepted.mean()),
        heldout_precision=float(ho_hits.sum() / ho_accepted.sum()) if ho_accepted.sum() else float("nan"),
        unreachable=unreachable,
    )


def thresholds_csv(result: AutoAcceptThresholds) -> bytes:
    """The per-class table as CSV (UTF-8): one row per class; an empty threshold means "always review"."""
    return result.frame.to_csv(index=False, lineterminator="\n").encode("utf-8")


def thresholds_json(result: AutoAcceptThresholds, **extra: object) -> bytes:
    """The deployment file (`AutoAcceptThresholds.as_dict` plus `extra`, e.g. the checkpoint and temperature)."""
    return json.dumps(result.as_dict(**extra), indent=2, default=_plain).encode("utf-8")


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_thresholds(result: AutoAcceptThresholds, out: str | Path, **extra: object) -> Path:
    """Write `out` as JSON (`.json`) or CSV (any other suffix); returns the path."""
    out = Path(out)
    if out.parent and not out.parent.exists():
        raise ThresholdError(f"the folder of --out {out} does not exist; create it or pick another path")
    out.write_bytes(thresholds_json(result, **extra) if out.suffix.lower() == ".json" else thresholds_csv(result))
    return out
