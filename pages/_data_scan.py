"""Cached wrappers of the Map and Data quality pages (and the Overview's leak check): map projections (UMAP in a
background thread, cached on disk), the near-duplicate / leak scan, image-quality statistics and outlier scores."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core import embedding_map as em
from core import leakage, quality
from core.errors import USER_ERRORS, user_message
from core.predictions import PredictionTable
from core.result_cache import embedding_token, hash_file, leak_report_result, read_hashes
from pages._cached import PageContext, dataset_key, get_predictions, predictions_key, table_token
from pages._evaluation import results_dir
from pages._gallery import sample_paths


def map_cache_dir(ctx: PageContext) -> Path:
    return Path(ctx.workspace.root) / ".taxalens" / "maps"


@st.cache_resource(show_spinner="Projecting the embeddings (PCA)…", max_entries=16)
def pca_coords(token: str, _table: PredictionTable) -> tuple[np.ndarray, np.ndarray]:
    """(drawn rows, PCA coordinates) of the table's points (an even sample above `MAX_MAP_POINTS`)."""
    rows = em.map_sample(len(_table))
    return rows, em.project_embeddings(_table.embeddings[rows], method="pca")


@dataclass
class UmapJob:
    """A UMAP projection computing in a background thread; the page polls it."""

    path: Path
    stage: str = "starting"
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)


@st.cache_resource(show_spinner=False)
def _jobs() -> dict[str, UmapJob]:
    return {}


def umap_job(path: Path, embeddings: np.ndarray) -> UmapJob:
    """The UMAP job writing `path`, started (once per server process) if none runs for it."""
    jobs = _jobs()
    job = jobs.get(str(path))
    if job is not None and (not job.done.is_set() or job.error):  # running, or failed (said once, not retried)
        return job
    job = UmapJob(path)
    jobs[str(path)] = job

    def work() -> None:
        try:
            coords = em.project_embeddings(embeddings, method="umap", progress=lambda s: setattr(job, "stage", s))
            em.save_projection(coords, path)
        except (*USER_ERRORS, ImportError, RuntimeError) as exc:
            job.error = user_message(exc)
        finally:
            job.done.set()

    threading.Thread(target=work, name=f"umap-{path.name}", daemon=True).start()
    return job


def map_coords(ctx: PageContext, table: PredictionTable, token: str, method: str
               ) -> tuple[np.ndarray, np.ndarray, UmapJob | None]:
    """(rows, coords, running UMAP job or None) for `method`: UMAP from its disk cache when there, else PCA now
    (and the UMAP job started)."""
    rows, pca = pca_coords(embedding_token(table, token), table)
    if method != "umap":
        return rows, pca, None
    path = em.projection_cache_path(map_cache_dir(ctx), predictions_key(ctx.workspace, ctx.checkpoint or ""),
                                    ctx.split, "umap", len(rows))
    cached = em.cached_projection(path)
    if cached is not None and len(cached) == len(rows):
        return rows, cached, None
    return rows, pca, umap_job(path, np.ascontiguousarray(table.embeddings[rows]))


@st.cache_resource(show_spinner="Scoring outliers (k-NN per class)…", max_entries=8)
def _outlier_scores(token: str, _table: PredictionTable) -> pd.DataFrame:
    return em.knn_outlier_scores(_table)


def outlier_scores(token: str, table: PredictionTable) -> pd.DataFrame:
    """Per-class k-NN outlier scores of `table` (`token`: its `table_token`)."""
    return _outlier_scores(embedding_token(table, token), table)


@st.cache_resource(show_spinner="Hashing the images…", max_entries=4)
def _hashes(file: str, _paths: tuple) -> tuple[np.ndarray, np.ndarray]:
    path = Path(file)
    saved = read_hashes(path)
    if saved is not None:
        return saved
    hashes, readable = leakage.image_hashes(list(_paths))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, hashes=hashes, readable=readable)
    return hashes, readable


@st.cache_resource(show_spinner="Measuring image quality…", max_entries=4)
def _stats(key: str, _ids: tuple, _paths: tuple) -> pd.DataFrame:
    return quality.measure_images(list(_ids), list(_paths))


def full_table(ctx: PageContext) -> tuple[PredictionTable, str] | None:
    """Every split's predictions of the primary checkpoint and their token, or None."""
    if ctx.checkpoint is None:
        return None
    table = get_predictions(ctx.workspace, ctx.checkpoint)
    return None if table is None else (table, table_token(table, "all", ctx.checkpoint))


@st.cache_resource(show_spinner="Looking for near-duplicates and split leaks…", max_entries=16)
def _scan(token: str, min_similarity: float, max_hash_distance: int, _table: PredictionTable,
          _hashes: tuple[np.ndarray, np.ndarray]) -> leakage.LeakReport:
    # Pairs, groups and leaks are kept on disk beside the interval results (core.result_cache.leak_report_result,
    # also warmed by `predict --workspace`), so a server restart reads them.
    settings = leakage.DuplicateSettings(min_similarity=min_similarity, max_hash_distance=max_hash_distance)
    return leak_report_result(results_dir(), token, _table, _hashes[0], _hashes[1], settings)


def leak_report(ctx: PageContext, settings: leakage.DuplicateSettings = leakage.DuplicateSettings(), *,
                hash_images: bool = True) -> leakage.LeakReport | None:
    """The scan over every split of the primary checkpoint's predictions (None without predictions). The image
    hashes are kept on disk per predictions table; with `hash_images` False they are used only when already there
    (the Overview: never a first-time hash of every image on a page that only reports)."""
    found = full_table(ctx)
    if found is None:
        return None
    table, token = found
    file = hash_file(ctx.workspace.cache_dir, token)
    token = embedding_token(table, token)
    if hash_images or file.is_file():
        hashes = _hashes(str(file), tuple(sample_paths(ctx, table.frame["sample_id"].tolist())))
    else:
        hashes = (None, None)
    return _scan(token, settings.min_similarity, settings.max_hash_distance, table, hashes)


def quality_flags(ctx: PageContext, thresholds: quality.QualityThresholds = quality.QualityThresholds()
                  ) -> pd.DataFrame:
    """Per image of the dataset: statistics, one flag per check and `issues`, plus label and split."""
    samples = ctx.dataset.samples
    key = f"{ctx.workspace.root}|{dataset_key(ctx.dataset)}|{len(samples)}"
    stats = _stats(key, tuple(samples["sample_id"]), tuple(samples["path"].astype(str)))
    flagged = quality.flag_quality_issues(stats, thresholds=thresholds)
    return flagged.merge(samples[["sample_id", "label", "split"]], on="sample_id", how="left")


def gallery_rows(table: PredictionTable, sample_ids: list[str]) -> pd.DataFrame:
    """The predictions rows of `sample_ids` (for `render_gallery`), in the given order."""
    frame = table.frame.set_index("sample_id", drop=False)
    return frame.loc[[s for s in sample_ids if s in frame.index]].reset_index(drop=True)
