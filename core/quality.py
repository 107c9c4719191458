"""Image-quality checks: blurry, too dark, too bright, low information, extreme aspect ratio or size, exact duplicates.

Written with PIL and numpy rather than `cleanvision`: that package pulls matplotlib, tabulate and fsspec into the
server for a handful of statistics, and scores each issue relative to the whole dataset, so a dataset that is mostly
blurry flags nothing. Here exposure, information, shape and duplicates have fixed, documented thresholds
(`QualityThresholds`) that read the same on every dataset; only sharpness and pixel count, which depend on the
camera and the crop size, are judged against the dataset's median.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.images import ImageError, load_image_rgb

logger = logging.getLogger(__name__)

ANALYSIS_PX = 256  # images are measured on a copy whose longer side is at most this many pixels
STAT_COLUMNS = ("sample_id", "width", "height", "brightness", "dark_share", "bright_share", "sharpness", "entropy",
                "aspect", "pixel_sha256", "readable")


@dataclass(frozen=True)
class QualityThresholds:
    """When an image is flagged (see `QUALITY_CHECKS`)."""

    blur_ratio: float = 0.42  # sharpness below this share of the dataset's median sharpness: blurry
    max_dark_share: float = 0.9  # share of pixels darker than 0.2 above which it is too dark
    max_bright_share: float = 0.9  # share of pixels brighter than 0.95 above which it is too bright
    min_entropy: float = 3.0  # bits of the grey histogram below which it holds little information
    max_aspect: float = 3.0  # longer side / shorter side above which the shape is extreme
    min_side_px: int = 24  # shorter side below which the image is too small
    size_ratio: float = 10.0  # pixel count more than this many times off the dataset median: odd size


@dataclass(frozen=True)
class QualityCheck:
    """One check: its title and a test over the statistics frame."""

    title: str
    explain: str  # one line saying what the flag means
    flags: Callable[[pd.DataFrame, QualityThresholds], pd.Series]  # stats frame -> bool per row


def _duplicates(stats: pd.DataFrame, thresholds: QualityThresholds) -> pd.Series:
    return stats["readable"] & stats.duplicated("pixel_sha256", keep=False)


def _blurry(stats: pd.DataFrame, thresholds: QualityThresholds) -> pd.Series:
    median = float(stats.loc[stats["readable"], "sharpness"].median()) if stats["readable"].any() else 0.0
    return stats["readable"] & (stats["sharpness"] < median * thresholds.blur_ratio)


def _odd_size(stats: pd.DataFrame, thresholds: QualityThresholds) -> pd.Series:
    pixels = stats["width"] * stats["height"]
    median = float(pixels[stats["readable"]].median()) if stats["readable"].any() else 0.0
    if median <= 0:
        return pd.Series(False, index=stats.index)
    small = stats[["width", "height"]].min(axis=1) < thresholds.min_side_px
    return stats["readable"] & (small | (pixels > median * thresholds.size_ratio)
                                | (pixels < median / thresholds.size_ratio))


QUALITY_CHECKS: dict[str, QualityCheck] = {
    "blurry": QualityCheck("Blurry", "far less fine detail than the dataset's typical image (variance of the "
                           "Laplacian over the grey variance)", _blurry),
    "dark": QualityCheck("Too dark", "most pixels near black",
                         lambda s, t: s["readable"] & (s["dark_share"] > t.max_dark_share)),
    "bright": QualityCheck("Too bright", "most pixels near white (over-exposed)",
                           lambda s, t: s["readable"] & (s["bright_share"] > t.max_bright_share)),
    "low_information": QualityCheck("Low information", "few distinct grey levels (blank, flat or nearly so)",
                                    lambda s, t: s["readable"] & (s["entropy"] < t.min_entropy)),
    "extreme_aspect": QualityCheck("Extreme aspect ratio", "a long thin image (a cut-off or mis-cropped specimen)",
                                   lambda s, t: s["readable"] & (s["aspect"] > t.max_aspect)),
    "odd_size": QualityCheck("Odd size", "tiny, or far larger or smaller than the dataset's typical image",
                             _odd_size),
    "exact_duplicate": QualityCheck("Exact duplicate", "the same pixels as another image of the dataset (a copy, "
                                    "or the same image saved in another format)",
                                    _duplicates),
    "unreadable": QualityCheck("Unreadable", "the file cannot be decoded as an image",
                               lambda s, t: ~s["readable"]),
}


def image_statistics(image) -> dict[str, float]:
    """The measures the checks read, of one RGB PIL image: size, mean brightness, dark/bright pixel shares,
    sharpness (variance of the Laplacian of the grey image over the grey variance, so contrast does not count,
    measured at `ANALYSIS_PX`), grey-histogram entropy (bits), aspect ratio and a hash of the decoded pixels."""
    width, height = image.size
    small = image.copy()
    small.thumbnail((ANALYSIS_PX, ANALYSIS_PX))
    grey = np.asarray(small.convert("L"), dtype=np.float32) / 255.0
    if grey.shape[0] >= 3 and grey.shape[1] >= 3:
        lap = (grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4 * grey[1:-1, 1:-1])
        sharpness = float(lap.var() / (grey.var() + 1e-4))
    else:
        sharpness = 0.0
    counts = np.bincount((grey * 255).astype(np.uint8).ravel(), minlength=256).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return {
        "width": width, "height": height, "brightness": float(grey.mean()),
        "dark_share": float((grey < 0.2).mean()), "bright_share": float((grey > 0.95).mean()),
        "sharpness": sharpness, "entropy": float(-(p * np.log2(p)).sum()),
        "aspect": max(width, height) / max(min(width, height), 1),
        "pixel_sha256": hashlib.sha256(f"{width}x{height}".encode() + image.tobytes()).hexdigest(),
    }


def measure_images(sample_ids: Sequence[str], paths: Sequence[str | None], *,
                   progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """`STAT_COLUMNS` for each image (`readable` False, measures NaN, where it cannot be decoded)."""
    rows = []
    for i, (sample_id, path) in enumerate(zip(sample_ids, paths, strict=True)):
        if progress and i % 200 == 0:
            progress(i, len(paths))
        row: dict = {"sample_id": sample_id, "readable": False, "pixel_sha256": ""}
        try:
            if not path:
                raise FileNotFoundError(sample_id)
            row.update(image_statistics(load_image_rgb(path)))
            row["readable"] = True
        except (ImageError, OSError) as exc:
            logger.info("cannot measure %s: %s", path, exc)
        rows.append(row)
    return pd.DataFrame(rows, columns=list(STAT_COLUMNS))


def flag_quality_issues(stats: pd.DataFrame, *, thresholds: QualityThresholds = QualityThresholds()) -> pd.DataFrame:
    """`stats` with one boolean column per key of `QUALITY_CHECKS` and `issues` (the flagged check names, joined
    by ", "; empty when none)."""
    out = stats.copy()
    for name, check in QUALITY_CHECKS.items():
        out[name] = check.flags(stats, thresholds).fillna(False).astype(bool).to_numpy()
    names = list(QUALITY_CHECKS)
    flags = out[names].to_numpy()
    out["issues"] = [", ".join(n for n, f in zip(names, row, strict=True) if f) for row in flags]
    return out


def quality_summary(flagged: pd.DataFrame) -> pd.DataFrame:
    """Counts per check: `check, title, explain, images` (every check listed, zeros included)."""
    return pd.DataFrame([(name, check.title, check.explain, int(flagged[name].sum()))
                         for name, check in QUALITY_CHECKS.items()], columns=["check", "title", "explain", "images"])
