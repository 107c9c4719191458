"""Unlabelled pools (`[[pools]]`): new images validated like a dataset, what the label store says of each (labelled
by hand, auto-accepted in one bulk event, excluded, still to label), the annotation queue and bulk auto-accept.

A pool image's sample id is `pool:<pool name>/<path relative to the pool root>` (`core.dataset.pool_sample_id`), so
its events share the label store with the dataset's without colliding. Hand decisions are ordinary events (action
`label`, or `exclude`); an auto-accept is ONE event (action `auto_accept`) on the pool's own id `pool:<name>` whose
note holds the threshold table, the count and every accepted image with its label (so the hash chain covers them).
Undoing that event (an ordinary `undo` naming it) returns its images to the queue. A hand decision always wins over
an auto-accept.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from core.access import Actor
from core.dataset import (
    POOL_ID_PREFIX,
    DatasetError,
    Verify,
    check_image_files,
    list_image_files,
    pool_sample_id,
    read_manifest_table,
)
from core.labelstore import LabelEvent, LabelStore, NewEvent
from core.workspace import PoolSpec, Workspace

logger = logging.getLogger(__name__)

NEW_STATUS = "new"  # a labelled pool image, in the curated export and the pool's label frame
QUEUED_STATUS = "queued"  # a pool image nobody has labelled yet (still in the annotation queue)
EXCLUDED = "excluded"
SOURCE_MANUAL, SOURCE_AUTO = "manual", "auto"  # who set a pool image's label: a person, or a bulk auto-accept
POOL_LABEL_COLUMNS = ("sample_id", "label", "status", "source", "reviewer", "updated_at", "event_id")
AUTO_ACCEPT_KIND = "taxalens-auto-accept/1"  # the `kind` of an auto_accept event's note (JSON)
_DECIDED = {"labelled": NEW_STATUS, "confirmed": NEW_STATUS, "relabeled": NEW_STATUS, "excluded": EXCLUDED}


class PoolError(DatasetError):
    """A pool that cannot be used as given (no images, a CSV without `path`, ...); the message says the fix."""


@dataclass(frozen=True)
class Pool:
    """A validated pool. `samples` has one row per usable image."""

    spec: PoolSpec
    samples: pd.DataFrame  # sample_id (pool id), path (absolute), relpath (under the pool root), pool
    skipped: pd.DataFrame  # sample_id (relative path), reason, detail

    @property
    def name(self) -> str:
        return self.spec.name

    def __len__(self) -> int:
        return len(self.samples)


def load_pool(workspace: Workspace, name: str, *, verify: Verify = "header") -> Pool:
    """The pool `name` of `workspace`, its images checked as a dataset's are (through its own image index, so a
    reopen opens only new or changed files): paths escaping the pool root are refused (PoolError), missing,
    corrupt and non-image files go to `Pool.skipped`."""
    spec = workspace.pool(name)
    if not spec.source.exists():
        raise PoolError(f"pool {name!r}: {spec.source} does not exist; fix `root`/`manifest` of this [[pools]] "
                        f"entry in {workspace.root / 'taxalens.toml'}")
    if spec.is_manifest:
        frame = read_manifest_table(spec.source)
        if "path" not in frame.columns:
            raise PoolError(f"pool {name!r}: {spec.source} has no `path` column (found {list(frame.columns)}); a pool "
                            "CSV lists one image path per row, relative to the pool's `root` (default: the CSV's "
                            "folder)")
        relative, listed_skips = [p for p in frame["path"].tolist() if p], pd.DataFrame(
            columns=["sample_id", "reason", "detail"])
    else:
        relative, listed_skips = list_image_files(spec.source)
    try:
        usable, skipped = check_image_files(spec.root, relative, verify=verify,
                                            index=workspace.pool_index_path(name))
    except DatasetError as exc:
        raise PoolError(f"pool {name!r}: {exc}") from exc
    skipped = pd.concat([listed_skips, skipped], ignore_index=True) if len(listed_skips) else skipped
    samples = pd.DataFrame({"sample_id": [pool_sample_id(name, r) for r in usable["sample_id"]],
                            "path": usable["path"].to_numpy(), "relpath": usable["sample_id"].to_numpy(),
                            "pool": name})
    if len(skipped):
        logger.warning("pool %s: %d file(s) skipped: %s", name, len(skipped),
                       skipped["reason"].value_counts().to_dict())
    return Pool(spec=spec, samples=samples, skipped=skipped.reset_index(drop=True))


def load_pools(workspace: Workspace, *, verify: Verify = "header") -> tuple[Pool, ...]:
    """Every pool of the workspace, in the order listed."""
    return tuple(load_pool(workspace, spec.name, verify=verify) for spec in workspace.pools)


def pool_roots(workspace: Workspace) -> dict[str, Path]:
    """Pool name -> its root folder: what `core.dataset.load_dataset(pool_roots=...)` needs for a curated export
    that holds labelled pool images."""
    return {spec.name: spec.root for spec in workspace.pools}


@dataclass(frozen=True)
class PoolPredictions:
    """One checkpoint's outputs on the decodable images of one pool, in the pool's order."""

    pool: str  # the pool's name
    sample_ids: np.ndarray  # (N,) object: pool sample ids
    paths: np.ndarray  # (N,) object: absolute image paths
    pred_probs: np.ndarray  # (N, K) float32
    embeddings: np.ndarray  # (N, D) float32 (D may be 0)
    class_names: tuple[str, ...]  # output order of `pred_probs`
    failed: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["sample_id", "reason", "detail"]))

    def __len__(self) -> int:
        return len(self.sample_ids)

    def top_k(self, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """`(classes (N, k) int, probabilities (N, k))`, most probable first (k capped at the number of classes)."""
        k = min(k, self.pred_probs.shape[1])
        order = np.argsort(-self.pred_probs, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(self.pred_probs, order, axis=1)


# ------------------------------------------------------------------------------------------------ label state


def bulk_sample_id(pool_name: str) -> str:
    """The id the pool's bulk events are recorded on (`pool:<name>`: no `/`, so never an image's id)."""
    return f"{POOL_ID_PREFIX}{pool_name}"


@dataclass(frozen=True)
class BulkAccept:
    """One recorded auto-accept event, read back from the label store."""

    event: LabelEvent  # the `auto_accept` event
    accepted: dict[str, str]  # pool sample id -> label it accepted
    thresholds: dict[str, float | None]  # class -> confidence threshold (None: never accepted)
    target_precision: float  # the precision the thresholds were chosen for
    undone_by: int | None  # id of the undo event that reverted it, None while it stands


def bulk_accepts(store: LabelStore, pool_name: str) -> list[BulkAccept]:
    """The pool's auto-accept events, oldest first, each with what it accepted and whether it was undone."""
    events = store.events(sample_ids=[bulk_sample_id(pool_name)])
    undone = {e.reverts_id: e.id for e in events if e.action == "undo"}
    found = []
    for event in events:
        if event.action != "auto_accept":
            continue
        content = json.loads(event.note)
        found.append(BulkAccept(event, dict(content["accepted"]), dict(content["thresholds"]),
                                float(content["target_precision"]), undone.get(event.id)))
    return found


