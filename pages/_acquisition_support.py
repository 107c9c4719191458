"""Cached wrappers of the Label next page: the active-learning simulation of the current checkpoint's stored
embeddings, computed in a background thread (progress polled by the page) and cached on disk
(`core.result_cache`), and the preview of a pool in an acquisition order when the workspace lists pools."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core.acquisition import ORDERS, pool_view, rank_pool
from core.active_learning import SimulationConfig, simulate, simulation_data, simulation_key
from core.errors import USER_ERRORS, user_message
from core.predictions import PredictionTable
from core.result_cache import cached_result, has_result
from pages._cached import PageContext, get_predictions, table_token
from pages._data_scan import embedding_token
from pages._evaluation import results_dir

PREVIEW_ROWS = 20  # pool images the preview lists


@dataclass
class SimulationJob:
    """One simulation running in a background thread; the page polls `done` and `progress`."""

    key: str
    progress: tuple[int, int] = (0, 1)  # probe fits done, total
    error: str | None = None
    result: pd.DataFrame | None = None  # the curves, also kept here when the workspace's cache cannot be written
    done: threading.Event = field(default_factory=threading.Event)


@st.cache_resource(show_spinner=False)
def _jobs() -> dict[str, SimulationJob]:
    return {}


def full_table(ctx: PageContext) -> PredictionTable | None:
    """Every split's stored predictions of the primary checkpoint (given labels, raw probabilities), or None."""
    return get_predictions(ctx.workspace, ctx.checkpoint) if ctx.checkpoint else None


def curve_key(ctx: PageContext, table: PredictionTable, config: SimulationConfig) -> str:
    """The disk key of `table`'s curves under `config` (content of labels, probabilities and embeddings)."""
    return simulation_key(embedding_token(table, table_token(table, "all", ctx.checkpoint or "")), config)


def stored_curve(key: str) -> pd.DataFrame | None:
    """The curves stored under `key` (on disk, else from a finished job of this server process), or None when they
    have not been computed."""
    folder = results_dir()
    if has_result(folder, key):
        return cached_result(folder, key, lambda: None)
    job = _jobs().get(key)
    return job.result if job is not None and job.done.is_set() else None


def running_job(key: str) -> SimulationJob | None:
    """The job computing `key` in this server process (running, or failed and not retried), or None."""
    job = _jobs().get(key)
    return job if job is not None and (not job.done.is_set() or job.error) else None


def start_simulation(key: str, table: PredictionTable, config: SimulationConfig) -> SimulationJob:
    """Start (once per server process and key) the simulation of `table` under `config`, stored under `key`."""
    jobs = _jobs()
    job = jobs.get(key)
    if job is not None and not job.done.is_set():
        return job
    job = SimulationJob(key, (0, config.steps))
    jobs[key] = job
    folder = results_dir()

    def work() -> None:
        try:
            data = simulation_data(table)

            def progress(done: int, total: int) -> None:
                job.progress = (done, total)

            job.result = cached_result(folder, key, lambda: simulate(data, config, progress=progress))
        except (*USER_ERRORS, RuntimeError, ArithmeticError) as exc:  # said on the page, not lost in a thread
            job.error = user_message(exc)
        finally:
            job.done.set()

    threading.Thread(target=work, name=f"active-learning-{key[-8:]}", daemon=True).start()
    return job


def forget_failed(key: str) -> None:
    """Drop a failed job so the next request tries again."""
    _jobs().pop(key, None)


# Pools ----------------------------------------------------------------------------------------------------------------

def pool_names(ctx: PageContext) -> list[str]:
    """The workspace's `[[pools]]` (none before pools exist in this build)."""
    return [spec.name for spec in getattr(ctx.workspace, "pools", ())]


def pool_preview(ctx: PageContext, table: PredictionTable, pool_name: str, order: str, *, seed: int = 0,
                 rows: int = PREVIEW_ROWS) -> tuple[pd.DataFrame | None, str]:
    """(the first `rows` images of pool `pool_name` in `order`, or None; a note). The pool's stored predictions of
    the primary checkpoint rank it; the labelled set is `table`'s training split."""
    from core.pools import load_pool
    from models.inference import cached_pool_predictions

    try:
        pool = load_pool(ctx.workspace, pool_name)
        predicted = cached_pool_predictions(ctx.workspace, ctx.checkpoint, pool, dataset=ctx.dataset)
    except USER_ERRORS as exc:
        return None, user_message(exc)
    if predicted is None:
        return None, (f"pool {pool_name!r} has images without predictions of {ctx.checkpoint}; predict it first "
                      f"(`python -m core predict --workspace {Path(ctx.workspace.root)} --checkpoint "
                      f"{ctx.checkpoint}`)")
    if tuple(predicted.class_names) != tuple(table.class_names):
        return None, "the pool's predictions come from other weights than the dataset's; predict both again"
    probs = np.asarray(predicted.pred_probs, dtype=np.float32)
    view = pool_view(probs, np.asarray(predicted.embeddings, dtype=np.float32), table)
    try:
        ranked = rank_pool(order, view, seed=seed, batch=max(rows, 1))[:rows]
    except USER_ERRORS as exc:
        return None, user_message(exc)
    best = probs[ranked].argmax(axis=1)
    frame = pd.DataFrame({"rank": np.arange(1, len(ranked) + 1),
                          "image": np.asarray(predicted.paths, dtype=object)[ranked],
                          "suggested": [table.class_names[i] for i in best],
                          "confidence": probs[ranked, best]})
    return frame, f"{len(probs):,} predicted images in pool {pool_name!r}; {ORDERS[order].help}"
