"""Cached Grad-CAM for the pages: one entry per (checkpoint, sample, method, class, layer), filled a page at a time."""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import streamlit as st

from core.errors import USER_ERRORS
from core.images import ImageError, load_image_rgb
from pages._cached import PageContext, file_mtime_ns, single_checkpoint_message
from pages._text import md

logger = logging.getLogger(__name__)

PREFETCH_NICE = 10  # the prefetch thread's niceness above the server's (Linux)
CAM_IMPORT_THREAD = "taxalens-cam-import"  # the thread of the server's first import of models.cam
MAX_ENTRIES = 4096  # cached maps (a 64 px map and view take ~16 kB; a 224 px pair ~200 kB)


@dataclass(frozen=True)
class CamMaps:
    """What the page draws for one (sample, class): the model's view of the image and the map over it."""

    view: np.ndarray  # (H, W, 3) uint8: the preprocessed image, de-normalised
    cam: np.ndarray  # (H, W) uint8: the map scaled to 0..255
    class_index: int  # the class explained
    pred_probs: np.ndarray  # (K,) float32: the model's probabilities for the image
    layer: str  # module explained
    grid: tuple[int, int]  # height, width of that module's map
    note: str = ""  # why the automatic layer's map is coarse (the model has no finer one), else ""


@st.cache_data(show_spinner=False, max_entries=MAX_ENTRIES)
def _cam_entry(checkpoint_sha: str, sample_id: str, path: str, mtime_ns: int, method: str, class_index: int,
               layer: str, _compute: Callable[[], CamMaps | str]) -> CamMaps | str:
    # The key is everything after `_compute`'s position; `_compute` (unhashed) fills a whole page on the first miss.
    return _compute()


CamKey = tuple[str, str, str, int, str, int, str]  # _cam_entry's key: sha, sample, path, mtime, method, class, layer


class CamPrefetcher:
    """Maps computed ahead of need on one background thread, so a page's rerun finds them ready.

    `submit` queues a batch (the thread computes it under `models.cam`'s lock, like any other map); `take` hands a
    queued or finished entry to the page, which waits for it only when it is still being computed. The last
    `capacity` keys are remembered (oldest dropped), so a sample seen again is not queued again; a failed batch is
    computed again by the page.
    """

    def __init__(self, capacity: int = 256) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[CamKey, tuple[Future, int]] = OrderedDict()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="taxalens-cam-prefetch",
                                        initializer=_lower_thread_priority)

    def submit(self, keys: Sequence[CamKey], compute: Callable[[], list[CamMaps | str]]) -> bool:
        """Queue `compute` (one result per key, in order) unless every key is known already; True when queued."""
        with self._lock:
            if all(key in self._entries for key in keys):
                return False
            future = self._pool.submit(compute)
            for position, key in enumerate(keys):
                self._entries[key] = (future, position)
                self._entries.move_to_end(key)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
            return True

    def take(self, key: CamKey) -> CamMaps | str | None:
        """The entry for `key` (waiting while its batch runs), or None when it was never queued or its batch
        failed (the caller computes it then; a failed key is forgotten, so a later `submit` queues it again)."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
        if found is None:
            return None
        future, position = found
        try:
            return future.result()[position]
        except Exception:  # noqa: BLE001 - a failed prefetch is recomputed in the page, which shows the error
            logger.debug("Grad-CAM prefetch failed for %s", key, exc_info=True)
            with self._lock:
                self._entries.pop(key, None)
            return None

    def known(self, keys: Sequence[CamKey]) -> bool:
        """Whether every key is queued, running or computed."""
        with self._lock:
            return all(key in self._entries for key in keys)

    def ready(self, keys: Sequence[CamKey]) -> bool:
        """Whether every key's batch has finished (or failed): `take` returns at once."""
        with self._lock:
            return all(key in self._entries and self._entries[key][0].done() for key in keys)

    def pending(self) -> int:
        """Batches queued or running (for tests and benchmarks)."""
        with self._lock:
            return len({id(future) for future, _ in self._entries.values() if not future.done()})


