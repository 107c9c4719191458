"""The review screen's "label new images" queue: pool images one at a time, the model's top-5 as the suggestion,
keyboard accept / pick 1-5 / skip / exclude, Grad-CAM of the suggestion and typical examples of its class; and the
lead's bulk auto-accept (per-class thresholds for a target precision) with its undo.

Every decision is one event in the label store (`core.labelstore`, action `label` or `exclude`); an auto-accept is
one `auto_accept` event (`core.pools`). The page holds only what is on screen.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.errors import USER_ERRORS, user_message
from core.labelstore import LabelStore
from core.pools import (
    Pool,
    PoolPredictions,
    annotation_queue,
    bulk_accepts,
    bulk_summary,
    labelled_class_counts,
    load_pool,
    plan_auto_accept,
    pool_counts,
    pool_label_frame,
    record_auto_accept,
    undo_auto_accept,
)
from pages._access import current_actor, may
from pages._cached import PageContext, file_mtime_ns, get_predictions, table_token
from pages._cam import prefetch_cam_maps
from pages._gallery import sample_thumbnail, show_image
from pages._review_support import queue_position, typical_example_ids
from pages._text import md

KIND = "label_new"  # the review page's queue kind
TITLE = "Label new images (unlabelled pools)"
# Annotation button key -> keyboard shortcut (none of Streamlit's own keys c, r, a, Esc).
SHORTCUTS: dict[str, str] = {
    "an-accept": "s",  # the model's first suggestion
    **{f"an-pick-{i}": str(i) for i in range(1, 6)},  # the i-th suggestion
    "an-skip": "n",  # next image, no decision
    "an-back": "p",
    "an-exclude": "x",  # not a usable image of any class
    "an-undo": "z",
}
CURRENT, MESSAGE = "an-current", "an-message"
STRIP = 4  # typical examples shown
DEFAULT_ORDER = "margin"


@st.cache_resource(show_spinner="Checking the pool's images…", max_entries=16)
def _pool(root: str, name: str, stamp: tuple, _ctx_workspace) -> Pool:
    return load_pool(_ctx_workspace, name)


def pool_of(ctx: PageContext, name: str) -> Pool:
    """The pool `name`, re-checked when its folder or CSV changes."""
    spec = ctx.workspace.pool(name)
    return _pool(str(ctx.workspace.root), name, (str(spec.source), file_mtime_ns(spec.source)), ctx.workspace)


def _store_stamp(ctx: PageContext, checkpoint: str) -> tuple:
    from models.inference import store_path

    folder = store_path(ctx.workspace, checkpoint, dataset=ctx.dataset)
    return tuple(sorted(p.name for p in folder.glob("part-*.parquet"))) if folder.is_dir() else ()


@st.cache_resource(show_spinner=False, max_entries=16)
def _pool_predictions(root: str, checkpoint: str, pool_key: tuple, store_stamp: tuple, _ctx: PageContext,
                      _pool_obj: Pool) -> PoolPredictions | None:
    from models.inference import cached_pool_predictions

    return cached_pool_predictions(_ctx.workspace, checkpoint, _pool_obj, dataset=_ctx.dataset)


def pool_predictions(ctx: PageContext, pool: Pool) -> PoolPredictions | None:
    """The primary checkpoint's stored predictions on `pool` (None until every image has one)."""
    pool_key = (pool.name, len(pool), tuple(pool.samples["sample_id"].head(3)))
    return _pool_predictions(str(ctx.workspace.root), ctx.checkpoint, pool_key, _store_stamp(ctx, ctx.checkpoint),
                             ctx, pool)


