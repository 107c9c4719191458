"""Shared pieces of the review and adjudication pages: the cached label store and ranking, the reviewer (the current
actor: the signed-in account, or the local name typed in the sidebar)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from core import conformal
from core.agreement import DISPUTED_STATUS, format_votes, is_disputed
from core.conformal import ConformalCalibration, ConformalConfig
from core.errors import USER_ERRORS, user_message
from core.labelstore import LabelStore, SampleState, open_label_store
from core.predictions import PredictionTable
from core.queries import rows_of_samples
from core.ranking import LabelIssueRanking, typical_examples
from core.review_cache import (
    CALIBRATION_SPLIT,
    has_labelled_calibration_rows,
    set_calibration_token,
    stored_review_ranking,
    stored_set_calibration,
)
from core.workspace import Workspace
from pages._access import current_actor, explain_hidden
from pages._cached import PageContext, dataset_key, get_predictions, predictions_key
from pages._crossval_job import crossval_table
from pages._state import KEY_ACTOR_PROBLEM
from pages._text import md

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
        st.error(f"Cannot open the label store of {md(ctx.workspace.root)}: {md(user_message(exc))}")
        st.stop()


def label_store_or_problem(ctx: PageContext) -> tuple[LabelStore | None, str | None]:
    """The label store, or (None, why it cannot be opened) for a page that still has other things to show."""
    try:
        return _open_store(ctx.workspace.label_store_url, ctx.workspace), None
    except USER_ERRORS as exc:
        return None, user_message(exc)


@st.cache_resource(show_spinner="Ranking likely label errors…", max_entries=8)
def _ranking(predictions_key: str, split: str, crossval_key: str, _table: PredictionTable,
             _full: PredictionTable | None, _cv_table: PredictionTable | None) -> LabelIssueRanking:
    # On disk beside the predictions too (`python -m cli predict --workspace` stores it): a restarted server reads it
    # instead of running cleanlab again. The kNN reference (the training rows: 700,000 at 1M images) is keyed by
    # `core.ranking.reference_token` and sliced only when the ranking is computed, never to read it.
    from pages._evaluation import results_dir

    return stored_review_ranking(results_dir(), _table, _full, split=split, predictions_key=predictions_key,
                                 crossval_key=crossval_key, cv_table=_cv_table)


def label_issue_ranking(ctx: PageContext, table: PredictionTable) -> LabelIssueRanking:
    """The ranking of the selected split's predictions (recomputed when the predictions file changes); embedding
    neighbours are looked up among the training rows; training rows are ranked from the cross-validated table."""
    full = get_predictions(ctx.workspace, ctx.checkpoint)
    cv_table, cv_key = crossval_table(ctx)
    return _ranking(predictions_key(ctx.workspace, ctx.checkpoint), ctx.split, cv_key, table, full, cv_table)


@st.cache_resource(show_spinner="Calibrating prediction sets…", max_entries=8)
def _set_calibration(predictions_key: str, dataset_key: str, table_id: int, checkpoint: str, config: ConformalConfig,
                     _full: PredictionTable) -> ConformalCalibration | None:
    # Keyed as `_split_of` keys a split (file, dataset load, table object): the validation rows' token is computed and
    # the rows sliced (200,000 x 1,000 at 1M images: a second) only on a miss, and then only when not stored on disk.
    from pages._evaluation import results_dir

    if not has_labelled_calibration_rows(_full):
        return None
    return stored_set_calibration(results_dir(), set_calibration_token(_full, checkpoint), config,
                                  lambda: _full.for_split(CALIBRATION_SPLIT))


def sample_prediction_set(ctx: PageContext, table: PredictionTable, sample_id: str) -> tuple[str, ...] | None:
    """The split-conformal prediction set of one sample of `table` (class names, most probable first), calibrated
    on the labelled validation rows with the Calibration page's settings, as `pages._confidence.prediction_sets`
    gives it; None without labelled validation rows or when the sample is not in `table`. Only the shown row's
    probabilities are read: the sets of a million rows are never built for one review."""
    from pages._confidence import conformal_config

    full = ctx.table(split="all")  # the confidences the sidebar chose (calibrated or not), all splits
    if full is None:
        return None
    row = (table.frame["sample_id"] == sample_id).to_numpy(dtype=bool)
    if not row.any():
        return None
    fit = _set_calibration(predictions_key(ctx.workspace, ctx.checkpoint), dataset_key(ctx.dataset), id(full),
                           ctx.checkpoint or "", conformal_config(), full)
    if fit is None:
        return None
    return tuple(conformal.set_frame(table.subset(row), fit)["prediction_set"].iloc[0])


@st.cache_data(show_spinner=False, max_entries=512)
def _typical_ids(predictions_key: str, split: str, rows: int, class_name: str, n: int,
                 _table: PredictionTable) -> list[str]:
    return typical_examples(_table, class_name, n=n)["sample_id"].astype(str).tolist()


def typical_example_ids(ctx: PageContext, table: PredictionTable, class_name: str, *, n: int,
                        exclude: str | None = None) -> list[str]:
    """Ids of up to `n` correctly classified samples of `class_name` in `table` (the selected split of the primary
    checkpoint's predictions), most confident first, leaving out `exclude`; cached per predictions file and split, so
    a move to the next sample does not sort the split again."""
    ids = _typical_ids(predictions_key(ctx.workspace, ctx.checkpoint), ctx.split, len(table), class_name, n + 1,
                       table)
    return [i for i in ids if i != exclude][:n]


def now_line(state: SampleState, given: str) -> str:
    """The review page's "Now:" line (Markdown, user text escaped): the status and the label that stands, the number
    of reviews and their agreement. A dispute (reviewers disagree, no ruling) says so, with every vote: the given
    label stands, not the last reviewer's."""
    if is_disputed(state):
        return (f"**Now:** {DISPUTED_STATUS} · {md(given)} stands until a lead rules · votes: "
                f"{md(format_votes(state))}")
    shown = state.label if state.label is not None else given
    return (f"**Now:** {state.status} · {md(shown)}"
            + (f" · {state.n_reviews} review(s), agreement {state.agreement:.0%}" if state.n_reviews else ""))


@st.cache_resource(show_spinner=False, max_entries=8)
def _given_labels(dataset_key: str, _samples: pd.DataFrame) -> dict[str, str]:
    # object arrays first: iterating a million Arrow-backed strings one by one takes seconds, converting them 0.2 s
    return dict(zip(_samples["sample_id"].to_numpy(dtype=object), _samples["label"].to_numpy(dtype=object),
                    strict=True))


def given_labels(ctx: PageContext) -> dict[str, str]:
    """sample_id -> the dataset's own label (what `previous_label` starts from), every sample (0.7 s to build at a
    million images, once per dataset load): for a page that needs most of them. `given_label` and `review_paths`
    look up the few a page shows."""
    return _given_labels(dataset_key(ctx.dataset), ctx.dataset.samples)


@st.cache_resource(show_spinner=False, max_entries=256)
def _dataset_rows(dataset_key: str, sample_ids: tuple[str, ...], _samples: pd.DataFrame) -> pd.DataFrame:
    return rows_of_samples(_samples, sample_ids, columns=("path", "label"))


def dataset_rows(ctx: PageContext, sample_ids: Sequence[str]) -> pd.DataFrame:
    """`path` and `label` (the dataset's own) of `sample_ids`, indexed by sample id (ids not in the dataset left
    out): one vectorised lookup (`core.queries.rows_of_samples`), cached per dataset load and ids, so a rerun on the
    same sample looks nothing up and no index of a million ids is built for the few a page shows."""
    return _dataset_rows(dataset_key(ctx.dataset), tuple(str(s) for s in sample_ids), ctx.dataset.samples)


def given_label(ctx: PageContext, sample_id: str) -> str | None:
    """The dataset's own label of `sample_id` (what `previous_label` starts from); None when it is not in the
    dataset. The same as `given_labels(ctx).get(sample_id)`, without building the dict."""
    rows = dataset_rows(ctx, [sample_id])
    return str(rows.at[sample_id, "label"]) if sample_id in rows.index else None


def review_paths(ctx: PageContext, sample_ids: Sequence[str]) -> list[str | None]:
    """Absolute image paths of `sample_ids` (None for ids no longer in the dataset), as `pages._gallery.sample_paths`
    gives them, through `dataset_rows`."""
    rows = dataset_rows(ctx, sample_ids)
    return [str(rows.at[s, "path"]) if s in rows.index and isinstance(rows.at[s, "path"], str) else None
            for s in map(str, sample_ids)]


def reviewer_input(*, label: str = "Reviewer") -> str | None:
    """The reviewer: the current actor (signed-in account or the name typed once in the sidebar) when its role may
    record; None, with why, otherwise. `label` is kept for callers; there is no text box on the page any more."""
    return current_reviewer()


def current_reviewer(action: str = "record", *, what: str = "Review buttons") -> str | None:
    """The identity recorded on events (the current actor's name) when its role may do `action`; else None, with a
    caption saying why `what` is hidden."""
    actor = current_actor()
    if actor is not None and actor.may(action):
        return actor.name
    explain_hidden(action, what)
    return None



def reviewer_problem() -> str:
    """Why `current_reviewer()` is None."""
    return str(st.session_state.get(KEY_ACTOR_PROBLEM) or "")



@dataclass(frozen=True)
class QueuePlace:
    """Where a review or annotation queue stands: the shown sample, its neighbours (None at either end), the size."""

    position: int
    sample_id: str
    previous_id: str | None
    next_id: str | None
    total: int


def queue_position(queue: pd.DataFrame, key: str) -> QueuePlace:
    """The place of the sample whose id session key `key` holds (the first when it left the queue), stored back
    under `key`."""
    ids = queue["sample_id"]
    current = st.session_state.get(key)
    # one vectorised comparison, not a list of every id (300,000 at a million images) searched on each rerun
    hits = np.flatnonzero((ids == current).to_numpy(dtype=bool)) if isinstance(current, str) else ()
    position = int(hits[0]) if len(hits) else 0
    st.session_state[key] = sample_id = str(ids.iloc[position])
    return QueuePlace(position, sample_id, str(ids.iloc[position - 1]) if position else None,
                      str(ids.iloc[position + 1]) if position + 1 < len(ids) else None, len(ids))
