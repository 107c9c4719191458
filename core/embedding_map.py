"""The embedding map: 2-D projections of the stored penultimate embeddings (PCA at once, UMAP when installed), cached
on disk per predictions file and split, the colour modes, lasso/box selection and the per-class k-NN outlier score."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core.errors import TaxaLensError
from core.predictions import PredictionTable

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]
MAX_MAP_POINTS = 100_000  # points drawn with WebGL; larger splits are drawn from an even sample of this many
PCA_FIT_ROWS = 20_000  # rows the PCA axes are fitted on (an even random sample above it)
MAP_COLUMNS = ("row", "sample_id", "split", "label", "pred", "correct", "confidence", "specimen_id", "x", "y")


class EmbeddingMapError(TaxaLensError, ValueError):
    """The map cannot be drawn from these predictions (no embeddings, an unknown projection or colour)."""


@dataclass(frozen=True)
class Projection:
    """One way to lay the embeddings out in 2-D."""

    title: str  # shown in the page's picker
    compute: Callable[..., np.ndarray]  # (embeddings (N, D) float32, *, seed, progress) -> (N, 2) float32
    instant: bool  # fast enough to draw on every page load (PCA); otherwise cached on disk and run in the background
    available: Callable[[], bool]  # whether its package is installed


def _pca(embeddings: np.ndarray, *, seed: int = 0, progress: Progress | None = None) -> np.ndarray:
    """First two principal components, fitted on at most `PCA_FIT_ROWS` rows (the axes of a 2-D picture need no
    more), then applied to all."""
    from sklearn.decomposition import PCA

    x = _prepared(embeddings)
    if len(x) < 3:
        return np.zeros((len(x), 2), dtype=np.float32)
    solver = "covariance_eigh" if x.shape[1] <= 2048 else "randomized"  # D x D covariance: 0.6 s at 20,000 x 512
    fit = x if len(x) <= PCA_FIT_ROWS else x[np.random.default_rng(seed).choice(len(x), PCA_FIT_ROWS, replace=False)]
    pca = PCA(n_components=2, svd_solver=solver, random_state=seed).fit(fit)
    return pca.transform(x).astype(np.float32)


def _umap(embeddings: np.ndarray, *, seed: int = 0, progress: Progress | None = None) -> np.ndarray:
    """UMAP (`umap-learn`, cosine metric, 15 neighbours) after a 50-component PCA; `progress` hears each stage."""
    import umap

    x = _prepared(embeddings)
    if len(x) < 16:
        return _pca(embeddings, seed=seed)
    if x.shape[1] > 50:
        if progress:
            progress("reducing to 50 dimensions (PCA)")
        from sklearn.decomposition import PCA

        x = PCA(n_components=50, svd_solver="randomized", random_state=seed).fit_transform(x).astype(np.float32)
    if progress:
        progress(f"UMAP on {len(x):,} points: nearest neighbours, then layout")
    reducer = umap.UMAP(n_components=2, n_neighbors=15, metric="cosine", random_state=seed, low_memory=True,
                        n_jobs=1)
    coords = reducer.fit_transform(x)
    if progress:
        progress("done")
    return np.asarray(coords, dtype=np.float32)


NO_UMAP_ENV = "TAXALENS_NO_UMAP"  # set (to anything) to offer PCA only: test servers, hosts where numba misbehaves


def _umap_installed() -> bool:
    import importlib.util

    return not os.environ.get(NO_UMAP_ENV) and importlib.util.find_spec("umap") is not None


PROJECTIONS: dict[str, Projection] = {
    "umap": Projection("UMAP", _umap, instant=False, available=_umap_installed),
    "pca": Projection("PCA", _pca, instant=True, available=lambda: True),
}


def _prepared(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (cosine geometry, as the near-duplicate and outlier scores use)."""
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] == 0:
        raise EmbeddingMapError("these predictions hold no embeddings (the model gave no penultimate features); "
                                "recompute them with a timm checkpoint (`python -m core predict`)")
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def project_embeddings(embeddings: np.ndarray, *, method: str = "pca", seed: int = 0,
                       progress: Progress | None = None) -> np.ndarray:
    """2-D coordinates `(N, 2)` float32 of `embeddings` `(N, D)`; `method`: a key of `PROJECTIONS`."""
    if method not in PROJECTIONS:
        raise EmbeddingMapError(f"projection {method!r} is not one of {list(PROJECTIONS)}")
    projection = PROJECTIONS[method]
    if not projection.available():
        raise EmbeddingMapError(f"projection {method!r} needs its package: `pip install umap-learn`; PCA works "
                                "without it")
    return projection.compute(embeddings, seed=seed, progress=progress)


