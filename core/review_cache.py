"""What the Review queue reads, stored beside the predictions: the label-issue ranking of each split and the
prediction-set thresholds, under the keys the page computes, so its first visit reads them instead of running
cleanlab (a minute and gigabytes at a million images) and scoring every class of the validation rows."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from core import conformal
from core.conformal import ConformalCalibration, ConformalConfig
from core.predictions import PredictionTable, table_token
from core.ranking import cached_label_issues, label_issue_key, reference_token
from core.result_cache import SPLITS, cached_result

logger = logging.getLogger(__name__)

REFERENCE_SPLIT = "train"  # the kNN reference of the ranking: the labelled training rows
CALIBRATION_SPLIT = "val"  # the rows the prediction-set thresholds are calibrated on


def review_ranking_key(table: PredictionTable, full: PredictionTable | None, *, split: str, predictions_key: str,
                       crossval_key: str = "") -> str:
    """The stored ranking's key for `table` (split `split` of `full`, the whole predictions file whose page cache key
    is `predictions_key`), its kNN reference (`full`'s training rows, keyed without slicing them) and the
    cross-validated table's key (`""` without one)."""
    reference = reference_token(full, REFERENCE_SPLIT) if full is not None else "-"
    return label_issue_key(table_token(table, split, predictions_key), reference, crossval_key)


def stored_review_ranking(folder: Path | None, table: PredictionTable, full: PredictionTable | None, *, split: str,
                          predictions_key: str, crossval_key: str = "", cv_table: PredictionTable | None = None):
    """`core.ranking.cached_label_issues` under `review_ranking_key`: read from `folder`, or ranked (the training
    rows of `full` sliced out as the kNN reference only then) and stored."""
    key = review_ranking_key(table, full, split=split, predictions_key=predictions_key, crossval_key=crossval_key)
    return cached_label_issues(folder, key, table, cv_table=cv_table,
                               reference=(lambda: full.for_split(REFERENCE_SPLIT)) if full is not None else None)


def stored_set_calibration(folder: Path | None, calibration_token: str, config: ConformalConfig,
                           calibration: PredictionTable | Callable[[], PredictionTable]) -> ConformalCalibration:
    """`core.conformal.calibrate_on_table(calibration, config)`, read from `folder` when stored there (per-class
    thresholds as Parquet through `core.result_cache`, keyed by `calibration_token` (the calibration rows' content),
    the settings and the conformal code), else computed and stored: scoring every class of 200,000 validation rows
    takes most of a minute at 1M x 1,000, so a restarted server reads the thresholds instead. `calibration` may be
    a function returning the rows, called only when the thresholds are computed."""
    def compute() -> pd.DataFrame:
        fit = conformal.calibrate_on_table(calibration() if callable(calibration) else calibration, config)
        return pd.DataFrame({"threshold": fit.thresholds, "n_calibration": fit.n_calibration})

    digest = hashlib.sha256(Path(conformal.__file__).read_bytes())  # the conformal code, not the interval code
    digest.update(json.dumps([calibration_token, sorted(asdict(config).items())]).encode())
    key = f"set-calibration-{digest.hexdigest()[:24]}"
    stored = cached_result(folder, key, compute)
    return ConformalCalibration(stored["threshold"].to_numpy(dtype=np.float64), stored["n_calibration"].to_numpy(),
                                config)


def set_calibration_token(full: PredictionTable, checkpoint: str) -> str:
    """The key part of the prediction-set thresholds calibrated on the validation rows of `full` (checkpoint
    `checkpoint`'s predictions, all splits), as the review page computes it: keyed without slicing the rows
    (`core.ranking.reference_token`)."""
    return f"{reference_token(full, CALIBRATION_SPLIT)}|{checkpoint}"


def has_labelled_calibration_rows(full: PredictionTable) -> bool:
    """Whether `full` has validation rows whose label is a model class (what prediction sets are calibrated on)."""
    frame = full.frame
    return bool(((frame["split"] == CALIBRATION_SPLIT).to_numpy(dtype=bool)
                 & (frame["label_idx"].to_numpy() >= 0)).any())


def warm_review_results(full: PredictionTable, folder: Path, *, predictions_key: str, checkpoint: str,
                        splits: tuple[str, ...] = SPLITS, config: ConformalConfig | None = None) -> int:
    """Store what the Review queue's first visit reads for each of `splits` of `full` (a checkpoint's predictions
    opened as the pages open them, `core.probs_sidecar.open_table`; `predictions_key`: the file's path): the
    label-issue ranking (no cross-validated table) and the prediction-set thresholds on the labelled validation rows
    (`config`, default the Calibration page's defaults). Returns how many rankings were ranked or read."""
    done = 0
    for split in splits:
        table = full if split == "all" else full.for_split(split)
        stored_review_ranking(folder, table, full, split=split, predictions_key=predictions_key)
        done += 1
    if has_labelled_calibration_rows(full):
        stored_set_calibration(folder, set_calibration_token(full, checkpoint), config or ConformalConfig(),
                               lambda: full.for_split(CALIBRATION_SPLIT))
    else:
        logger.info("no labelled validation rows: no prediction-set thresholds stored")
    return done
