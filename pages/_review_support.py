"""Shared pieces of the review and adjudication pages: the cached label store and ranking, reviewer identity."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.errors import USER_ERRORS, user_message
from core.labelstore import LabelStore, open_label_store, validate_reviewer
from core.predictions import PredictionTable
from core.ranking import LabelIssueRanking, rank_label_issues
from core.workspace import Workspace
from pages._cached import PageContext, get_predictions, predictions_key
from pages._crossval_job import crossval_table
from pages._state import KEY_REVIEWER

# Keys Streamlit's frontend binds itself (static/js, 1.67): c opens "Clear caches", r reruns, Esc stops a
# screencast, and a means "Always rerun" while the "File change" prompt shows. No review shortcut may use them.
STREAMLIT_KEYS = frozenset({"c", "r", "a", "escape"})
# Review button key -> its keyboard shortcut (Streamlit's native `st.button(shortcut=...)`: bound per button while it
# is rendered and enabled, never while the focus is in a text box, and shown on the button).
SHORTCUTS: dict[str, str] = {
    "rv-confirm": "k",  # keep the given label
    "rv-accept": "s",  # the suggestion
    "rv-relabel": "l",  # label as the picked class
    "rv-unsure": "u",
    "rv-exclude": "x",
    "rv-undo": "z",
    "rv-next": "n",
    "rv-prev": "p",
}


@st.cache_resource(show_spinner=False)
def _open_store(url: str, _workspace: Workspace) -> LabelStore:
    return open_label_store(_workspace)


def label_store(ctx: PageContext) -> LabelStore:
    """The workspace's label store, one per URL per server process (it migrates the schema on first open); when it
    cannot be opened (an unknown URL scheme, a server out of reach, a damaged file, a schema newer than this
    TaxaLens), says why and what to do, and stops the page."""
    try:
        return _open_store(ctx.workspace.label_store_url, ctx.workspace)
    except USER_ERRORS as exc:
        st.error(f"Cannot open the label store of {ctx.workspace.root}: {user_message(exc)}")
        st.stop()


@st.cache_resource(show_spinner="Ranking likely label errors…", max_entries=8)
def _ranking(predictions_key: str, split: str, crossval_key: str, _table: PredictionTable,
             _reference: PredictionTable | None, _cv_table: PredictionTable | None) -> LabelIssueRanking:
    return rank_label_issues(_table, reference=_reference, cv_table=_cv_table)


def label_issue_ranking(ctx: PageContext, table: PredictionTable) -> LabelIssueRanking:
    """The ranking of the selected split's predictions (recomputed when the predictions file changes); embedding
    neighbours are looked up among the training rows; training rows are ranked from the cross-validated table."""
    full = get_predictions(ctx.workspace, ctx.checkpoint)
    reference = full.for_split("train") if full is not None else None
    cv_table, cv_key = crossval_table(ctx)
    return _ranking(predictions_key(ctx.workspace, ctx.checkpoint), ctx.split, cv_key, table, reference, cv_table)


@st.cache_resource(show_spinner=False, max_entries=8)
def _given_labels(dataset_id: int, _samples: pd.DataFrame) -> dict[str, str]:
    return dict(zip(_samples["sample_id"], _samples["label"], strict=True))


def given_labels(ctx: PageContext) -> dict[str, str]:
    """sample_id -> the dataset's own label (what `previous_label` starts from)."""
    return _given_labels(id(ctx.dataset), ctx.dataset.samples)


def reviewer_input(*, label: str = "Reviewer") -> str | None:
    """The reviewer identity text box; returns `current_reviewer()`, with a hint when it is missing."""
    st.text_input(label, key=KEY_REVIEWER, placeholder="your name or initials",
                  help="Required to record decisions; every event in the audit log carries it")
    reviewer = current_reviewer()
    if reviewer is None:
        st.warning(reviewer_problem())
    return reviewer


def current_reviewer() -> str | None:
    """Who records decisions in this session (the cleaned identity), or None while there is none. The one place the
    review and adjudication pages learn it: sign-in replaces the text box here."""
    try:
        return validate_reviewer(st.session_state.get(KEY_REVIEWER))
    except USER_ERRORS:
        return None


def reviewer_problem() -> str:
    """Why `current_reviewer()` is None."""
    try:
        validate_reviewer(st.session_state.get(KEY_REVIEWER))
    except USER_ERRORS as exc:
        return str(exc)
    return ""