def map_sample(n: int, *, limit: int = MAX_MAP_POINTS, seed: int = 0) -> np.ndarray:
    """Row positions drawn on the map: all of them up to `limit`, else an even random sample (sorted)."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def projection_cache_path(cache_dir: str | Path, predictions_key: str, split: str, method: str, n_rows: int) -> Path:
    """Where the projection of one predictions file's `split` is kept (`.npy`, one per method)."""
    digest = hashlib.sha256(f"{predictions_key}|{split}|{n_rows}".encode()).hexdigest()[:20]
    return Path(cache_dir) / f"{method}-{digest}.npy"


def cached_projection(path: str | Path) -> np.ndarray | None:
    """The projection saved at `path`, or None."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable map cache %s: %s", path, exc)
        return None


def save_projection(coords: np.ndarray, path: str | Path) -> Path:
    """Write `coords` to `path` atomically (temp file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as handle:
            np.save(handle, np.asarray(coords, dtype=np.float32), allow_pickle=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def map_frame(table: PredictionTable, coords: np.ndarray, rows: np.ndarray | None = None) -> pd.DataFrame:
    """One row per drawn point: `MAP_COLUMNS` (`row` = position in `table`); `coords` `(len(rows), 2)`."""
    rows = np.arange(len(table)) if rows is None else np.asarray(rows)
    if len(coords) != len(rows):
        raise EmbeddingMapError(f"{len(coords)} coordinates for {len(rows)} rows; recompute the projection")
    frame = table.frame.iloc[rows]
    return pd.DataFrame({
        "row": rows,
        "sample_id": frame["sample_id"].to_numpy(),
        "split": frame["split"].to_numpy(),
        "label": frame["label"].to_numpy(),
        "pred": frame["pred"].to_numpy(),
        "correct": np.where(frame["label_idx"].to_numpy() < 0, "label unknown to the model",
                            np.where(frame["label"].to_numpy() == frame["pred"].to_numpy(), "correct", "wrong")),
        "confidence": frame["confidence"].to_numpy(),
        "specimen_id": frame["specimen_id"].to_numpy(),
        "x": coords[:, 0],
        "y": coords[:, 1],
    })


# Colour modes ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ColourMode:
    """What the points are coloured by."""

    title: str
    continuous: bool  # a colour scale (scores) rather than one colour per category


COLOUR_MODES: dict[str, ColourMode] = {
    "label": ColourMode("given label", continuous=False),
    "pred": ColourMode("prediction", continuous=False),
    "correct": ColourMode("correct / wrong", continuous=False),
    "split": ColourMode("split", continuous=False),
    "label_quality": ColourMode("label-issue score (low = suspicious)", continuous=True),
    "outlier": ColourMode("outlier score (high = unusual for its class)", continuous=True),
}
RANK_PREFIX = "rank:"  # colour "rank:<taxonomy rank>" = the group of the given label at that rank


def colour_values(frame: pd.DataFrame, colour: str, *, taxa: dict[str, str] | None = None,
                  scores: dict[str, float] | None = None) -> pd.Series:
    """The value each point is coloured by: a category (str) or a score (float, NaN = none).

    `colour`: a key of `COLOUR_MODES` or `"rank:<name>"` with `taxa` (class -> group at that rank); `scores`:
    sample_id -> score for the continuous modes (label quality, outlier score).
    """
    if colour.startswith(RANK_PREFIX):
        if taxa is None:
            raise EmbeddingMapError(f"colour {colour!r} needs the taxonomy's groups at that rank")
        return frame["label"].map(lambda c: taxa.get(c, "(not in taxonomy)")).astype(str)
    if colour not in COLOUR_MODES:
        raise EmbeddingMapError(f"colour {colour!r} is not one of {list(COLOUR_MODES)} or 'rank:<name>'")
    if COLOUR_MODES[colour].continuous:
        return frame["sample_id"].map(scores or {}).astype(float)
    return frame[colour].astype(str)


def build_map_figure(frame: pd.DataFrame, values: pd.Series, *, title: str = "", continuous: bool = False,
                     height: int = 640) -> go.Figure:
    """The map as WebGL scatter traces (`go.Scattergl`), one per category (or one with a colour scale).

    Each point's `customdata` is `[row]` (its position in the predictions table) so a selection maps back to rows.
    """
    hover = "%{text}<extra></extra>"
    text = ("<b>" + frame["sample_id"].astype(str) + "</b><br>given " + frame["label"].astype(str) + " → "
            + frame["pred"].astype(str) + " (" + (frame["confidence"] * 100).round(0).astype(int).astype(str)
            + "%)<br>split " + frame["split"].astype(str)).to_numpy(dtype=object)
    x, y = frame["x"].to_numpy(), frame["y"].to_numpy()
    rows = frame[["row"]].to_numpy()
    marker_size = 4 if len(frame) > 20_000 else 6
    traces = []
    if continuous:
        traces.append(go.Scattergl(
            x=x, y=y, mode="markers", customdata=rows, text=text, hovertemplate=hover, name=title,
            marker={"size": marker_size, "color": values.to_numpy(dtype=float), "colorscale": "Viridis",
                    "showscale": True, "colorbar": {"title": {"text": title}}},
        ))
    else:
        codes, categories = pd.factorize(values.to_numpy(dtype=object), sort=True)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(categories) + 1))
        for i, category in enumerate(categories):
            members = order[bounds[i]:bounds[i + 1]]
            traces.append(go.Scattergl(
                x=x[members], y=y[members], mode="markers", name=str(category), customdata=rows[members],
                text=text[members], hovertemplate=hover, marker={"size": marker_size, "opacity": 0.8},
            ))
    fig = go.Figure(data=traces)
    fig.update_layout(height=height, dragmode="lasso", hovermode="closest", margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      legend={"itemsizing": "constant"}, xaxis={"showticklabels": False, "title": None},
                      yaxis={"showticklabels": False, "title": None}, title={"text": title})
    return fig


