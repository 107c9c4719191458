"""Cached Grad-CAM for the pages: one entry per (checkpoint, sample, method, class, layer), filled a page at a time."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import streamlit as st

from core.images import ImageError, load_image_rgb
from pages._cached import PageContext, file_mtime_ns, single_checkpoint_message

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
    """Maps for each (sample, class) pair, from the cache or computed in one batch for all pairs still missing.

    An entry is a `CamMaps`, or a short message when the image cannot be read. Raises `CamError` (bad layer,
    unknown method) for the caller to show.
    """
    from models.cam import CamError
    from models.checkpoints import file_sha256

    name = checkpoint or ctx.checkpoint
    spec = ctx.ensemble(name)
    if spec is not None:
        raise CamError(single_checkpoint_message(spec))
    sha = file_sha256(ctx.workspace.checkpoint(name).path)  # memoised on (path, size, mtime)
    filled: dict[int, CamMaps | str] = {}

    def fill_from(position: int) -> None:
        # First miss at `position`: items before it are resolved already; compute it and every later one at once.
        from models.cam import explain_images

        todo = [j for j in range(position, len(sample_ids)) if j not in filled]
        images, rows = [], []
        for j in todo:
            try:
                images.append(load_image_rgb(paths[j]) if paths[j] else None)
            except ImageError as exc:
                images.append(None)
                filled[j] = f"image unavailable ({exc.reason})"
                continue
            if images[-1] is None:
                filled[j] = "image not in the dataset"
                continue
            rows.append(j)
        if not rows:
            return
        model, card = ctx.model(name)
        explanation = explain_images(model, card, [images[todo.index(j)] for j in rows],
                                     [int(class_indices[j]) for j in rows], method=method, layer=layer or None)
        result = explanation.result
        for i, j in enumerate(rows):
            filled[j] = CamMaps(view=explanation.views[i], cam=np.round(result.cams[i] * 255).astype(np.uint8),
                                class_index=int(result.class_indices[i]), pred_probs=result.pred_probs[i],
                                layer=result.layer, grid=result.grid, note=result.note)

    def compute(position: int) -> CamMaps | str:
        if position not in filled:
            fill_from(position)
        return filled[position]

    return [
        _cam_entry(sha, str(sample_id), str(path or ""), file_mtime_ns(path), method, int(class_index), layer or "",
                   functools.partial(compute, position))
        for position, (sample_id, path, class_index) in enumerate(zip(sample_ids, paths, class_indices, strict=True))
    ]


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
    from models.cam import CAM_METHODS

    if not st.toggle("Grad-CAM overlay", key=f"{key}-cam",
                     help="Overlay every thumbnail of the page with a class-activation map (one batch per page, "
                     "cached per checkpoint, sample, method and class)"):
        return None
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
        st.error(str(exc))
        return [None] * len(rows)
    overlays: list[np.ndarray | None] = [None] * len(rows)
    for i, entry in zip(wanted, maps, strict=True):
        if isinstance(entry, CamMaps):
            overlays[i] = render_overlay(entry.view, entry.cam, opacity=settings.opacity, display_size=size)
    return overlays