def pool_label_frame(store: LabelStore, pool: Pool) -> pd.DataFrame:
    """What the label store says of each pool image (`POOL_LABEL_COLUMNS`, in the pool's order): status `new`
    (labelled, `source` manual or auto), `excluded`, or `queued` (still to label). A person's effective decision
    wins over an auto-accept; an undone auto-accept accepts nothing."""
    ids = pool.samples["sample_id"].tolist()
    states = store.states(ids)
    auto: dict[str, tuple[str, LabelEvent]] = {}
    for bulk in bulk_accepts(store, pool.name):
        if bulk.undone_by is None:
            for sample_id, label in bulk.accepted.items():
                auto[sample_id] = (label, bulk.event)
    rows = []
    for sample_id in ids:
        state = states.get(sample_id)
        status = _DECIDED.get(state.status) if state is not None else None
        if status is not None:
            rows.append((sample_id, state.label if status == NEW_STATUS else None, status, SOURCE_MANUAL,
                         state.decided_by or "", state.updated_at, None))
        elif sample_id in auto:
            label, event = auto[sample_id]
            rows.append((sample_id, label, NEW_STATUS, SOURCE_AUTO, event.reviewer, event.created_at, event.id))
        else:
            rows.append((sample_id, None, QUEUED_STATUS, "", "", None, None))
    frame = pd.DataFrame(rows, columns=list(POOL_LABEL_COLUMNS))
    frame["event_id"] = frame["event_id"].astype("Int64")
    return frame