def _lower_thread_priority() -> None:
    """On Linux, nice this thread alone (a thread id is a process id to setpriority): on a busy CPU a prefetch yields
    to the page's own script and event loop, so the next key press is not slowed by maps nobody waits for yet."""
    if sys.platform.startswith("linux"):
        thread_id = threading.get_native_id()
        with contextlib.suppress(OSError):  # not permitted here: the thread runs at the server's priority
            os.setpriority(os.PRIO_PROCESS, thread_id, os.getpriority(os.PRIO_PROCESS, thread_id) + PREFETCH_NICE)


@st.cache_resource(show_spinner=False)
def cam_prefetcher() -> CamPrefetcher:
    """The server process's prefetcher (one background thread for every session)."""
    return CamPrefetcher()


def compute_cam_maps(model, card, paths: Sequence[str | None], class_indices: Sequence[int], *, method: str,
                     layer: str | None = None) -> list[CamMaps | str]:
    """Maps for each (image path, class) pair in one batch; an entry is a message where the image cannot be read.
    Plain Python (no Streamlit): the prefetch thread runs it. Raises `CamError` for a bad layer or method."""
    from models.cam import explain_images

    out: list[CamMaps | str | None] = [None] * len(paths)
    images, rows = [], []
    for j, path in enumerate(paths):
        try:
            image = load_image_rgb(path) if path else None
        except ImageError as exc:
            out[j] = f"image unavailable ({exc.reason})"
            continue
        if image is None:
            out[j] = "image not in the dataset"
            continue
        images.append(image)
        rows.append(j)
    if rows:
        explanation = explain_images(model, card, images, [int(class_indices[j]) for j in rows], method=method,
                                     layer=layer or None)
        result = explanation.result
        for i, j in enumerate(rows):
            out[j] = CamMaps(view=explanation.views[i], cam=np.round(result.cams[i] * 255).astype(np.uint8),
                             class_index=int(result.class_indices[i]), pred_probs=result.pred_probs[i],
                             layer=result.layer, grid=result.grid, note=result.note)
    return out


def _cam_keys(sha: str, sample_ids: Sequence[str], paths: Sequence[str | None], class_indices: Sequence[int],
              method: str, layer: str | None) -> list[CamKey]:
    return [(sha, str(sample_id), str(path or ""), file_mtime_ns(path), method, int(class_index), layer or "")
            for sample_id, path, class_index in zip(sample_ids, paths, class_indices, strict=True)]


def _checkpoint_sha(ctx: PageContext, name: str) -> str:
    from models.cam import CamError
    from models.checkpoints import file_sha256

    spec = ctx.ensemble(name)
    if spec is not None:
        raise CamError(single_checkpoint_message(spec))
    return file_sha256(ctx.workspace.checkpoint(name).path)  # memoised on (path, size, mtime)


def cam_maps(
    ctx: PageContext,
    sample_ids: Sequence[str],
    paths: Sequence[str | None],
    class_indices: Sequence[int],
    *,
    method: str,
    layer: str | None = None,
    checkpoint: str | None = None,
) -> list[CamMaps | str]:
    """Maps for each (sample, class) pair, from the cache, from `prefetch_cam_maps`'s thread (waiting for it while
    it computes them) or computed in one batch for all pairs still missing.

    An entry is a `CamMaps`, or a short message when the image cannot be read. Raises `CamError` (bad layer,
    unknown method) for the caller to show.
    """
    name = checkpoint or ctx.checkpoint
    sha = _checkpoint_sha(ctx, name)
    keys = _cam_keys(sha, sample_ids, paths, class_indices, method, layer)
    prefetcher = cam_prefetcher()
    filled: dict[int, CamMaps | str] = {}

    def fill_from(position: int) -> None:
        # First miss at `position`: items before it are resolved already; compute it and every later one at once.
        todo = [j for j in range(position, len(sample_ids)) if j not in filled]
        model, card = ctx.model(name)
        for j, entry in zip(todo, compute_cam_maps(model, card, [paths[j] for j in todo],
                                                   [class_indices[j] for j in todo], method=method, layer=layer),
                            strict=True):
            filled[j] = entry

    def compute(position: int) -> CamMaps | str:
        if position not in filled:
            prefetched = prefetcher.take(keys[position])
            if prefetched is not None:
                return prefetched
            fill_from(position)
        return filled[position]

    return [_cam_entry(*key, functools.partial(compute, position)) for position, key in enumerate(keys)]


