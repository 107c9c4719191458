"""Adjudication and export: reviewer disagreements, agreement per pair and class, a lead's rulings, curated CSVs."""

from __future__ import annotations

import streamlit as st

from core.agreement import (
    DISPUTED_STATUS,
    adjudicate,
    class_agreement,
    list_disagreements,
    reviewer_pair_agreement,
)
from core.errors import USER_ERRORS
from core.export import audit_log_csv, curated_manifest_csv
from core.labelstore import EXCLUDED_VOTE, UNSURE_VOTE
from pages._access import current_actor, explain_hidden, may
from pages._cached import start_page
from pages._gallery import sample_paths, show_image
from pages._review_support import current_reviewer, given_labels, label_store
from pages._text import md

SELECTED, MESSAGE = "adj-selected", "adj-message"


def _select(frame) -> None:
    rows = st.session_state["adj-table"].selection.rows
    if rows:
        st.session_state[SELECTED] = str(frame["sample_id"].iloc[rows[0]])


def _rule(store, sample_id: str, *, reviewer: str, given: str | None) -> None:
    try:
        event = adjudicate(store, sample_id, st.session_state["adj-decision"], reviewer=reviewer, given_label=given,
                           note=st.session_state.get("adj-note", ""), actor=current_actor())
    except USER_ERRORS as exc:
        st.session_state[MESSAGE] = md(exc)
        return
    st.session_state[MESSAGE] = f"ruling recorded: {event.action} {md(event.new_label or '')} (event {event.id})"
    st.session_state["adj-note"] = ""


ctx = start_page("Adjudicate & export")
store = label_store(ctx)
given_of = given_labels(ctx)
lead = current_reviewer("adjudicate", what="Rulings")
if message := st.session_state.pop(MESSAGE, None):
    st.toast(message)

states = store.states(ctx.dataset.samples["sample_id"])
votes = store.votes_frame(ctx.dataset.samples["sample_id"])
st.subheader("Disputes")
unresolved = st.toggle("Only unresolved", value=True, key="adj-unresolved")
disagreements = list_disagreements(states, unresolved_only=unresolved)  # disputes (no ruling yet) first
n_disputed = int((disagreements["status"] == DISPUTED_STATUS).sum())
if n_disputed:
    st.caption(f"{n_disputed:,} dispute(s): reviewers disagree and no lead has ruled. Until a ruling they keep their "
               "original label, are exported as `status=disputed` and are left out of training (the Retrain page "
               "and `python -m cli train --include-disputed` can include them).")
if disagreements.empty:
    st.caption("No disagreements" + (" left to resolve." if unresolved else "."))
else:
    st.dataframe(disagreements, hide_index=True, key="adj-table", on_select=lambda: _select(disagreements),
                 selection_mode="single-row")
    selected = st.session_state.get(SELECTED)
    if selected not in set(disagreements["sample_id"]):
        selected = str(disagreements["sample_id"].iloc[0])
    state = states[selected]
    left, right = st.columns([1, 2])
    path = sample_paths(ctx, [selected])[0]
    with left:
        show_image(path, selected)
    with right:
        st.markdown(f"**Given label:** {md(given_of.get(selected))}  \n**Now:** {state.status} · {md(state.label)}")
        for reviewer, vote in sorted(state.votes.items()):
            st.text(f"{reviewer}: {vote}")  # reviewer names are free text: shown as text, never markdown
        options = sorted(set(ctx.dataset.class_names) | {v for v in state.votes.values() if v != UNSURE_VOTE}
                         | {EXCLUDED_VOTE})
        label_now = state.label or given_of.get(selected)
        if lead is not None:  # only leads (and admins) see the ruling controls
            st.selectbox("Ruling", options, index=options.index(label_now) if label_now in options else 0,
                         key="adj-decision")
            st.text_input("Note (plain text)", key="adj-note")
            st.button("Record ruling", key="adj-rule", type="primary", on_click=_rule, args=(store, selected),
                      kwargs={"reviewer": lead, "given": given_of.get(selected)})
        history = store.events_frame(sample_ids=[selected])
        st.dataframe(history[["id", "created_at", "reviewer", "action", "new_label", "note", "adjudication"]],
                     hide_index=True)

st.subheader("Agreement")
if votes.empty:
    st.caption("No reviews yet.")
else:
    pairs, classes = st.columns(2)
    pairs.markdown("**Per reviewer pair**")
    pairs.dataframe(reviewer_pair_agreement(votes), hide_index=True, key="adj-pairs",
                    column_config={"percent_agreement": st.column_config.NumberColumn(format="percent")})
    classes.markdown("**Per class (dataset label)**")
    classes.dataframe(class_agreement(votes, given_of), hide_index=True, key="adj-classes",
                      column_config={"percent_agreement": st.column_config.NumberColumn(format="percent")})



def workspace_pools(ctx) -> tuple:
    """The workspace's pools (their labelled images join the export), leaving out any that cannot be read."""
    from core.errors import USER_ERRORS
    from pages._annotate import pool_of

    found = []
    for spec in ctx.workspace.pools:
        try:
            found.append(pool_of(ctx, spec.name))
        except USER_ERRORS as exc:
            st.warning(f"Pool {md(spec.name)} is left out of the export: {md(exc)}")
    return tuple(found)


st.subheader("Export")
st.caption("The curated manifest lists every sample with its current label and status (excluded samples are kept "
           "and marked, disputed ones keep their original label); paths are relative to the dataset root "
           f"({md(ctx.dataset.root)}: the image root a training run needs). Spreadsheet formulas are neutralised.")
if may("export"):
    exporter = current_actor()  # core checks the role again
    downloads = st.columns(2)
    downloads[0].download_button("Curated label manifest (CSV)",
                                 data=curated_manifest_csv(ctx.dataset, store, actor=exporter,
                                                           pools=workspace_pools(ctx)),
                                 file_name="curated_labels.csv", mime="text/csv", key="adj-export")
    downloads[1].download_button("Audit log (CSV)", data=audit_log_csv(store, actor=exporter),
                                 file_name="label_audit_log.csv", mime="text/csv", key="adj-audit")
else:
    explain_hidden("export", "Downloads")