@dataclass(frozen=True)
class PoolCounts:
    """The landing page's numbers for one pool."""

    images: int  # usable images
    labelled: int  # labelled by a person
    auto_accepted: int  # labelled by a standing auto-accept
    excluded: int  # taken out by a person
    remaining: int  # still to label
    skipped: int  # files that are not usable images


def pool_counts(pool: Pool, labels: pd.DataFrame) -> PoolCounts:
    """Counts of `pool` under its label frame `labels` (`pool_label_frame`)."""
    new = labels["status"] == NEW_STATUS
    return PoolCounts(images=len(pool), labelled=int((new & (labels["source"] == SOURCE_MANUAL)).sum()),
                      auto_accepted=int((new & (labels["source"] == SOURCE_AUTO)).sum()),
                      excluded=int((labels["status"] == EXCLUDED).sum()),
                      remaining=int((labels["status"] == QUEUED_STATUS).sum()), skipped=len(pool.skipped))


# ------------------------------------------------------------------------------------------------ auto-accept


@dataclass(frozen=True)
class AutoAcceptPlan:
    """What one auto-accept would record: every queued pool image whose confidence reaches its predicted class's
    threshold, with that class."""

    pool: str
    checkpoint: str  # whose predictions were accepted
    target_precision: float
    thresholds: dict[str, float | None]  # class -> threshold (None: the class never reaches the target)
    accepted: dict[str, str]  # pool sample id -> accepted label

    @property
    def count(self) -> int:
        return len(self.accepted)

    def note(self) -> str:
        """The event's note: this plan as JSON (the audit log keeps it verbatim, under the hash chain)."""
        return json.dumps({"kind": AUTO_ACCEPT_KIND, "pool": self.pool, "checkpoint": self.checkpoint,
                           "target_precision": self.target_precision, "count": self.count,
                           "thresholds": self.thresholds, "accepted": self.accepted}, sort_keys=True,
                          separators=(",", ":"))


def plan_auto_accept(predictions: PoolPredictions, thresholds: pd.DataFrame, labels: pd.DataFrame, *,
                     checkpoint: str, target_precision: float) -> AutoAcceptPlan:
    """The auto-accept of the queued images of `predictions` under per-class `thresholds` (a frame with `class`
    and `threshold` columns, NaN where a class never reaches the target: `core.thresholds.auto_accept_thresholds`).

    `labels`: the pool's label frame (`pool_label_frame`); only `queued` images are accepted. An image is accepted
    when its top probability is >= the threshold of its top class.
    """
    table = {str(c): (None if t is None or (isinstance(t, float) and math.isnan(t)) else float(t))
             for c, t in zip(thresholds["class"], thresholds["threshold"], strict=True)}
    names = np.asarray(predictions.class_names, dtype=object)
    queued = set(labels.loc[labels["status"] == QUEUED_STATUS, "sample_id"])
    accepted = {}
    if len(predictions):
        top = predictions.pred_probs.argmax(axis=1)
        confidence = predictions.pred_probs[np.arange(len(top)), top]
        for sample_id, cls, conf in zip(predictions.sample_ids, names[top], confidence, strict=True):
            threshold = table.get(str(cls))
            if sample_id in queued and threshold is not None and conf >= threshold:
                accepted[str(sample_id)] = str(cls)
    return AutoAcceptPlan(pool=predictions.pool, checkpoint=checkpoint, target_precision=float(target_precision),
                          thresholds=table, accepted=accepted)


def record_auto_accept(store: LabelStore, plan: AutoAcceptPlan, *, reviewer: str | None = None,
                       actor: Actor | None = None) -> LabelEvent:
    """Record `plan` as ONE `auto_accept` event (needs the `auto_accept` permission: a lead); ValueError when it
    accepts nothing."""
    if not plan.accepted:
        raise ValueError(f"nothing to auto-accept in pool {plan.pool!r}: no queued image reaches its class threshold "
                         f"at precision {plan.target_precision:.0%}; lower the target or label by hand")
    event = store.record_many([NewEvent(bulk_sample_id(plan.pool), "auto_accept", reviewer, note=plan.note(),
                                        checkpoint=plan.checkpoint)], actor=actor)[0]
    logger.info("auto-accepted %d image(s) of pool %s (event %d)", plan.count, plan.pool, event.id)
    return event