def prefetch_cam_maps(
    ctx: PageContext,
    sample_ids: Sequence[str],
    paths: Sequence[str | None],
    class_indices: Sequence[int],
    *,
    method: str,
    layer: str | None = None,
    checkpoint: str | None = None,
) -> bool:
    """Start computing the maps a later `cam_maps` call with the same arguments will ask for, on the background
    thread, and return at once (True when a batch was queued). Maps the page cache holds already are recomputed
    only once: a key is queued at most once until `cam_maps` takes it. Does nothing for an ensemble."""
    from models.cam import CamError

    name = checkpoint or ctx.checkpoint
    try:
        sha = _checkpoint_sha(ctx, name)
        model, card = ctx.model(name)
    except (CamError, *USER_ERRORS):
        return False
    keys = _cam_keys(sha, sample_ids, paths, class_indices, method, layer)
    paths, class_indices = list(paths), [int(c) for c in class_indices]
    return cam_prefetcher().submit(keys, functools.partial(compute_cam_maps, model, card, paths, class_indices,
                                                           method=method, layer=layer))


@st.cache_data(show_spinner=False, max_entries=64)
def auto_layer(checkpoint_sha: str, _model: object, input_size: tuple[int, int, int]) -> tuple[str, str]:
    """(layer name, "") the automatic rule picks for the checkpoint, or ("", the reason) when none can be picked."""
    from models.cam import CamError, find_cam_layer

    try:
        return find_cam_layer(_model, input_size=tuple(input_size)).name, ""
    except CamError as exc:
        return "", str(exc)


@dataclass(frozen=True)
class GalleryCam:
    """The gallery's overlay settings."""

    method: str  # CAM_METHODS key
    target: str  # "pred" or "true"
    opacity: float  # heat-map opacity


def gallery_cam_controls(key: str) -> GalleryCam | None:
    """The gallery's "Grad-CAM overlay" toggle and, when on, its method/class/opacity pickers."""
    if not st.toggle("Grad-CAM overlay", key=f"{key}-cam",
                     help="Overlay every thumbnail of the page with a class-activation map (one batch per page, "
                     "cached per checkpoint, sample, method and class)"):
        return None
    from models.cam import CAM_METHODS  # imports torch (seconds): only once the overlay is on

    fast = [name for name, method in CAM_METHODS.items() if not method.slow]  # ScoreCAM: minutes per page
    row = st.columns(3)
    method = row[0].selectbox("CAM method", fast, key=f"{key}-cam-method", format_func=lambda m: CAM_METHODS[m].label)
    target = row[1].radio("Explain", ["pred", "true"], key=f"{key}-cam-target", horizontal=True,
                          format_func={"pred": "predicted class", "true": "true class"}.get)
    opacity = row[2].slider("Overlay opacity", 0.0, 1.0, 0.5, step=0.05, key=f"{key}-cam-opacity")
    return GalleryCam(method=method, target=target, opacity=opacity)


def gallery_overlays(ctx: PageContext, rows, paths: Sequence[str | None], settings: GalleryCam,
                     *, size: int) -> list[np.ndarray | None]:
    """Overlay thumbnails (uint8, longer side `size`) for gallery `rows` (sample_id, label, pred); None where there
    is no map (image unreadable, or the label is not a model class when explaining the true class)."""
    from models.cam import CamError, render_overlay

    spec = ctx.ensemble()
    if spec is not None:
        st.info(single_checkpoint_message(spec, "The Grad-CAM overlay"))
        return [None] * len(rows)
    _, card = ctx.model()
    index = {name: i for i, name in enumerate(card.class_names)}
    column = "pred" if settings.target == "pred" else "label"
    classes = [index.get(str(name), -1) for name in rows[column]]
    wanted = [i for i, c in enumerate(classes) if c >= 0]
    try:
        maps = cam_maps(ctx, [str(rows["sample_id"].iloc[i]) for i in wanted], [paths[i] for i in wanted],
                        [classes[i] for i in wanted], method=settings.method)
    except CamError as exc:
        st.error(md(exc))
        return [None] * len(rows)
    overlays: list[np.ndarray | None] = [None] * len(rows)
    for i, entry in zip(wanted, maps, strict=True):
        if isinstance(entry, CamMaps):
            overlays[i] = render_overlay(entry.view, entry.cam, opacity=settings.opacity, display_size=size)
    return overlays