# Selection ------------------------------------------------------------------------------------------------------------

def points_in_polygon(coords: np.ndarray, polygon: Sequence[tuple[float, float]]) -> np.ndarray:
    """Boolean mask of the `coords` `(N, 2)` inside `polygon` (a lasso path of (x, y) vertices; even-odd rule)."""
    poly = np.asarray(polygon, dtype=np.float64)
    x, y = coords[:, 0].astype(np.float64), coords[:, 1].astype(np.float64)
    inside = np.zeros(len(coords), dtype=bool)
    if len(poly) < 3:
        return inside
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for ax, ay, bx, by in zip(x0, y0, x1, y1, strict=True):
        crosses = (ay > y) != (by > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = ax + (y - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (x < at)
    return inside


def points_in_box(coords: np.ndarray, x_range: tuple[float, float], y_range: tuple[float, float]) -> np.ndarray:
    """Boolean mask of the `coords` `(N, 2)` inside the box."""
    (xa, xb), (ya, yb) = sorted(x_range), sorted(y_range)
    return (coords[:, 0] >= xa) & (coords[:, 0] <= xb) & (coords[:, 1] >= ya) & (coords[:, 1] <= yb)


def selected_rows(table: PredictionTable, rows: Sequence[int]) -> pd.DataFrame:
    """The gallery rows (`table.frame` columns) of the selected positions, in table order, duplicates dropped."""
    positions = np.unique(np.asarray(list(rows), dtype=np.int64))
    positions = positions[(positions >= 0) & (positions < len(table))]
    return table.frame.iloc[positions].reset_index(drop=True)


# Outliers -------------------------------------------------------------------------------------------------------------

def knn_outlier_scores(table: PredictionTable, *, k: int = 10, chunk: int = 2048) -> pd.DataFrame:
    """Per image: the mean cosine distance to its `k` nearest images of the same given label (never its own
    specimen), and that score's percentile within the class (1.0 = the class's most isolated image).

    Returns `sample_id, label, split, outlier_score, class_percentile, n_class`; NaN where the class has fewer than
    two other specimens' images. Higher = more unusual for its class: a mislabel, an odd view, a bad image.
    """
    x = _prepared(table.embeddings)
    frame = table.frame
    labels = frame["label"].to_numpy()
    specimens = frame["specimen_id"].to_numpy()
    score = np.full(len(table), np.nan)
    for label in pd.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 3:
            continue
        kk = min(k, len(members) - 1)
        ref = x[members]
        for start in range(0, len(members), chunk):
            part = members[start:start + chunk]
            sims = x[part] @ ref.T
            sims[specimens[part, None] == specimens[None, members]] = -np.inf  # itself and its specimen
            top = -np.partition(-sims, kk - 1, axis=1)[:, :kk]
            top = np.where(np.isfinite(top), top, np.nan)
            with np.errstate(all="ignore"):
                score[part] = 1.0 - np.nanmean(top, axis=1) if top.size else np.nan
    out = pd.DataFrame({"sample_id": frame["sample_id"].to_numpy(), "label": labels,
                        "split": frame["split"].to_numpy(), "outlier_score": score})
    out["class_percentile"] = out.groupby("label")["outlier_score"].rank(pct=True)
    out["n_class"] = out.groupby("label")["sample_id"].transform("size")
    return out
