"""Specimen level: one row per individual (mean probability over its images, majority label)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from core.predictions import PredictionTable, build_prediction_table

logger = logging.getLogger(__name__)

MEAN_CHUNK_NUMBERS = 16_000_000  # probabilities averaged at a time (rows x classes): bounds the float64 copy


def has_specimens(table: PredictionTable) -> bool:
    """True when some specimen has more than one image (specimen-level metrics then differ from image-level)."""
    ids = table.frame["specimen_id"]
    return bool(len(ids)) and ids.nunique() < len(ids)


def specimen_table(table: PredictionTable, *, chunk_numbers: int = MEAN_CHUNK_NUMBERS) -> PredictionTable:
    """One row per specimen: the mean probability vector over its images, the most common label of its images.

    `sample_id` becomes the specimen id; `split` is the split of its first image (splits keep specimens together);
    `meta["n_label_conflicts"]` counts specimens whose images carry more than one label. The means are summed in
    float64 over about `chunk_numbers` probabilities at a time (whole specimens; the result does not depend on it),
    so a 1,000,000 x 1,000 table needs no 8 GB float64 copy.
    """
    frame = table.frame
    if len(frame) == 0:
        return PredictionTable(
            frame=frame.copy(),
            pred_probs=table.pred_probs[:0],
            embeddings=np.zeros((0, 0), dtype=np.float32),
            class_names=table.class_names,
            meta={**table.meta, "level": "specimen", "n_label_conflicts": 0},
        )
    codes, specimens = pd.factorize(frame["specimen_id"], sort=False)
    n_specimens = len(specimens)
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    mean_probs = _specimen_means(table.pred_probs, order, starts, chunk_numbers=chunk_numbers)
    label_counts = frame.groupby([codes, frame["label"].to_numpy()], sort=False).size()
    label_counts = label_counts.reset_index().set_axis(["code", "label", "n"], axis=1)
    conflicts = int((label_counts.groupby("code").size() > 1).sum())
    if conflicts:
        logger.info("%d specimen(s) have images with different labels; each takes its majority label", conflicts)
    majority = label_counts.sort_values(["code", "n", "label"], ascending=[True, False, True]).drop_duplicates("code")
    labels = majority.set_index("code")["label"].reindex(np.arange(n_specimens)).tolist()
    first_split = frame["split"].to_numpy()[order[starts]]
    return build_prediction_table(
        [str(s) for s in specimens],
        mean_probs,
        np.zeros((n_specimens, 0), dtype=np.float32),
        labels=labels,
        splits=list(first_split),
        specimen_ids=[str(s) for s in specimens],
        class_names=table.class_names,
        meta={**table.meta, "level": "specimen", "n_label_conflicts": conflicts},
    )


def _specimen_means(pred_probs: np.ndarray, order: np.ndarray, starts: np.ndarray, *, chunk_numbers: int
                    ) -> np.ndarray:
    """`(S, K)` float32 mean of the rows `order[starts[i]:starts[i + 1]]` of `pred_probs` per specimen i, summed in
    float64 a block of whole specimens (about `chunk_numbers` probabilities, at least one specimen) at a time."""
    n_specimens, k = len(starts), pred_probs.shape[1]
    bounds = np.r_[starts, len(order)]
    out = np.empty((n_specimens, k), dtype=np.float32)
    chunk_rows = max(1, chunk_numbers // max(k, 1))
    first = 0
    while first < n_specimens:
        last = int(np.searchsorted(bounds, bounds[first] + chunk_rows, side="right")) - 1
        last = min(max(last, first + 1), n_specimens)
        rows = order[bounds[first] : bounds[last]]
        sums = np.add.reduceat(pred_probs[rows].astype(np.float64), bounds[first:last] - bounds[first], axis=0)
        out[first:last] = sums / np.diff(bounds[first : last + 1])[:, None]
        first = last
    return out
