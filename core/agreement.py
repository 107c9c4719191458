"""Reviewer agreement: disagreements to adjudicate, percent agreement and Cohen's kappa per reviewer pair and class.

A reviewer's vote on a sample is their latest effective decision (`SampleState.votes`): a class name, `(unsure)` or
`(excluded)`. Adjudications are resolutions, not votes, and are left out of every agreement figure.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from itertools import combinations

import numpy as np
import pandas as pd

from core.access import Actor
from core.labelstore import EXCLUDED_VOTE, UNSURE_VOTE, LabelEvent, LabelStore, SampleState

DISAGREEMENT_COLUMNS = ("sample_id", "votes", "n_reviews", "label", "status", "adjudicated", "decided_by")
PAIR_COLUMNS = ("reviewer_a", "reviewer_b", "n_samples", "percent_agreement", "cohen_kappa")
CLASS_COLUMNS = ("class_name", "n_samples", "n_pairs", "percent_agreement", "cohen_kappa")


DISPUTED_STATUS = "disputed"  # reviewers disagree and no lead has ruled: the given label stands, kept out of training


def has_disagreement(state: SampleState) -> bool:
    """Whether the reviewers' current votes on the sample differ (ruled on or not)."""
    return len(set(state.votes.values())) >= 2


def is_disputed(state: SampleState) -> bool:
    """Reviewers disagree and no adjudication decides the sample: neither vote may silently win."""
    return has_disagreement(state) and not state.adjudicated


def format_votes(state: SampleState) -> str:
    """The reviewers' current votes, sorted by reviewer: `ann: Volvox; bob: (excluded)` ("" without votes)."""
    return "; ".join(f"{reviewer}: {vote}" for reviewer, vote in sorted(state.votes.items()))


def list_disagreements(states: Mapping[str, SampleState], *, unresolved_only: bool = False) -> pd.DataFrame:
    """Samples whose reviewers voted differently (DISAGREEMENT_COLUMNS): disputes (no ruling yet) first, then by
    number of reviewers.

    `votes` reads `ann: Volvox; bob: (excluded)`. `adjudicated` says whether a lead's ruling already decides it;
    `status` is `disputed` (and `label` None: the given label stands) until it does.
    """
    rows = []
    for state in states.values():
        if not has_disagreement(state) or (unresolved_only and state.adjudicated):
            continue
        disputed = is_disputed(state)
        rows.append({
            "sample_id": state.sample_id,
            "votes": format_votes(state),
            "n_reviews": state.n_reviews,
            "label": None if disputed else state.label,
            "status": DISPUTED_STATUS if disputed else state.status,
            "adjudicated": state.adjudicated,
            "decided_by": state.decided_by,
        })
    frame = pd.DataFrame(rows, columns=list(DISAGREEMENT_COLUMNS))
    return frame.sort_values(["adjudicated", "n_reviews", "sample_id"], ascending=[True, False, True],
                             ignore_index=True)


def reviewer_pair_agreement(votes: pd.DataFrame) -> pd.DataFrame:
    """Per pair of reviewers with shared samples: how often they agree and Cohen's kappa (PAIR_COLUMNS).

    `votes`: columns sample_id, reviewer, vote (`LabelStore.votes_frame()`). Kappa is NaN when undefined (e.g.
    both reviewers always gave the same single answer).
    """
    _check_votes(votes)
    wide = votes.pivot(index="sample_id", columns="reviewer", values="vote")
    rows = []
    for a, b in combinations(sorted(wide.columns), 2):
        both = wide[[a, b]].dropna()
        if both.empty:
            continue
        rows.append((a, b, len(both), float((both[a] == both[b]).mean()), _kappa(both[a], both[b])))
    return pd.DataFrame(rows, columns=list(PAIR_COLUMNS))


def class_agreement(votes: pd.DataFrame, class_of: Mapping[str, str]) -> pd.DataFrame:
    """Agreement among reviewers on the samples of each class (CLASS_COLUMNS), over every pair of votes.

    `class_of`: sample_id -> the class the sample is grouped under (usually its dataset label). Only samples with at
    least two votes count. Kappa pools the vote pairs of the class (reviewers in name order).
    """
    _check_votes(votes)
    pairs: dict[str, list[tuple[str, str]]] = {}
    samples: dict[str, int] = {}
    for sample_id, group in votes.sort_values("reviewer").groupby("sample_id", sort=True):
        if len(group) < 2 or sample_id not in class_of:
            continue
        name = class_of[sample_id]
        samples[name] = samples.get(name, 0) + 1
        pairs.setdefault(name, []).extend(combinations(group["vote"].tolist(), 2))
    rows = []
    for name in sorted(pairs):
        first, second = zip(*pairs[name], strict=True)
        agree = np.mean([x == y for x, y in pairs[name]])
        rows.append((name, samples[name], len(pairs[name]), float(agree), _kappa(pd.Series(first),
                                                                                   pd.Series(second))))
    return pd.DataFrame(rows, columns=list(CLASS_COLUMNS))


def adjudicate(store: LabelStore, sample_id: str, decision: str, *, reviewer: str | None = None,
               given_label: str | None = None, note: str = "", checkpoint: str | None = None,
               actor: Actor | None = None) -> LabelEvent:
    """Record a lead's ruling on a sample as an adjudication event (which then decides the sample).

    `decision`: the class to keep, or `(excluded)` to exclude the image. A ruling equal to `given_label` is stored
    as `confirm`, any other class as `relabel`. `actor`: who rules (needs the `adjudicate` permission; recorded as
    the reviewer); None for a trusted caller, which names the `reviewer`.
    """
    if decision == UNSURE_VOTE:
        raise ValueError("an adjudication decides: pick a class or (excluded); leave the sample unadjudicated "
                         "when unsure")
    if decision == EXCLUDED_VOTE:
        return store.record(sample_id, "exclude", reviewer=reviewer, given_label=given_label, note=note,
                            checkpoint=checkpoint, adjudication=True, actor=actor)
    action = "confirm" if decision == given_label else "relabel"
    return store.record(sample_id, action, reviewer=reviewer, label=decision, given_label=given_label, note=note,
                        checkpoint=checkpoint, adjudication=True, actor=actor)


def _check_votes(votes: pd.DataFrame) -> None:
    missing = {"sample_id", "reviewer", "vote"} - set(votes.columns)
    if missing:
        raise ValueError(f"votes need columns sample_id, reviewer, vote; missing {sorted(missing)} "
                         "(use LabelStore.votes_frame())")


def _kappa(first: pd.Series, second: pd.Series) -> float:
    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)  # single-answer pairs: kappa is undefined, NaN says so
        return float(cohen_kappa_score(first.to_numpy(dtype=str), second.to_numpy(dtype=str),
                                       replace_undefined_by=np.nan))
