"""Shared pieces of the review and adjudication pages: the cached label store and ranking, reviewer identity."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.errors import USER_ERRORS
from core.labelstore import LabelStore, validate_reviewer
from core.predictions import PredictionTable
from core.ranking import LabelIssueRanking, rank_label_issues
from pages._cached import PageContext, get_predictions, predictions_key
from pages._state import KEY_REVIEWER


@st.cache_resource(show_spinner=False)
def _open_store(url: str) -> LabelStore:
    return LabelStore(url)


def label_store(ctx: PageContext) -> LabelStore:
    """The workspace's label store, one per URL per server process (it migrates the schema on first open); when it
    cannot be opened (an unknown URL scheme, a schema newer than this TaxaLens), says why and stops the page."""
    try:
        return _open_store(ctx.workspace.label_store_url)
    except USER_ERRORS as exc:
        st.error(f"Cannot open the label store of {ctx.workspace.root}: {exc}")
        st.stop()


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
    """The reviewer identity text box; returns the cleaned identity, or None (with a hint) when it is missing."""
    st.text_input(label, key=KEY_REVIEWER, placeholder="your name or initials",
                  help="Required to record decisions; every event in the audit log carries it")
    try:
        return validate_reviewer(st.session_state.get(KEY_REVIEWER))
    except USER_ERRORS as exc:
        st.warning(str(exc))
        return None