def _predict(ctx: PageContext, pool: Pool) -> None:
    from models.inference import predict_pool

    bar = st.progress(0.0, text=f"Predicting pool {md(pool.name)}…")

    def progress(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Predicting pool {md(pool.name)}: {done:,} of {total:,} images")

    predict_pool(ctx.workspace, ctx.checkpoint, pool, dataset=ctx.dataset, progress=progress)


def _act(store: LabelStore, sample_id: str, action: str, *, label: str | None, checkpoint: str | None,
         next_id: str | None) -> None:
    """Button callback: one event, then the next image."""
    try:
        event = store.record(sample_id, action, label=label, checkpoint=checkpoint, actor=current_actor())
    except USER_ERRORS as exc:
        st.session_state[MESSAGE] = ("error", md(user_message(exc)))
        return
    st.session_state[MESSAGE] = ("success", f"{event.action} {md(label or '')} recorded for {md(sample_id)} "
                                            f"(event {event.id})")
    st.session_state[CURRENT] = next_id


def _undo(store: LabelStore) -> None:
    actor = current_actor()
    try:
        event = store.undo_last(actor.name if actor else None, actor=actor)
    except USER_ERRORS as exc:
        st.session_state[MESSAGE] = ("error", md(user_message(exc)))
        return
    st.session_state[MESSAGE] = ("success", f"undid event {event.reverts_id} on {md(event.sample_id)}")
    st.session_state[CURRENT] = event.sample_id


def _go(sample_id: str | None) -> None:
    if sample_id is not None:
        st.session_state[CURRENT] = sample_id


def _strip(ctx: PageContext, class_name: str, exclude: str | None = None) -> None:
    from pages._gallery import sample_paths

    table = get_predictions(ctx.workspace, ctx.checkpoint)
    val = table.for_split("val") if table is not None else None
    st.caption(f"Typical {md(class_name)} (most confident correct validation images)")
    ids = typical_example_ids(ctx, val, class_name, n=STRIP, exclude=exclude) if val is not None and len(val) else []
    if not ids:
        st.caption("no correctly classified validation example of this class")
        return
    for cell, path in zip(st.columns(STRIP), sample_paths(ctx, ids), strict=False):
        data = sample_thumbnail(path)
        if data is not None:
            cell.image(data, width="stretch")


def _labelled_counts(ctx: PageContext, predictions: PoolPredictions, labels: pd.DataFrame) -> np.ndarray:
    given = ctx.dataset.samples["label"].tolist()
    new = labels.loc[labels["status"] == "new", "label"].dropna().tolist()
    return labelled_class_counts(predictions.class_names, given + new)


def _labelled_embeddings(ctx: PageContext, predictions: PoolPredictions) -> np.ndarray | None:
    """The training split's stored embeddings (what diversity keeps away from), when as wide as the pool's."""
    table = get_predictions(ctx.workspace, ctx.checkpoint)
    if table is None or not predictions.embeddings.shape[1]:
        return None
    train = table.for_split("train").embeddings
    return train if train.ndim == 2 and len(train) > 1 and train.shape[1] == predictions.embeddings.shape[1] else None


@st.fragment
def annotate_view(ctx: PageContext, store: LabelStore, pool: Pool, predictions: PoolPredictions, order: str,
                  reviewer: str | None) -> None:
    """The pool image to label and its buttons; a decision reruns only this fragment."""
    labels = pool_label_frame(store, pool)
    counts = pool_counts(pool, labels)
    try:
        queue = annotation_queue(predictions, labels, order=order,
                                 labelled_counts=_labelled_counts(ctx, predictions, labels),
                                 labelled_embeddings=_labelled_embeddings(ctx, predictions))
    except USER_ERRORS as exc:  # an order the pool's predictions cannot serve (e.g. no embeddings)
        st.error(md(user_message(exc)))
        return
    flash = st.session_state.pop(MESSAGE, None)
    if flash:
        (st.error if flash[0] == "error" else st.toast)(flash[1])
    st.caption(f"Pool **{md(pool.name)}**: {counts.images:,} images · {counts.labelled:,} labelled · "
               f"{counts.auto_accepted:,} auto-accepted · {counts.excluded:,} excluded · {counts.remaining:,} to label")
    if queue.empty:
        st.success("Every image of this pool is labelled or excluded.")
        if reviewer is not None:
            st.button("Undo my last", key="an-undo", on_click=_undo, args=(store,), shortcut=SHORTCUTS["an-undo"])
        return
    place = queue_position(queue, CURRENT)
    position, sample_id, next_id = place.position, place.sample_id, place.next_id
    row = queue.iloc[position]
    with st.container(horizontal=True, vertical_alignment="center", key="an-nav"):
        st.button("Back", key="an-back", icon=":material/arrow_back:", on_click=_go,
                  args=(place.previous_id,), disabled=position == 0,
                  shortcut=SHORTCUTS["an-back"])
        st.button("Skip", key="an-skip", icon=":material/arrow_forward:", on_click=_go, args=(next_id,),
                  disabled=next_id is None, shortcut=SHORTCUTS["an-skip"])
        st.caption(f"Image {position + 1} of {place.total} · {md(sample_id)}")
    classes, probs = list(row["top_classes"]), list(row["top_probs"])
    image_col, facts_col = st.columns([3, 2])
    with image_col:
        show_image(str(row["path"]), sample_id)
        cam_slot = st.container()
    with facts_col:
        st.markdown("**Suggestions** (the model's top 5):  \n" + "  \n".join(
            f"{i + 1}\\. {md(c)} · {p:.1%}" for i, (c, p) in enumerate(zip(classes, probs, strict=True))))
        if reviewer is not None:
            common = {"checkpoint": ctx.checkpoint, "next_id": next_id}
            with st.container(horizontal=True, vertical_alignment="center", key="an-actions"):
                st.button(f"Accept {md(classes[0])}", key="an-accept", type="primary", on_click=_act,
                          args=(store, sample_id, "label"), kwargs={**common, "label": classes[0]},
                          shortcut=SHORTCUTS["an-accept"], wrap=True)
                for i, name in enumerate(classes, start=1):
                    st.button(f"{i}: {md(name)}", key=f"an-pick-{i}", on_click=_act,
                              args=(store, sample_id, "label"), kwargs={**common, "label": name},
                              shortcut=SHORTCUTS[f"an-pick-{i}"], wrap=True)
                st.button("Exclude: not usable", key="an-exclude", on_click=_act, args=(store, sample_id, "exclude"),
                          kwargs={**common, "label": None}, shortcut=SHORTCUTS["an-exclude"], wrap=True)
                st.button("Undo my last", key="an-undo", on_click=_undo, args=(store,),
                          shortcut=SHORTCUTS["an-undo"], wrap=True)
            other = st.selectbox("Another class", predictions.class_names, index=None, key=f"an-other-{sample_id}",
                                 placeholder="Another class…")
            if other is not None:
                st.button(f"Label as {md(other)}", key="an-other", on_click=_act, args=(store, sample_id, "label"),
                          kwargs={**common, "label": other})
    _strip(ctx, classes[0], exclude=None)
    names = list(predictions.class_names)
    with cam_slot:
        if st.toggle("Grad-CAM of the suggestion", value=True, key="an-cam"):
            from pages._cam import CamMaps, await_cam_maps, await_cam_module

            await_cam_module()  # torch's first import on its own thread: a key press meanwhile reruns at once
            from models.cam import CamError, render_overlay

            try:
                maps = await_cam_maps(ctx, [sample_id], [str(row["path"])], [names.index(classes[0])],
                                      method="gradcam")
            except (CamError, *USER_ERRORS) as exc:
                st.caption(f"Grad-CAM unavailable: {md(user_message(exc))}")
            else:
                if isinstance(maps[0], CamMaps):
                    st.image(render_overlay(maps[0].view, maps[0].cam, opacity=0.45, display_size=256),
                             caption=f"Grad-CAM · suggested: {md(classes[0])}", width="stretch")
    if next_id is not None and st.session_state.get("an-cam", True):
        following = queue.iloc[position + 1]
        prefetch_cam_maps(ctx, [next_id], [str(following["path"])], [names.index(str(following["suggested"]))],
                          method="gradcam")


def auto_accept_panel(ctx: PageContext, store: LabelStore, pool: Pool, predictions: PoolPredictions) -> None:
    """A lead accepts every queued prediction above its class threshold (chosen on the validation split for a
    target precision) in one recorded event, and can undo any such event."""
    if not may("auto_accept"):
        return
    from pages import _confidence as confidence  # the calibration machinery: only a lead's panel needs it

    with st.expander("Auto-accept confident predictions (lead)"):
        table = get_predictions(ctx.workspace, ctx.checkpoint)
        val = table.for_split("val") if table is not None else None
        if val is None or not len(val):
            st.info("Auto-accept needs predictions on a validation split to choose its thresholds.")
            return
        precision = st.slider("Target precision", 0.80, 0.99, 0.95, 0.01, key="an-precision",
                              help="Per predicted class, the lowest confidence whose validation precision (its lower "
                              "95% bound) reaches this target")
        try:
            # the Calibration page's thresholds (raw confidences), cached in memory and on disk beside the predictions
            frame = confidence.thresholds(table_token(val, "val"), float(precision), 1.0, val).frame
        except USER_ERRORS as exc:
            st.error(md(user_message(exc)))
            return
        labels = pool_label_frame(store, pool)
        plan = plan_auto_accept(predictions, frame, labels, checkpoint=ctx.checkpoint or "",
                                target_precision=float(precision))
        shown = frame[["class", "threshold", "precision_low", "n_predicted"]]
        st.dataframe(shown, hide_index=True, width="stretch")
        st.caption(f"{plan.count:,} of {int((labels['status'] == 'queued').sum()):,} queued images reach their "
                   "class threshold; the rest stay in the queue.")
        if st.button(f"Accept {plan.count:,} predictions in one event", key="an-auto", disabled=not plan.count,
                     type="primary"):
            try:
                event = record_auto_accept(store, plan, actor=current_actor())
            except USER_ERRORS as exc:
                st.error(md(user_message(exc)))
            else:
                st.success(f"auto-accepted {plan.count:,} images (event {event.id})")
                st.rerun()
        bulks = bulk_accepts(store, pool.name)
        if bulks:
            st.caption("Auto-accept events of this pool (also in the audit log)")
            st.dataframe(pd.DataFrame([bulk_summary(b) for b in bulks]), hide_index=True, width="stretch")
            standing = [b for b in bulks if b.undone_by is None]
            if standing:
                chosen = st.selectbox("Undo auto-accept event", [b.event.id for b in standing], key="an-undo-bulk",
                                      format_func=lambda i: f"event {i}")
                if st.button("Undo it: its images return to the queue", key="an-undo-bulk-go"):
                    try:
                        undo_auto_accept(store, int(chosen), actor=current_actor())
                    except USER_ERRORS as exc:
                        st.error(md(user_message(exc)))
                    else:
                        st.rerun()


def render_annotation(ctx: PageContext, store: LabelStore, reviewer: str | None, top_row) -> None:
    """The whole "label new images" queue under the review page's top row; stops the page script."""
    from core.acquisition import ORDERS

    pools = [p.name for p in ctx.workspace.pools]
    if not pools:
        st.info("This workspace lists no unlabelled pool: add a `[[pools]]` table (name, and root = a folder of new "
                "images or manifest = a CSV of their paths) to taxalens.toml.")
        st.stop()
    name = top_row[2].selectbox("Pool", pools, key="an-pool")
    order = top_row[3].selectbox("Order", list(ORDERS), index=list(ORDERS).index(DEFAULT_ORDER)
                                 if DEFAULT_ORDER in ORDERS else 0,
                                 format_func=lambda o: ORDERS[o].label, key="an-order",
                                 help="Which images come first; " + " ".join(f"{o.label}: {o.help}"
                                                                            for o in ORDERS.values()))
    if ctx.checkpoint is None or ctx.ensemble() is not None:
        st.info("Pick a single checkpoint in the sidebar: its predictions are the suggestions.")
        st.stop()
    if st.button("Rescan pool", key="an-rescan", help="Look for images added to the pool since it was opened"):
        _pool.clear()
    try:
        pool = pool_of(ctx, name)
    except USER_ERRORS as exc:
        st.error(md(user_message(exc)))
        st.stop()
    if len(pool.skipped):
        with st.expander(f"{len(pool.skipped):,} file(s) of this pool skipped"):
            st.dataframe(pool.skipped, hide_index=True)
    predictions = pool_predictions(ctx, pool)
    if predictions is None:
        st.info(f"No predictions of **{md(ctx.checkpoint)}** for every image of pool **{md(name)}** yet.")
        if st.button(f"Predict pool {md(name)} with {md(ctx.checkpoint)}", key="an-predict", type="primary"):
            try:
                _predict(ctx, pool)
            except USER_ERRORS as exc:
                st.error(md(user_message(exc)))
                st.stop()
            st.rerun()
        st.stop()
    auto_accept_panel(ctx, store, pool, predictions)
    annotate_view(ctx, store, pool, predictions, order, reviewer)
    st.stop()
