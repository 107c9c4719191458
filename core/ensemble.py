"""Ensembles of checkpoints from their prediction tables: mean probability or per-class validation-F1 weighting.

The result is a `PredictionTable`, so an ensemble is evaluated, compared and browsed like any single checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from core.predictions import PredictionTable, build_prediction_table
from core.workspace import CONFIG_NAME, Workspace, toml_string, update_workspace_config, validate_entry_name

if TYPE_CHECKING:
    from core.access import Actor

logger = logging.getLogger(__name__)

Method = Literal["mean", "f1_weighted"]


@dataclass(frozen=True)
class EnsembleSpec:
    """A named ensemble of workspace checkpoints."""

    name: str  # shown wherever a checkpoint name is
    members: tuple[str, ...]  # checkpoint names, at least two
    method: Method = "mean"  # "mean" probability or "f1_weighted" per class
    weights_split: str = "val"  # split whose per-class F1 sets the weights of "f1_weighted"


def read_ensemble_specs(workspace: Workspace) -> tuple[EnsembleSpec, ...]:
    """The `[[ensembles]]` tables of the workspace's `taxalens.toml` (name, members, method, weights_split).

    Raises `ValueError` for an entry without a name, with fewer than two members, or naming an unknown checkpoint.
    """
    known = {c.name for c in workspace.checkpoints}
    specs = []
    for i, entry in enumerate(workspace.extras.get("ensembles") or []):
        name, members = entry.get("name"), tuple(entry.get("members") or ())
        if not name or len(members) < 2:
            raise ValueError(f"{workspace.root / CONFIG_NAME}: ensembles[{i}] needs `name` and at least two "
                             f"`members`, got name={name!r}, members={list(members)}")
        unknown = [m for m in members if m not in known]
        if unknown:
            raise ValueError(f"ensemble {name!r} names unknown checkpoint(s) {unknown}; known: {sorted(known)}")
        method = entry.get("method", "mean")
        if method not in ("mean", "f1_weighted"):
            raise ValueError(f"ensemble {name!r}: method must be 'mean' or 'f1_weighted', got {method!r}")
        specs.append(EnsembleSpec(str(name), members, method, str(entry.get("weights_split", "val"))))
    return tuple(specs)


def add_ensemble(workspace_root: str | Path, spec: EnsembleSpec, *, actor: Actor | None = None) -> None:
    """Append `spec` as an `[[ensembles]]` table to the workspace's `taxalens.toml` (atomically, under its lock).

    `actor`: who asks (needs the `edit_workspace` permission); None for a trusted caller (the command line, tests).
    """
    if actor is not None:
        actor.require("edit_workspace")
    name = validate_entry_name(spec.name, kind="ensemble")
    if len(spec.members) < 2:
        raise ValueError(f"an ensemble needs at least two members, got {list(spec.members)}")
    if spec.method not in ("mean", "f1_weighted"):
        raise ValueError(f"ensemble {name!r}: method must be 'mean' or 'f1_weighted', got {spec.method!r}")

    def _append(text: str, workspace: Workspace) -> str:
        taken = {c.name for c in workspace.checkpoints} | {e.name for e in read_ensemble_specs(workspace)}
        if name in taken:
            raise ValueError(f"the workspace already has a checkpoint or ensemble named {name!r}")
        unknown = [m for m in spec.members if m not in {c.name for c in workspace.checkpoints}]
        if unknown:
            raise ValueError(f"ensemble {name!r} names unknown checkpoint(s) {unknown}; known: "
                             f"{sorted(c.name for c in workspace.checkpoints)}")
        members = ", ".join(toml_string(m) for m in spec.members)
        entry = (f"\n[[ensembles]]\nname = {toml_string(name)}\nmembers = [{members}]\n"
                 f"method = {toml_string(spec.method)}\nweights_split = {toml_string(spec.weights_split)}\n")
        return text.rstrip("\n") + "\n" + entry

    update_workspace_config(workspace_root, _append, check=read_ensemble_specs)


def class_weights_from_f1(tables: Sequence[PredictionTable], class_names: Sequence[str], *,
                          split: str = "val") -> np.ndarray:
    """`(M, K)` weights: model m's F1 on class k over the rows of `split`, 0 where m lacks class k.

    A class no model scores above 0 on (or that `split` lacks) falls back to equal weights among the models
    that have it, so every class stays predictable.
    """
    from core.scores import ClassCounts, class_scores  # scipy: imported when an ensemble is combined, not to list one

    index = {name: i for i, name in enumerate(class_names)}
    has_class = _membership(tables, class_names)
    weights = np.zeros((len(tables), len(class_names)), dtype=np.float64)
    for m, table in enumerate(tables):
        part = table.for_split(split)
        y = part.frame["label"].map(index).fillna(-1).to_numpy(dtype=np.int64)
        pred = part.frame["pred"].map(index).fillna(-1).to_numpy(dtype=np.int64)
        f1 = class_scores(ClassCounts.from_labels(y, pred, len(class_names)))["f1"]
        weights[m] = np.where(has_class[m] > 0, f1, 0.0)
    empty = weights.sum(axis=0) == 0
    weights[:, empty] = has_class[:, empty]
    return weights


def ensemble_tables(
    tables: Sequence[PredictionTable],
    *,
    method: Method = "mean",
    weights_split: str = "val",
    name: str = "ensemble",
    member_names: Sequence[str] | None = None,
) -> PredictionTable:
    """Combine member tables (same dataset, matched by `sample_id`) into one table.

    `mean`: the average of the members' probability vectors. `f1_weighted`: for each class k, the average of the
    members' probabilities for k weighted by each member's F1 on k over `weights_split` (`class_weights_from_f1`);
    rows are renormalised to sum to 1. Members may have different class lists: the ensemble's classes are their
    union (first member's order first) and a member only votes on classes it has. Rows are the samples every member
    predicted, in the first member's order; labels, splits and specimens come from the first member; embeddings too
    (a concatenation would multiply memory by the member count). Weights learned on `weights_split` make scores on
    that split optimistic; `meta["ensemble"]["weights_split"]` records it so pages can say so.
    """
    if len(tables) < 2:
        raise ValueError(f"an ensemble needs at least two prediction tables, got {len(tables)}")
    if method not in ("mean", "f1_weighted"):
        raise ValueError(f"method must be 'mean' or 'f1_weighted', got {method!r}")
    names = list(member_names) if member_names is not None else [
        str(t.meta.get("checkpoint") or t.meta.get("checkpoint_name") or f"member{i}") for i, t in enumerate(tables)]
    if len(names) != len(tables):
        raise ValueError(f"{len(names)} member names for {len(tables)} tables")
    class_names: list[str] = []
    for table in tables:
        class_names += [c for c in table.class_names if c not in class_names]
    common = _common_ids(tables)
    if not common:
        raise ValueError("the member tables share no sample; ensemble checkpoints predicted on the same dataset")
    first = tables[0]
    order = first.frame["sample_id"].isin(common).to_numpy()
    sample_ids = first.frame["sample_id"].to_numpy()[order]

    if method == "mean":
        weights = _membership(tables, class_names)
    else:
        weights = class_weights_from_f1(tables, class_names, split=weights_split)
    total = np.zeros((len(sample_ids), len(class_names)), dtype=np.float64)
    for m, table in enumerate(tables):
        rows = pd.Index(table.frame["sample_id"]).get_indexer(sample_ids)
        columns = [class_names.index(c) for c in table.class_names]
        total[:, columns] += table.pred_probs[rows].astype(np.float64) * weights[m, columns]
    weight_sum = weights.sum(axis=0)
    probs = total / np.where(weight_sum > 0, weight_sum, 1.0)
    probs /= np.clip(probs.sum(axis=1, keepdims=True), 1e-12, None)

    frame = first.frame[order]
    meta = {
        "checkpoint": name,
        "ensemble": {"members": names, "method": method, "weights_split": weights_split if method != "mean" else None,
                     "class_weights": {c: weights[:, k].round(4).tolist() for k, c in enumerate(class_names)},
                     "member_sha256": [t.meta.get("checkpoint_sha256") or t.meta.get("sha256") for t in tables]},
        "dataset_fingerprint": first.meta.get("dataset_fingerprint"),
    }
    return build_prediction_table(
        sample_ids.tolist(),
        probs.astype(np.float32),
        first.embeddings[order],
        labels=frame["label"].tolist(),
        splits=frame["split"].tolist(),
        specimen_ids=frame["specimen_id"].tolist(),
        class_names=tuple(class_names),
        meta=meta,
    )


def _membership(tables: Sequence[PredictionTable], class_names: Sequence[str]) -> np.ndarray:
    return np.array([[1.0 if c in table.class_names else 0.0 for c in class_names] for table in tables])


def _common_ids(tables: Sequence[PredictionTable]) -> set[str]:
    common = set(tables[0].frame["sample_id"])
    for table in tables[1:]:
        common &= set(table.frame["sample_id"])
    return common