def undo_auto_accept(store: LabelStore, event_id: int, *, reviewer: str | None = None, note: str = "",
                     actor: Actor | None = None) -> LabelEvent:
    """Revert one auto-accept event: its images return to the queue (a lead may undo another lead's)."""
    return store.undo_event(event_id, reviewer=reviewer, note=note, actor=actor)


def bulk_summary(bulk: BulkAccept) -> dict[str, object]:
    """One audit-log line of an auto-accept: id, who, when, how many, the target and the thresholds."""
    shown = ", ".join(f"{c} ≥ {t:.3f}" for c, t in sorted(bulk.thresholds.items()) if t is not None) or "(none)"
    return {"event": bulk.event.id, "by": bulk.event.reviewer, "at": bulk.event.created_at,
            "accepted": len(bulk.accepted), "target precision": bulk.target_precision, "thresholds": shown,
            "undone by event": bulk.undone_by}


# ----------------------------------------------------------------------------------------------------- queue


def labelled_class_counts(class_names: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """`(K,)` int: how many of `labels` (the labelled set: dataset labels and labelled pool images) each class has."""
    counts = pd.Series(list(labels), dtype=object).value_counts()
    return np.array([int(counts.get(c, 0)) for c in class_names], dtype=np.int64)


def annotation_queue(predictions: PoolPredictions, labels: pd.DataFrame, *, order: str = "margin",
                     labelled_counts: np.ndarray | None = None, novelty: np.ndarray | None = None,
                     labelled_embeddings: np.ndarray | None = None, seed: int = 0, k: int = 5) -> pd.DataFrame:
    """The queued images of the pool, best first by acquisition `order` (`core.acquisition.ORDERS`), with the
    model's top-`k` suggestion: `sample_id, path, rank, suggested, suggested_prob, top_classes, top_probs`.

    The order is computed over the queued images only, so labelled ones never steer it.
    """
    from core.acquisition import PoolView, rank_pool

    columns = ["sample_id", "path", "rank", "suggested", "suggested_prob", "top_classes", "top_probs"]
    queued = labels.loc[labels["status"] == QUEUED_STATUS, "sample_id"]
    rows = np.flatnonzero(pd.Index(predictions.sample_ids).isin(queued))
    if not len(rows):
        return pd.DataFrame(columns=columns)
    k_classes = predictions.pred_probs.shape[1]
    embeddings = predictions.embeddings[rows] if predictions.embeddings.shape[1] else None
    view = PoolView(probs=predictions.pred_probs[rows], embeddings=embeddings,
                    labelled_counts=labelled_counts if labelled_counts is not None else np.zeros(k_classes, np.int64),
                    novelty=None if novelty is None else np.asarray(novelty)[rows],
                    labelled_embeddings=labelled_embeddings)
    ranked = rows[np.asarray(rank_pool(order, view, seed=seed))]
    top, probs = predictions.top_k(k)
    names = np.asarray(predictions.class_names, dtype=object)
    return pd.DataFrame({
        "sample_id": predictions.sample_ids[ranked], "path": predictions.paths[ranked],
        "rank": np.arange(1, len(ranked) + 1),
        "suggested": names[top[ranked, 0]], "suggested_prob": probs[ranked, 0],
        "top_classes": [tuple(names[r]) for r in top[ranked]], "top_probs": [tuple(p) for p in probs[ranked]],
    })


def pool_export_rows(pool: Pool, labels: pd.DataFrame) -> pd.DataFrame:
    """The curated-export rows of a pool's decided images: labelled ones (`status=new`, `label_source` manual or
    auto) and excluded ones (kept, `status=excluded`); queued images are not data yet and are left out."""
    decided = labels[labels["status"] != QUEUED_STATUS]
    relpath = pool.samples.set_index("sample_id")["relpath"]
    return pd.DataFrame({
        "sample_id": decided["sample_id"].to_numpy(),
        "path": relpath.reindex(decided["sample_id"]).to_numpy(),
        "label": decided["label"].fillna("").to_numpy(),
        "status": decided["status"].to_numpy(),
        "source": decided["source"].to_numpy(),
        "last_reviewer": decided["reviewer"].to_numpy(),
        "updated_at": [t if isinstance(t, datetime) else None for t in decided["updated_at"]],
        "pool": pool.name,
    })
