"""Curated labels on a predictions table: the review events' labels applied, excluded rows removed, disputed apart.

The evaluation pages show a checkpoint's scores under the dataset's labels ("as given") or under the labels the
label store says now ("as curated"). The curated view follows the export (`core.export`): a decided label replaces
the given one, `excluded` samples leave the data, and samples whose reviewers disagree with no ruling (`disputed`)
are neither scored under the given nor under a reviewer's label but listed apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from core.agreement import is_disputed
from core.labelstore import SampleState
from core.modes import LABEL_MODES  # noqa: F401 (re-exported: the switch's names live in core.modes)
from core.predictions import PredictionTable, build_prediction_table

if TYPE_CHECKING:  # the headline metrics API (core.metrics today); only its estimates' fields are read here
    from core.metrics import HeadlineMetrics


@dataclass(frozen=True)
class CuratedLabels:
    """What the label store says about the samples that have events."""

    labels: Mapping[str, str]  # sample_id -> label a reviewer or a lead decided (confirmed or relabelled)
    excluded: frozenset[str]  # samples taken out of the data (status excluded)
    disputed: frozenset[str]  # reviewers disagree and no lead has ruled


@dataclass(frozen=True)
class CuratedTable:
    """A predictions table under curated labels."""

    table: PredictionTable  # relabels applied; excluded and disputed rows removed
    disputed: PredictionTable  # the disputed rows, with their given labels
    n_relabeled: int  # rows of `table` whose label differs from the given one
    n_excluded: int  # rows removed because a reviewer excluded them


def curated_labels(states: Mapping[str, SampleState]) -> CuratedLabels:
    """Collect decided labels, exclusions and disputes from `LabelStore.states()`."""
    labels: dict[str, str] = {}
    excluded: set[str] = set()
    disputed: set[str] = set()
    for sample_id, state in states.items():
        if is_disputed(state):
            disputed.add(sample_id)
        elif state.status == "excluded":
            excluded.add(sample_id)
        elif state.label is not None:
            labels[sample_id] = state.label
    return CuratedLabels(labels=labels, excluded=frozenset(excluded), disputed=frozenset(disputed))


def apply_curated_labels(table: PredictionTable, curated: CuratedLabels) -> CuratedTable:
    """`table` under `curated` labels: `label`, `label_idx` and `loss` follow the decided labels (a label the model
    does not know gets `label_idx` -1, as for the given labels); predictions and probabilities are unchanged."""
    ids = table.frame["sample_id"].astype(str).to_numpy()
    excluded = [s in curated.excluded for s in ids]
    disputed = [s in curated.disputed for s in ids]
    keep = [not (e or d) for e, d in zip(excluded, disputed, strict=True)]
    kept = table.subset(keep)
    given = kept.frame["label"].tolist()
    labels = [curated.labels.get(s, g) for s, g in zip(kept.frame["sample_id"], given, strict=True)]
    relabeled = build_prediction_table(
        kept.frame["sample_id"].tolist(), kept.pred_probs, kept.embeddings, labels=labels,
        splits=kept.frame["split"].tolist(), specimen_ids=kept.frame["specimen_id"].tolist(),
        class_names=kept.class_names, meta=kept.meta,
    )
    return CuratedTable(
        table=relabeled,
        disputed=table.subset(disputed),
        n_relabeled=sum(a != b for a, b in zip(labels, given, strict=True)),
        n_excluded=sum(excluded),
    )


LABEL_MODE_COLUMNS = ("metric", "label", "given", "given_low", "given_high", "curated", "curated_low", "curated_high",
                      "delta")


def compare_label_modes(given: HeadlineMetrics, curated: HeadlineMetrics) -> pd.DataFrame:
    """One row per headline metric (LABEL_MODE_COLUMNS): its value and bootstrap interval as given and as curated, and
    `delta` = curated - given (NaN where either is undefined).

    `given`, `curated`: the `compute_headline_metrics` results of one split under the two label modes.
    """
    rows = []
    curated_of = {e.name: e for e in curated.estimates}
    for estimate in given.estimates:
        other = curated_of.get(estimate.name)
        value = other.value if other is not None else None
        delta = None if value is None or estimate.value is None else value - estimate.value
        rows.append((estimate.name, estimate.label, estimate.value, estimate.low, estimate.high, value,
                     None if other is None else other.low, None if other is None else other.high, delta))
    return pd.DataFrame(rows, columns=list(LABEL_MODE_COLUMNS)).astype(
        {c: "float64" for c in LABEL_MODE_COLUMNS[2:]})
