"""The server's one background warm-up: once the first page of a process has rendered, a daemon thread imports what
the evaluation pages load on their first visit and the landing page does not, so the first of them a user opens
does not pay it. At 100,000 x 300 (results on disk, 2 shared cores) the warm-up takes about 1 s of CPU while the
landing page is read, and the Overview's first visit in a fresh server falls from 1.7-2.2 s of CPU to 0.6-0.8 s
(benchmarks/bench_pages.py --keep-results; --click-at-once for a page opened before the warm-up has ended).

The thread only imports modules (and warms plotly's validators, which load on a first figure): results and caches
are filled by the pages as before, so nothing a page shows changes. A page that needs a module while the thread is
importing it waits for that import (Python's per-module import lock) instead of importing it twice. A step that fails
is logged and skipped; nothing raises into a page.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


def _import(name: str) -> Callable[[], object]:
    return lambda: importlib.import_module(name)


def _plotly_validators() -> object:
    """A throwaway bar chart: plotly builds its validators on a first figure (about 0.05 s), not on import."""
    import plotly.graph_objects as go

    return go.Figure(go.Bar(x=["a"], y=[1], marker=dict(color=[0.0], colorscale="Viridis", colorbar=dict(title="x"))),
                     layout=dict(barmode="group", xaxis=dict(title="x"), yaxis=dict(title="y", type="log")))


# What pages/_evaluation.py imports (and the core modules under them: metrics, scores, result cache, curation with the
# label store's SQLAlchemy, leakage, figures, ...), but not that module itself: it waits for these when a page imports
# it during the warm-up (`await_page_modules`), so no step may import it or a module that does
# (tests/pages/test_warmup.py checks both).
EVALUATION_MODULES = (
    "sqlalchemy", "core.confusion", "core.figures", "core.leakage", "core.metrics", "core.queries", "core.specimens",
    "core.curation", "core.labelstore", "core.predictions", "core.result_cache", "core.scores",
    "pages._cached", "pages._review_support",
)
# Opening the label store (the Overview asks it whether reviews exist; the review pages, curated labels): SQLAlchemy's
# SQLite dialect and, for the schema check, Alembic (with mako and pygments): 0.4-0.6 s at first. Last, and not
# waited for by pages/_evaluation.py: the other evaluation pages never open the store, and a page that does waits
# on the import lock of what is still being imported.
LABEL_STORE_MODULES = ("sqlalchemy.dialects.sqlite", "alembic.command", "alembic.runtime.migration")

# Each step: a name (logged, reported) and what it runs; a new one is one entry. PAGE_STEPS are what
# pages/_evaluation.py waits for, LATER_STEPS run after them.
PAGE_STEPS: tuple[tuple[str, Callable[[], object]], ...] = (
    *((name, _import(name)) for name in EVALUATION_MODULES),
    ("plotly validators", _plotly_validators),
)
LATER_STEPS: tuple[tuple[str, Callable[[], object]], ...] = tuple((name, _import(name)) for name in LABEL_STORE_MODULES)
PAGE_WAIT_S = 30.0  # at most this long a page's first import of pages._evaluation waits for a running warm-up
SWITCH_ENV = "TAXALENS_IMPORT_WARMUP"  # "0" turns the warm-up off (a test of what a page imports by itself)


@dataclass(frozen=True)
class WarmupReport:
    """What one warm-up did."""

    done: tuple[str, ...]  # steps that ran to the end, in order
    failed: tuple[tuple[str, str], ...]  # (step, "ErrorType: message") of those that raised
    wall_s: float  # seconds from the first step's start to the last one's end
    cpu_s: float  # CPU seconds of the thread that ran it
    thread: str  # name of that thread


def run_warmup(steps: tuple[tuple[str, Callable[[], object]], ...]) -> WarmupReport:
    """Run `steps` in order on the calling thread; a step that raises is logged and recorded, and the next runs."""
    wall, cpu = time.perf_counter(), time.thread_time()
    done: list[str] = []
    failed: list[tuple[str, str]] = []
    for name, step in steps:
        try:
            step()
        except Exception as exc:  # any error: a warm-up must never fail the server (the page imports it again)
            logger.warning("warm-up step %s failed (the page that needs it will import it itself): %s: %s", name,
                           type(exc).__name__, exc)
            failed.append((name, f"{type(exc).__name__}: {exc}"))
        else:
            done.append(name)
    report = WarmupReport(done=tuple(done), failed=tuple(failed), wall_s=time.perf_counter() - wall,
                          cpu_s=time.thread_time() - cpu, thread=threading.current_thread().name)
    logger.debug("warm-up: %d steps in %.2f s (%.2f s CPU), %d failed", len(done), report.wall_s, report.cpu_s,
                 len(failed))
    return report


class _Warmup:
    """The process's one warm-up thread and its report."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.page_steps_done = threading.Event()
        self.report: WarmupReport | None = None

    def run(self) -> None:
        try:  # the step tuples are read when the thread runs (a test may put a step in)
            first = run_warmup(PAGE_STEPS)
        finally:
            self.page_steps_done.set()
        later = run_warmup(LATER_STEPS)
        self.report = WarmupReport(done=first.done + later.done, failed=first.failed + later.failed,
                                   wall_s=first.wall_s + later.wall_s, cpu_s=first.cpu_s + later.cpu_s,
                                   thread=first.thread)


_WARMUP = _Warmup()


def start_import_warmup() -> threading.Thread | None:
    """Start the warm-up thread unless this process has one already (it runs once per server); returns it at once
    (None when `TAXALENS_IMPORT_WARMUP=0` turns it off).

    Call it after a page's script has rendered (the end of app.py): it must not compete with that run."""
    if os.environ.get(SWITCH_ENV, "").strip() == "0":
        return None
    with _WARMUP.lock:
        if _WARMUP.thread is None:
            _WARMUP.thread = threading.Thread(target=_WARMUP.run, name="taxalens-import-warmup", daemon=True)
            _WARMUP.thread.start()
        return _WARMUP.thread


def import_warmup_pending() -> bool:
    """Whether the warm-up thread is still running (False before it starts and after it ends)."""
    thread = _WARMUP.thread
    return thread is not None and thread.is_alive()


def await_import_warmup(timeout: float | None = None) -> WarmupReport | None:
    """Wait up to `timeout` seconds (None: until it ends) for the whole warm-up; its report, or None when it has not
    started or is still running. On the warm-up's own thread it returns at once."""
    thread = _WARMUP.thread
    if thread is None or thread is threading.current_thread():
        return None
    thread.join(timeout)
    return None if thread.is_alive() else _WARMUP.report


def await_page_modules(timeout: float | None = None) -> bool:
    """Wait up to `timeout` seconds for the warm-up's `PAGE_STEPS` (the modules pages/_evaluation.py imports); True
    when they are done or no warm-up runs, False on a timeout. On the warm-up's own thread it returns at once.

    A page that needs those modules waits for them rather than racing the warm-up: two threads importing at once
    take about as long as both imports one after the other (they share one interpreter lock), and the page would
    wait on the warm-up's module locks anyway. Call it only where no step can need a module the caller is importing
    (pages/_evaluation.py, which no step imports), or it waits out `timeout`."""
    thread = _WARMUP.thread
    if thread is None or thread is threading.current_thread():
        return True
    return _WARMUP.page_steps_done.wait(timeout)
