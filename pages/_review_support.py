"""Shared pieces of the review and adjudication pages: the cached label store and ranking, reviewer identity."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.labelstore import LabelStore, validate_reviewer
from core.predictions import PredictionTable
from core.ranking import LabelIssueRanking, rank_label_issues
from pages._cached import PageContext, get_predictions, predictions_key

KEY_REVIEWER = "tl_reviewer"  # session state: who is reviewing (UI state; every action goes to the store)

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
def _open_store(url: str) -> LabelStore:
    return LabelStore(url)


def label_store(ctx: PageContext) -> LabelStore:
    """The workspace's label store, one per URL per server process (it migrates the schema on first open)."""
    return _open_store(ctx.workspace.label_store_url)


@st.cache_resource(show_spinner="Ranking likely label errors…", max_entries=8)
def _ranking(predictions_key: str, split: str, _table: PredictionTable,
             _reference: PredictionTable | None) -> LabelIssueRanking:
    return rank_label_issues(_table, reference=_reference)


def label_issue_ranking(ctx: PageContext, table: PredictionTable) -> LabelIssueRanking:
    """The ranking of the selected split's predictions (recomputed when the predictions file changes); embedding
    neighbours are looked up among the training rows."""
    full = get_predictions(ctx.workspace, ctx.checkpoint)
    reference = full.for_split("train") if full is not None else None
    return _ranking(predictions_key(ctx.workspace, ctx.checkpoint), ctx.split, table, reference)


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
    except ValueError:
        return None


def reviewer_problem() -> str:
    """Why `current_reviewer()` is None."""
    try:
        validate_reviewer(st.session_state.get(KEY_REVIEWER))
    except ValueError as exc:
        return str(exc)
    return ""
