"""The image gallery every evaluation page uses: thumbnails with true/predicted class and confidence, paged, sortable;
and the larger single-sample view with the model's top-5."""

from __future__ import annotations

import io
import math

import pandas as pd
import streamlit as st

from core.images import ImageError, load_image_rgb
from core.predictions import PredictionTable
from core.queries import first_positions, top_predictions
from pages._cached import PageContext, dataset_key, file_mtime_ns
from pages._cam import gallery_cam_controls, gallery_overlays
from pages._text import md

THUMB_PX = 160
PAGE_SIZES = (12, 24, 48)
COLUMNS = 6
SORTS = {
    "confidence ↓": ("confidence", False),
    "confidence ↑": ("confidence", True),
    "loss ↓": ("loss", False),
}


@st.cache_resource(show_spinner=False, max_entries=8)
def _path_index(load_key: str, _samples: pd.DataFrame) -> pd.Series:
    return _samples.set_index("sample_id")["path"]


def sample_paths(ctx: PageContext, sample_ids: list[str]) -> list[str | None]:
    """Absolute image paths of `sample_ids` (None for ids no longer in the dataset)."""
    index = _path_index(dataset_key(ctx.dataset), ctx.dataset.samples)
    return [None if p is None or (isinstance(p, float) and math.isnan(p)) else str(p)
            for p in index.reindex(sample_ids).tolist()]


@st.cache_data(show_spinner=False, max_entries=4096)
def thumbnail_bytes(path: str, mtime_ns: int, size: int = THUMB_PX) -> bytes | None:
    """A JPEG thumbnail of the image at `path` (None when it cannot be decoded); keyed by modification time."""
    try:
        image = load_image_rgb(path)
    except ImageError:
        return None
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def show_image(path: str | None, caption: str) -> None:
    """The image at `path` at the column's width, or why it cannot be shown (an `ImageError`'s message). `caption`
    is plain text (a sample id, a class name): it is shown literally."""
    try:
        st.image(load_image_rgb(path) if path else None, caption=md(caption), width="stretch")
    except ImageError as exc:
        st.error(md(exc))


def sample_thumbnail(path: str | None) -> bytes | None:
    """The cached thumbnail of the image at `path` (re-made when the file changes); None without a readable image."""
    return thumbnail_bytes(path, file_mtime_ns(path)) if path else None


def render_gallery(ctx: PageContext, table_rows: pd.DataFrame, *, key: str) -> str | None:
    """Thumbnails of `table_rows` (columns sample_id, label, pred, confidence, optionally loss), paged and sortable.

    Returns the sample id whose "inspect" button was pressed last (kept in session state under `key`), or None.
    """
    n = len(table_rows)
    if n == 0:
        st.caption("No samples.")
        return None
    sorts = [s for s in SORTS if SORTS[s][0] in table_rows.columns]
    controls = st.columns([2, 1, 1])
    sort = controls[0].selectbox("Sort by", sorts, key=f"{key}-sort")
    page_size = controls[1].selectbox("Per page", PAGE_SIZES, index=1, key=f"{key}-size")
    n_pages = max(1, math.ceil(n / page_size))
    page = controls[2].number_input("Page", 1, n_pages, 1, key=f"{key}-page", help=f"{n_pages} pages")
    cam_settings = gallery_cam_controls(key)  # optional Grad-CAM overlay (off by default)
    column, ascending = SORTS[sort]
    start = (int(page) - 1) * page_size
    # only the rows up to this page are ordered (a partition, not a sort of every row: 400,000 errors at 1M images)
    first = first_positions(table_rows[column].to_numpy(dtype=float), start + page_size, ascending=ascending)
    rows = table_rows.iloc[first[start:]]
    st.caption(f"Showing {start + 1}–{start + len(rows)} of {n}")
    paths = sample_paths(ctx, rows["sample_id"].tolist())
    overlays = gallery_overlays(ctx, rows, paths, cam_settings, size=THUMB_PX) if cam_settings else [None] * len(rows)
    inspect_key = f"{key}-inspect"
    grid = st.container(key=f"{key}-grid")
    with grid:
        for offset in range(0, len(rows), COLUMNS):
            cells = st.columns(COLUMNS)
            for cell, (_, row), path, overlay in zip(cells, rows.iloc[offset : offset + COLUMNS].iterrows(),
                                                     paths[offset : offset + COLUMNS],
                                                     overlays[offset : offset + COLUMNS], strict=False):
                with cell:
                    data = overlay if overlay is not None else sample_thumbnail(path)
                    caption = f"{md(row['label'])} → {md(row['pred'])} · {row['confidence']:.0%}"
                    if data is None:
                        st.caption(f"(image unavailable) {caption}")
                    else:
                        st.image(data, caption=caption, width=THUMB_PX)
                    if st.button("Inspect", key=f"{key}-btn-{row['sample_id']}", help=str(row["sample_id"])):
                        st.session_state[inspect_key] = str(row["sample_id"])
    chosen = st.session_state.get(inspect_key)
    return chosen if chosen is not None and bool((table_rows["sample_id"] == chosen).any()) else None


def render_sample_view(ctx: PageContext, table: PredictionTable, sample_id: str, *, k: int = 5) -> None:
    """A larger view of one sample with its label, prediction, loss, specimen and the model's top-k classes."""
    from core.figures import build_top_predictions_figure

    matches = (table.frame["sample_id"] == sample_id).to_numpy().nonzero()[0]
    if not len(matches):
        st.info(f"Sample {md(sample_id)} is not in this split.")
        return
    row_index = int(matches[0])
    row = table.frame.iloc[row_index]
    left, right = st.columns([1, 1])
    path = sample_paths(ctx, [sample_id])[0]
    with left:
        show_image(path, sample_id)
    with right:
        st.markdown(f"**True:** {md(row['label'])}  \n**Predicted:** {md(row['pred'])} ({row['confidence']:.1%})  \n"
                    f"**Loss:** {row['loss']:.3f}  \n**Specimen:** {md(row['specimen_id'])}  \n"
                    f"**Split:** {md(row['split'])}")
        top = top_predictions(table, row_index, k=k)
        st.plotly_chart(build_top_predictions_figure(top, true_label=str(row["label"])), key=f"top-{sample_id}")
