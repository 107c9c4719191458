"""Grad-CAM: for any sample, the image beside heat maps for the predicted class, the true class and a chosen class.

The true class follows the sidebar's label mode: as curated, a reviewed sample's map explains the label the label
store says now, and excluded or disputed samples leave the list (as on every evaluation page)."""

from __future__ import annotations

import streamlit as st

from core.curation import LABEL_MODES
from core.queries import top_predictions
from models.cam import CAM_METHODS, MIN_CAM_GRID, CamError, render_overlay
from pages._cached import require_single_checkpoint, start_page
from pages._cam import CamMaps, auto_layer, cam_maps
from pages._evaluation import require_eval_data, show_curation_notes
from pages._gallery import sample_paths, show_image
from pages._links import PARAM_SAMPLE, copy_link_control, set_page_params, url_param
from pages._text import md

MAX_OPTIONS = 500  # sample ids listed at once; type in the filter to narrow a larger split
DISPLAY_PX = 320
KEY_SAMPLE = "cam-sample"  # the explained sample (a plain key: the box below shows it, it never lags the box)
BOX = "cam-sample-box"  # the Sample selectbox's own widget key, re-seeded from KEY_SAMPLE on every run


def _commit_sample() -> None:
    st.session_state[KEY_SAMPLE] = st.session_state[BOX]

ctx = start_page("Grad-CAM")
require_single_checkpoint(ctx, "Grad-CAM")  # an ensemble has no model to explain
data = require_eval_data(ctx)  # under the sidebar's label mode: as curated, the "True" map is the curated label
table = data.table
names = list(table.class_names)
frame = table.frame
st.caption(f"Checkpoint **{md(ctx.checkpoint)}** · split **{ctx.split}** · {len(table):,} images · labels "
           f"{LABEL_MODES[data.label_mode]}. The maps show where "
           "the model's evidence for a class lies, on the image as the model saw it (resized and cropped).")

show_curation_notes(data)

linked = url_param(PARAM_SAMPLE)
if linked and linked in set(frame["sample_id"]):
    st.session_state.setdefault(KEY_SAMPLE, linked)
with st.container(border=True):
    pick = st.columns([2, 3, 1])
    needle = pick[0].text_input("Filter sample ids", key="cam-filter", placeholder="part of an id or path")
    errors_only = pick[2].toggle("Errors only", key="cam-errors")
    options = frame
    if errors_only:
        options = options[options["label_idx"] != options["pred_idx"]]
    if needle:
        options = options[options["sample_id"].str.contains(needle, case=False, regex=False)]
    ids = options["sample_id"].head(MAX_OPTIONS).tolist()
    current = st.session_state.get(KEY_SAMPLE)
    if current is not None and current not in ids:
        if current in set(options["sample_id"]):
            ids = [current, *ids]  # a linked or earlier choice that matches but lies past the first MAX_OPTIONS
        else:
            current = None  # filtered out: show the first match instead
    if not ids:
        st.warning("No sample matches the filter.")
        st.stop()
    # The box is re-seeded with the explained sample on every run: when its options or its label (the match count)
    # change, Streamlit makes it a new widget, which showed its first option while the page explained the kept one.
    sample_id = current or ids[0]
    st.session_state[KEY_SAMPLE] = st.session_state[BOX] = sample_id
    pick[1].selectbox(f"Sample ({len(options):,} match)", ids, key=BOX, on_change=_commit_sample)
    set_page_params("explain", sample=sample_id)
    row_index = int((frame["sample_id"] == sample_id).to_numpy().nonzero()[0][0])
    row = frame.iloc[row_index]

    controls = st.columns([2, 2, 2, 2, 1], vertical_alignment="bottom")
    method = controls[0].selectbox("Method", list(CAM_METHODS), key="cam-method",
                                   format_func=lambda m: f"{CAM_METHODS[m].label}{' (slow)' * CAM_METHODS[m].slow}")
    opacity = controls[1].slider("Opacity", 0.0, 1.0, 0.5, step=0.05, key="cam-opacity")
    runners_up = [c for c in top_predictions(table, row_index, k=3)["class"] if c not in (row["pred"], row["label"])]
    other = controls[2].selectbox("Other class", names, key=f"cam-other-{sample_id}",
                                  index=names.index(runners_up[0]) if runners_up else 0)
    model, card = ctx.model()
    auto, why = auto_layer(card.sha256, model, tuple(card.input_size))
    layer = controls[3].text_input("Layer", key="cam-layer", placeholder=auto or "module name",
                                   help="Module to explain (dotted name); empty = automatic"
                                   + (f" ({auto})" if auto else ""))
    with controls[4]:
        copy_link_control("cam-link")
    st.caption(CAM_METHODS[method].note)
    if CAM_METHODS[method].slow:
        st.warning(f"{CAM_METHODS[method].label} is slow: one forward pass per channel of the layer.")
    if why and not layer:
        st.error(md(why))
        st.stop()

targets = [("Predicted", int(row["pred_idx"]))]
if int(row["label_idx"]) >= 0:
    targets.append(("True", int(row["label_idx"])))
targets.append(("Other", names.index(other)))
path = sample_paths(ctx, [sample_id])[0]
try:
    with st.spinner(f"Computing {CAM_METHODS[method].label}…"):
        maps = cam_maps(ctx, [sample_id] * len(targets), [path] * len(targets), [c for _, c in targets],
                        method=method, layer=layer.strip() or None)
except CamError as exc:
    st.error(md(exc))
    st.stop()

columns = st.columns(1 + len(targets))
with columns[0]:
    show_image(path, f"{sample_id} · true {row['label']}")
for column, (role, class_index), entry in zip(columns[1:], targets, maps, strict=True):
    with column:
        if not isinstance(entry, CamMaps):
            st.warning(md(entry))
            continue
        probability = float(table.pred_probs[row_index, class_index])
        empty = " · no positive evidence" if int(entry.cam.max()) == 0 else ""
        st.image(render_overlay(entry.view, entry.cam, opacity=opacity, display_size=DISPLAY_PX), width="stretch",
                 caption=f"{role}: {md(names[class_index])} ({probability:.1%}){empty}")
if int(row["label_idx"]) < 0:
    st.info(f"The label {md(repr(row['label']))} is not one of the checkpoint's classes, so there is no "
            "true-class map.")
if not CAM_METHODS[method].class_specific:
    st.info(f"{CAM_METHODS[method].label} does not depend on the class: the maps are the same.")
first = next((m for m in maps if isinstance(m, CamMaps)), None)
if first is not None:
    st.caption(f"Layer {md(first.layer)} ({first.grid[0]}×{first.grid[1]} map) · predicted {md(row['pred'])} with "
               f"{row['confidence']:.1%} confidence.")
    if first.note:  # the automatic layer is below 7x7: the model has no finer map at this input size
        st.info(first.note)
    elif min(first.grid) < MIN_CAM_GRID:
        st.info(f"The layer's map is only {first.grid[0]}×{first.grid[1]} at this input size, so the heat map is "
                "coarse; an earlier layer (type its name under Layer) trades class-specificity for detail.")