@st.cache_resource(show_spinner=False)
def _cam_module_import() -> threading.Thread:
    """The server's one import of `models.cam` (torch, timm, grad-cam: seconds on a first use), on its own thread."""
    thread = threading.Thread(target=importlib.import_module, args=("models.cam",), name=CAM_IMPORT_THREAD,
                              daemon=True)
    thread.start()
    return thread


def await_cam_module(*, message: str = "Loading Grad-CAM (its first use on this server)…", poll_s: float = 0.2
                     ) -> None:
    """Wait for `models.cam` to be imported, on a background thread while the page shows `message`, touching the
    page every `poll_s` seconds as `await_cam_maps` does: a key press or click during a first use's import of torch
    reruns at once instead of waiting seconds for it. A failed import is left to the caller's own import to raise."""
    thread = _cam_module_import()
    if thread.is_alive():
        waiting = st.empty()
        while thread.is_alive():
            waiting.caption(message)
            time.sleep(poll_s)
        waiting.empty()


def cam_work_pending() -> bool:
    """Whether Grad-CAM work runs in the background (the first import of `models.cam`, prefetched maps); unlike
    `cam_module_pending`, starts nothing (for benchmarks that wait for it before timing the next run)."""
    importing = any(t.name == CAM_IMPORT_THREAD and t.is_alive() for t in threading.enumerate())
    return importing or cam_prefetcher().pending() > 0


def cam_module_pending() -> bool:
    """Whether the server's first import of `models.cam` (started here on its own thread when it has not been) is
    still running; never waits for it."""
    return _cam_module_import().is_alive()


def cam_maps_if_ready(
    ctx: PageContext,
    sample_ids: Sequence[str],
    paths: Sequence[str | None],
    class_indices: Sequence[int],
    *,
    method: str,
) -> list[CamMaps | str] | None:
    """`cam_maps` when they can be had at once, else None without waiting: the server's first import of
    `models.cam` (torch) is still running on its thread, or the maps are being computed on the prefetch thread
    (queued here when they were not). A page shows a caption then and asks again later (`st.fragment(run_every=...)`);
    the script run ends at once, so a key press is never held up by Grad-CAM. Without a prefetch thread for them
    (an ensemble, a model that cannot be loaded), the same as `cam_maps`, which raises or computes."""
    if cam_module_pending():
        return None
    prefetch_cam_maps(ctx, sample_ids, paths, class_indices, method=method)
    try:
        keys = _cam_keys(_checkpoint_sha(ctx, ctx.checkpoint), sample_ids, paths, class_indices, method, None)
    except USER_ERRORS:
        keys = None
    prefetcher = cam_prefetcher()
    if keys is not None and prefetcher.known(keys) and not prefetcher.ready(keys):
        return None
    return cam_maps(ctx, sample_ids, paths, class_indices, method=method)


def await_cam_maps(
    ctx: PageContext,
    sample_ids: Sequence[str],
    paths: Sequence[str | None],
    class_indices: Sequence[int],
    *,
    method: str,
    message: str = "Computing Grad-CAM…",
    poll_s: float = 0.2,
) -> list[CamMaps | str]:
    """`cam_maps`, computed on the prefetch thread while the page shows `message`: the script touches the page every
    `poll_s` seconds meanwhile, so a click or key press reruns at once instead of waiting for the maps (Streamlit
    acts on a rerun request when a script emits an element). Without a prefetch thread for them (an ensemble, a
    model that cannot be loaded), the same as `cam_maps`, which raises or computes."""
    name = ctx.checkpoint
    prefetch_cam_maps(ctx, sample_ids, paths, class_indices, method=method)
    try:
        keys = _cam_keys(_checkpoint_sha(ctx, name), sample_ids, paths, class_indices, method, None)
    except USER_ERRORS:
        keys = None
    prefetcher = cam_prefetcher()
    if keys is not None and prefetcher.known(keys) and not prefetcher.ready(keys):
        waiting = st.empty()
        while not prefetcher.ready(keys):
            waiting.caption(message)
            time.sleep(poll_s)
        waiting.empty()
    return cam_maps(ctx, sample_ids, paths, class_indices, method=method)
