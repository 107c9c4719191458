"""Embedding map: the stored embeddings in 2-D (UMAP, PCA at once while UMAP computes), coloured by label,
prediction, correctness, scores, split or taxonomy rank; a lasso or box selection opens its gallery and can become
the review queue "selection"."""

from __future__ import annotations

import streamlit as st

from core import embedding_map as em
from core.taxonomy import load_taxonomy
from pages import _data_scan as scan
from pages._cached import require_table, start_page, table_token
from pages._gallery import render_gallery, render_sample_view
from pages._map_events import CHART_KEY, map_selection, render_hover_preview
from pages._review_support import label_issue_ranking
from pages._state import KEY_SELECTION
from pages._text import md

ctx = start_page("Embedding map")
table = require_table(ctx)
if table.embeddings.shape[1] == 0:
    st.warning("These predictions hold no embeddings (the checkpoint gave no penultimate features); recompute them "
               "with a timm checkpoint to draw the map.")
    st.stop()
token = table_token(table, ctx.split, ctx.checkpoint or "")

controls = st.columns([1, 2])
methods = [m for m, p in em.PROJECTIONS.items() if p.available()]
method = controls[0].radio("Projection", methods, format_func=lambda m: em.PROJECTIONS[m].title, horizontal=True,
                           key="map-method", help="UMAP keeps neighbourhoods (clusters); PCA is instant and linear")
taxonomy = load_taxonomy(ctx.workspace, ctx.dataset)
colours = list(em.COLOUR_MODES) + ([f"{em.RANK_PREFIX}{r}" for r in taxonomy.ranks] if taxonomy else [])
colour = controls[1].selectbox("Colour by", colours, key="map-colour",
                               format_func=lambda c: em.COLOUR_MODES[c].title if c in em.COLOUR_MODES
                               else f"taxonomy: {c.removeprefix(em.RANK_PREFIX)}")

rows, coords, job = scan.map_coords(ctx, table, token, method)
if job is not None:
    @st.fragment(run_every=2.0)
    def _umap_progress() -> None:
        if job.done.is_set():
            if job.error:
                st.error(f"UMAP failed: {md(job.error)}. The PCA map is shown.")
            else:
                st.rerun(scope="app")
        else:
            st.info(f"Showing PCA while UMAP computes ({md(job.stage)}); the map switches when it is ready.")

    _umap_progress()

frame = em.map_frame(table, coords, rows)
taxa, scores = None, None
if colour.startswith(em.RANK_PREFIX):
    rank = colour.removeprefix(em.RANK_PREFIX)
    taxa = {c: taxonomy.group_of(c, rank) for c in set(frame["label"]) if c in taxonomy.ancestors}
elif colour == "label_quality":
    ranking = label_issue_ranking(ctx, table)
    scores = dict(zip(ranking.frame["sample_id"], ranking.frame["label_quality"], strict=True))
elif colour == "outlier":
    outliers = scan.outlier_scores(token, table)
    scores = dict(zip(outliers["sample_id"], outliers["outlier_score"], strict=True))
values = em.colour_values(frame, colour, taxa=taxa, scores=scores)
mode = em.COLOUR_MODES.get(colour)
figure = em.build_map_figure(frame, values, continuous=bool(mode and mode.continuous),
                             title=f"{em.PROJECTIONS[method].title if job is None else 'PCA'} · {len(frame):,} "
                             "points")
# Selections are relayed by pages/_map_events (only the fragment below reruns), so the chart ignores them itself.
st.plotly_chart(figure, key=CHART_KEY, on_select="ignore", config={"scrollZoom": True})
render_hover_preview(ctx, table, token)
caption = f"{len(frame):,} images of split **{ctx.split}**"
if len(frame) < len(table):
    caption += f" (an even sample of {len(table):,})"
st.caption(caption + ". Hover a point for its thumbnail; drag with the lasso (default) or box tool to select a "
           "cluster, click one point to see it large, double-click to clear.")


@st.fragment
def _selection() -> None:
    picked = map_selection(token)
    if not picked:
        st.caption("No selection yet.")
        return
    selected = em.selected_rows(table, picked)
    st.subheader(f"Selection: {len(selected):,} images", anchor=False)
    if len(selected) == 1:
        render_sample_view(ctx, table, str(selected["sample_id"].iloc[0]))
    counts = selected["label"].value_counts()
    st.caption("Given labels: " + " · ".join(f"{md(k)} {v}" for k, v in counts.head(8).items()))
    if st.button(f"Send {len(selected):,} to the review queue “selection”", key="map-send", type="primary"):
        st.session_state[KEY_SELECTION] = tuple(selected["sample_id"].astype(str))
        st.session_state["rv-kind"] = "selection"
        st.switch_page("pages/review.py")
    chosen = render_gallery(ctx, selected, key="map-gallery")
    if chosen and len(selected) > 1:
        render_sample_view(ctx, table, chosen)


_selection()
