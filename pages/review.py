"""Review queue: one sample at a time, likely label errors first; confirm, relabel, unsure, exclude or undo.
The queue "Label new images" labels the workspace's unlabelled pools instead (`pages/_annotate.py`).

Every button writes one event to the label store (`core.labelstore`); the page holds only what is on screen.
Keyboard (`SHORTCUTS`, shown on the buttons): k keep (confirm) · s accept the suggestion · l relabel to the picked
class · u unsure · x exclude · z undo · n next · p previous. Streamlit's own keys (`STREAMLIT_KEYS`) are left alone.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from core.errors import USER_ERRORS
from core.figures import build_top_predictions_figure
from core.novelty import NOVELTY_LABELS, queue_score
from core.queries import top_predictions
from core.ranking import QUEUE_KINDS, QueueSpec, build_queue
from pages._access import current_actor
from pages._annotate import KIND as ANNOTATE_KIND
from pages._annotate import TITLE as ANNOTATE_TITLE
from pages._annotate import render_annotation
from pages._cached import require_table, start_page
from pages._cam import cam_module_pending, prefetch_cam_maps
from pages._confidence import conformal_config, novelty_scores
from pages._crossval_job import render_crossval_job
from pages._gallery import sample_thumbnail, show_image
from pages._links import (
    PARAM_CLASS,
    PARAM_PRED,
    PARAM_QUEUE,
    PARAM_SAMPLE,
    PARAM_TRUE,
    copy_link_control,
    set_page_params,
    url_param,
)
from pages._review_support import (
    SHORTCUTS,
    current_reviewer,
    given_label,
    label_issue_ranking,
    label_store,
    now_line,
    queue_position,
    review_paths,
    sample_prediction_set,
    typical_example_ids,
)
from pages._state import KEY_CONFUSION_CELL, KEY_QUALITY_IDS, KEY_SELECTION
from pages._text import md

QUEUE_NAMES = {"likely_errors": "Likely label errors", "confusion_cell": "Confusion cell (from the confusion page)",
               "class": "One class", "low_confidence": "Lowest confidence",
               "not_reviewed_by_me": "Not yet reviewed by me",
               "possibly_unknown": "Possibly unknown (none of the known classes)",
               "selection": "Selection (lassoed on the map)",
               "image_quality": "Image-quality issues (from Data quality)", ANNOTATE_KIND: ANNOTATE_TITLE}
KINDS = (*QUEUE_KINDS, ANNOTATE_KIND)  # the label-error queues of core.ranking, then the pools' annotation queue
LISTED = {"selection": (KEY_SELECTION, "Lasso or box-select points on the Map page and send them here first."),
          "image_quality": (KEY_QUALITY_IDS, "Send flagged images here from the Data quality page first.")}
CURRENT, MESSAGE, NOTE = "rv-current", "rv-message", "rv-note"
PICK, PICK_FOR, QUEUE_ID = "rv-pick", "rv-pick-for", "rv-queue-id"
STRIP = 4  # typical examples shown per class


def _act(store, sample_id: str, action: str, *, reviewer: str, given: str, label: str | None = None,
         checkpoint: str | None = None, next_id: str | None = None, label_key: str | None = None) -> None:
    """Button callback: record one event, then move on; `label_key`: read the label from that widget now."""
    if label_key is not None:
        label = st.session_state.get(label_key)
    try:
        event = store.record(sample_id, action, reviewer=reviewer, label=label, given_label=given,
                             note=st.session_state.get(NOTE, ""), checkpoint=checkpoint, actor=current_actor())
    except USER_ERRORS as exc:
        st.session_state[MESSAGE] = ("error", md(exc))
        return
    st.session_state[MESSAGE] = ("success", f"{event.action} recorded for {md(sample_id)} (event {event.id})")
    st.session_state[NOTE] = ""
    st.session_state[CURRENT] = next_id or sample_id


def _undo(store, reviewer: str) -> None:
    try:
        event = store.undo_last(reviewer, note=st.session_state.get(NOTE, ""), actor=current_actor())
    except USER_ERRORS as exc:
        st.session_state[MESSAGE] = ("error", md(exc))
        return
    st.session_state[MESSAGE] = ("success", f"undid event {event.reverts_id} on {md(event.sample_id)}")
    st.session_state[NOTE] = ""
    st.session_state[CURRENT] = event.sample_id  # back to the sample, to decide again


def _go(sample_id: str | None) -> None:
    if sample_id is not None:
        st.session_state[CURRENT] = sample_id


def _strip(ctx, sample_ids: list[str], title: str) -> None:
    st.caption(title)  # callers escape the names in it
    if not sample_ids:
        st.caption("no correctly classified example in this split")
        return
    cells = st.columns(STRIP)
    for cell, path in zip(cells, review_paths(ctx, sample_ids), strict=False):
        data = sample_thumbnail(path)
        if data is not None:
            cell.image(data, width="stretch")


CAM_POLL_S = 0.5  # how often the pending Grad-CAM panel asks whether its maps are ready


def _cam_overlays(maps: list, wanted: list[tuple[str, int]]) -> None:
    """The Grad-CAM overlays of `maps` (one per `wanted` (title, class index)) side by side."""
    from models.cam import render_overlay
    from pages._cam import CamMaps

    for column, (title, _), entry in zip(st.columns(len(wanted)), wanted, maps, strict=True):
        if isinstance(entry, CamMaps):
            column.image(render_overlay(entry.view, entry.cam, opacity=0.45, display_size=256),
                         caption=f"Grad-CAM · {md(title)}", width="stretch")


def _ready_maps(ctx, sample_id: str, path: str, wanted: list[tuple[str, int]]) -> list | None:
    """This sample's maps when ready; None while torch imports or the prefetch thread computes them. A caption says
    why there are none when they cannot be computed."""
    from pages._cam import cam_maps_if_ready

    if cam_module_pending():  # the server's first use: torch imports on its own thread
        return None
    from models.cam import CamError  # imported already: no wait

    classes = [i for _, i in wanted]
    try:
        return cam_maps_if_ready(ctx, [sample_id] * len(classes), [path] * len(classes), classes, method="gradcam")
    except CamError as exc:
        st.caption(f"Grad-CAM unavailable: {md(exc)}")
        return [None] * len(classes)


def _await_cam(ctx, sample_id: str, path: str, wanted: list[tuple[str, int]]) -> None:
    """The pending Grad-CAM panel (an `st.fragment` rerun every `CAM_POLL_S` while it shows): a caption until the
    maps are ready, then a rerun of the page, which draws them and stops asking."""
    st.caption("Computing Grad-CAM…")
    if _ready_maps(ctx, sample_id, path, wanted) is not None:
        st.rerun()


def _cam_panel(ctx, sample_id: str, path: str, wanted: list[tuple[str, int]]) -> None:
    """Grad-CAM of this sample for each of `wanted`, never waiting: drawn when the maps are ready, else a caption
    that a polling fragment replaces once the prefetch thread is done (the script run ends at once)."""
    maps = _ready_maps(ctx, sample_id, path, wanted)
    if maps is None:
        st.fragment(_await_cam, run_every=CAM_POLL_S)(ctx, sample_id, path, wanted)
    else:
        _cam_overlays(maps, wanted)


@st.fragment
def sample_view(ctx, table, store, ranking, spec: QueueSpec, reviewer: str | None, novelty=None) -> None:
    """The sample under review and the decision buttons: a decision or a move reruns only this fragment, not the
    sidebar, the queue pickers, the ranking or the cross-validation panel (the key press -> next sample path)."""
    names = list(table.class_names)
    queue = build_queue(ranking, spec, reviewed_by_me=store.reviewed_by(reviewer) if reviewer else set(),
                        novelty=novelty)
    if queue.empty:
        st.success("This queue is empty.")
        return
    place = queue_position(queue, CURRENT)
    position, sample_id, next_id = place.position, place.sample_id, place.next_id
    row = queue.iloc[position]
    set_page_params("review", queue=spec.kind, **{PARAM_CLASS: spec.class_name, PARAM_TRUE: spec.true_label,
                                                  PARAM_PRED: spec.pred_label, PARAM_SAMPLE: sample_id})
    given = given_label(ctx, sample_id)
    given = str(row["label"]) if given is None else given
    suggested = str(row["suggested"])
    state = store.state(sample_id)
    if st.session_state.get(PICK_FOR) != sample_id:  # the picker starts on this sample's suggestion, not the last pick
        st.session_state[PICK] = suggested
        st.session_state[PICK_FOR] = sample_id

    flash = st.session_state.pop(MESSAGE, None)
    if flash:
        (st.error if flash[0] == "error" else st.toast)(flash[1])

    with st.container(horizontal=True, vertical_alignment="center", key="rv-nav"):
        st.button("Previous", key="rv-prev", icon=":material/arrow_back:", on_click=_go,
                  args=(place.previous_id,), disabled=position == 0,
                  shortcut=SHORTCUTS["rv-prev"])
        st.button("Next", key="rv-next", icon=":material/arrow_forward:", on_click=_go, args=(next_id,),
                  disabled=next_id is None, shortcut=SHORTCUTS["rv-next"])
        st.caption(f"Sample {position + 1} of {place.total} · queue rank {int(row['rank'])} · {md(sample_id)}")
        copy_link_control("rv-link")

    path = review_paths(ctx, [sample_id])[0]
    image_col, facts_col = st.columns([3, 2])
    with image_col:
        show_image(path, sample_id)
        cam_slot = st.container()  # filled last: the decision buttons render before any Grad-CAM work
    with facts_col:
        st.markdown(f"**Given label:** {md(given)}  \n**Suggested:** {md(suggested)} ({row['suggested_prob']:.1%}, "
                    f"model blended with its embedding neighbours)  \n"
                    f"**Label quality:** {row['label_quality']:.3f}"
                    + (" · flagged as a likely error" if row["is_label_issue"] else "")
                    + f"  \n**Split:** {md(row['split'])} · **Specimen:** {md(row['specimen_id'])}")
        members = sample_prediction_set(ctx, table, sample_id)
        if members is not None:
            set_cfg = conformal_config()
            listed = ", ".join(md(m) for m in members) or "(empty: no class is needed for this coverage)"
            st.markdown(f"**Prediction set ({set_cfg.coverage:.0%}):** {listed}"
                        + ("" if given in members else f" · *{md(given)} is not in it*"),
                        help="The classes a split-conformal set keeps at this coverage (Calibration page settings); "
                        "a set of one is a confident call, a long set an uncertain one")
        st.markdown(now_line(state, given))
        table_row = int(np.flatnonzero((table.frame["sample_id"] == sample_id).to_numpy(dtype=bool))[0])
        st.plotly_chart(build_top_predictions_figure(top_predictions(table, table_row, k=5), true_label=given),
                        key=f"rv-top-{sample_id}")

    if reviewer is not None:  # viewers (and a local user who typed no name) see no note box and no review buttons
        st.text_input("Note (optional, stored as plain text)", key=NOTE)
        common = {"reviewer": reviewer, "given": given, "checkpoint": ctx.checkpoint, "next_id": next_id}
        # One wrapping row of content-wide buttons: a label is never cut ("Uns…"), a long class name wraps instead.
        with st.container(horizontal=True, vertical_alignment="center", key="rv-actions"):
            st.button(f"Confirm {md(given)}", key="rv-confirm", type="primary", on_click=_act,
                      args=(store, sample_id, "confirm"), kwargs={**common, "label": given},
                      shortcut=SHORTCUTS["rv-confirm"], wrap=True)
            st.button(f"Accept {md(suggested)}", key="rv-accept", disabled=suggested == given, on_click=_act,
                      args=(store, sample_id, "relabel"), kwargs={**common, "label": suggested},
                      shortcut=SHORTCUTS["rv-accept"], wrap=True)
            st.selectbox("Pick class", names, key=PICK, label_visibility="collapsed",
                         help="Type to search the classes", width=240)
            st.button("Relabel to picked", key="rv-relabel", on_click=_act,
                      args=(store, sample_id, "relabel"), kwargs={**common, "label_key": PICK},
                      shortcut=SHORTCUTS["rv-relabel"], wrap=True)
            st.button("Unsure", key="rv-unsure", on_click=_act, args=(store, sample_id, "unsure"),
                      kwargs=common, shortcut=SHORTCUTS["rv-unsure"], wrap=True)
            st.button("Exclude: bad image", key="rv-exclude", on_click=_act,
                      args=(store, sample_id, "exclude"), kwargs=common, shortcut=SHORTCUTS["rv-exclude"], wrap=True)
            st.button("Undo my last", key="rv-undo", on_click=_undo, args=(store, reviewer),
                      shortcut=SHORTCUTS["rv-undo"], wrap=True)

    strips = st.columns(2)
    with strips[0]:
        _strip(ctx, typical_example_ids(ctx, table, given, n=STRIP, exclude=sample_id), f"Typical {md(given)} (given)")
    with strips[1]:
        _strip(ctx, typical_example_ids(ctx, table, suggested, n=STRIP, exclude=sample_id),
               f"Typical {md(suggested)} (suggested)")

    history = store.events_frame(sample_ids=[sample_id])
    if len(history):
        with st.expander(f"History of this sample ({len(history)} events)"):
            # st.dataframe renders every cell as text: notes never become HTML
            st.dataframe(history[["id", "created_at", "reviewer", "action", "previous_label", "new_label", "note",
                                  "adjudication"]], hide_index=True)

    # Grad-CAM of this sample, after everything a decision needs is on screen (the maps are slow on a CPU); the next
    # sample's maps are computed on a background thread meanwhile, so moving on usually finds them ready.
    with cam_slot:
        if path and st.toggle("Grad-CAM for the suggested and the given class", value=True, key="rv-cam"):
            wanted = [(f"suggested: {suggested}", names.index(suggested))]
            if given in names:
                wanted.append((f"given: {given}", names.index(given)))
            _cam_panel(ctx, sample_id, path, wanted)
    # queued after this sample's maps; not while torch imports (the import lock would hold this script run)
    if next_id is not None and st.session_state.get("rv-cam", True) and not cam_module_pending():
        next_path = review_paths(ctx, [next_id])[0]
        if next_path:
            wanted = [names.index(str(queue.iloc[position + 1]["suggested"]))]
            next_given = given_label(ctx, next_id)
            if next_given in names:
                wanted.append(names.index(next_given))
            prefetch_cam_maps(ctx, [next_id] * len(wanted), [next_path] * len(wanted), wanted, method="gradcam")


ctx = start_page("Review queue")
table = require_table(ctx)
store = label_store(ctx)
names = list(table.class_names)

# A link or a reload: the queue and the sample come from the URL while this session has chosen none.
if "rv-kind" not in st.session_state and url_param(PARAM_QUEUE) in KINDS:
    st.session_state["rv-kind"] = url_param(PARAM_QUEUE)
    if url_param(PARAM_CLASS) in names:
        st.session_state["rv-class"] = url_param(PARAM_CLASS)
    if url_param(PARAM_TRUE) in names and url_param(PARAM_PRED) in names:
        st.session_state[KEY_CONFUSION_CELL] = (names.index(url_param(PARAM_TRUE)), names.index(url_param(PARAM_PRED)))
    if url_param(PARAM_SAMPLE):
        st.session_state[CURRENT] = url_param(PARAM_SAMPLE)

top_row = st.columns([2, 2, 2, 1])
with top_row[0]:
    reviewer = current_reviewer()
kind = top_row[1].selectbox("Queue", KINDS, format_func=QUEUE_NAMES.get, key="rv-kind")
if kind == ANNOTATE_KIND:
    render_annotation(ctx, store, reviewer, top_row)  # stops the script
spec = QueueSpec(kind=kind)
if kind == "class":
    spec = QueueSpec(kind=kind, class_name=top_row[2].selectbox("Class", names, key="rv-class"))
elif kind == "confusion_cell":
    cell = st.session_state.get(KEY_CONFUSION_CELL)
    if not cell or not all(0 <= i < len(names) for i in cell):
        set_page_params("review", queue=kind, **dict.fromkeys((PARAM_CLASS, PARAM_TRUE, PARAM_PRED, PARAM_SAMPLE)))
        st.info("Open a cell on the Confusion matrix page first; its samples become this queue.")
        st.stop()
    spec = QueueSpec(kind=kind, true_label=names[cell[0]], pred_label=names[cell[1]])
    top_row[2].markdown(f"**Cell:** given *{md(spec.true_label)}* → predicted *{md(spec.pred_label)}*")
elif kind in LISTED:
    key, hint = LISTED[kind]
    listed = tuple(st.session_state.get(key) or ())
    if not listed:
        st.info(hint)
        st.stop()
    spec = QueueSpec(kind=kind, sample_ids=listed)
    top_row[2].markdown(f"**{len(listed):,} samples** handed over")
hide = top_row[3].toggle("Hide mine", key="rv-hide", help="Hide samples I already decided")
spec = QueueSpec(kind=spec.kind, true_label=spec.true_label, pred_label=spec.pred_label, class_name=spec.class_name,
                 hide_reviewed=hide, sample_ids=spec.sample_ids)
# Another queue (kind, class or cell) starts at its rank 1, not at the sample the last queue was on.
queue_id = (spec.kind, spec.class_name, spec.true_label, spec.pred_label, hash(spec.sample_ids))
if st.session_state.get(QUEUE_ID) not in (None, queue_id):
    st.session_state.pop(CURRENT, None)
st.session_state[QUEUE_ID] = queue_id
if kind == "not_reviewed_by_me" and reviewer is None:
    st.stop()

ranking = label_issue_ranking(ctx, table)
for message in ranking.messages:  # they name classes: user text
    (st.warning if "unreliable" in message else st.caption)(md(message))
render_crossval_job(ctx)  # out-of-fold probabilities, so the training split can be ranked
novelty = None
if kind == "possibly_unknown":
    novelty = queue_score(novelty_scores(ctx, table))
    st.caption(f"Sorted by {NOVELTY_LABELS[str(novelty.name)]}, most unusual first: images far from every training "
               "image may be a new species, debris or a bad crop.")
sample_view(ctx, table, store, ranking, spec, reviewer, novelty)
