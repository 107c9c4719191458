"""Curated label export: the dataset as the review events say it is now, as a manifest CSV, plus the audit log.

The curated manifest has `path,label,original_label,status,n_reviews,agreement,last_reviewer,updated_at` and then the
dataset's own columns (`split`, `specimen_id`, taxonomy, extras). It is a manifest like any other: load it with
`load_dataset(out, root=<dataset root>)` (paths stay relative to the dataset root, which they may not escape).
Excluded samples stay in the file with `status=excluded`; nothing is silently dropped. A sample whose reviewers
disagree with no lead's ruling yet is written as `status=disputed` with its original label (no vote wins by being
last); `core.training_data` leaves disputed rows out of training unless asked to include them.

Any text round-trips: the CSV is RFC 4180 (lines end in CRLF, so a cell holding `\r` or `\n` is quoted, as are
cells with commas or quotes). Spreadsheet formula injection: a text cell (header cells included) starting with `=`,
`+`, `-`, `@`, tab or carriage return is written with a leading `'` (OWASP's advice), which spreadsheets show but do
not run; so is a cell starting with `'` itself or with whitespace at either end (`core.dataset.cell_needs_guard`).
`load_dataset` drops that `'` again (`core.dataset.read_cell`), so labels, taxonomy and every other text column read
back exactly. Paths are the exception: a risky first character (or `X:`, which reads as a drive) gets a leading `./`
and trailing whitespace a trailing `/.`, both of which `load_dataset` normalises away, so a path like `-x.png`
round-trips exactly. `load_dataset` moves `status=excluded` rows to its skip list (reason `excluded`).
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from core.access import Actor
from core.agreement import DISPUTED_STATUS, is_disputed
from core.dataset import (
    CELL_GUARD,
    FORMULA_TRIGGERS,
    POOL_COLUMN,
    POOL_ID_PREFIX,
    Dataset,
    cell_needs_guard,
    split_pool_sample_id,
)
from core.labelstore import EVENT_COLUMNS, LabelStore
from core.pools import Pool, pool_export_rows, pool_label_frame
from core.predictions import PredictionTable

CURATED_COLUMNS = ("path", "label", "original_label", "status", "n_reviews", "agreement", "last_reviewer",
                   "updated_at")
LABEL_SOURCE_COLUMN = "label_source"  # pool rows: `manual` (labelled by a person) or `auto` (a bulk auto-accept)
NEW_IMAGES_SPLIT = "train"  # labelled pool images train; the validation split stays as it was


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote."""

    manifest_path: Path  # the curated manifest CSV
    audit_path: Path | None  # the audit log CSV, when asked for
    dataset_root: Path  # the folder the manifest's paths are relative to (pass as `root=` when loading)
    n_rows: int  # samples in the manifest (excluded ones included)
    status_counts: dict[str, int]  # status -> samples
    n_events: int  # rows in the audit log
    warnings: tuple[str, ...]  # events on samples not in the dataset, classes without taxonomy, ...


def neutralise_cell(value: object) -> object:
    """Prefix `'` to text a spreadsheet would run as a formula, or that `read_cell` would not read back verbatim
    (a leading `'`, whitespace at either end); other values pass through."""
    if isinstance(value, str) and cell_needs_guard(value):
        return CELL_GUARD + value
    return value


def neutralise_path(path: str) -> str:
    """A relative POSIX path that no spreadsheet runs and `load_dataset` reads back as the same file: `./` before a
    risky first character, whitespace or `X:` (a drive to the reader), `/.` after trailing whitespace."""
    if path.startswith(FORMULA_TRIGGERS) or path[:1].isspace() or path[1:2] == ":":
        path = "./" + path
    return path + "/." if path[-1:].isspace() else path


def build_curated_manifest(dataset: Dataset, store: LabelStore, *,
                           pools: tuple[Pool, ...] = ()) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """The curated manifest of `dataset` under the events in `store` (unneutralised), and warnings.

    Labels come from the derived sample states (`LabelStore.states`); unreviewed samples keep the dataset label, and
    so do disputed ones (reviewers disagree, no ruling: `status=disputed`).
    Taxonomy columns of a relabelled sample are those of its new class (the most common taxonomy of that class in
    the dataset). A dataset that is itself a curated export keeps its `original_label`.
    `pools`: unlabelled pools (`core.pools`) whose labelled images join the manifest with `status=new`, split
    `train`, their pool in column `pool` (paths relative to that pool's root) and `label_source` manual or auto;
    excluded pool images are kept with `status=excluded`, images still to label are left out.
    """
    samples = dataset.samples
    states = store.states(samples["sample_id"])
    warnings: list[str] = []
    orphan = {s for s in store.sample_ids() - set(samples["sample_id"]) if not s.startswith(POOL_ID_PREFIX)}
    if orphan:
        warnings.append(f"{len(orphan)} sample(s) with review events are not in the dataset (renamed or removed, "
                        f"e.g. {sorted(orphan)[0]!r}); they are only in the audit log")
    original = samples["label"]
    if "original_label" in samples.columns:  # a curated export being curated again
        earlier = samples["original_label"].astype(str)
        original = earlier.where(earlier != "", samples["label"])
    labels, status, n_reviews, agreement, last_reviewer, updated_at = [], [], [], [], [], []
    for sample_id, given in zip(samples["sample_id"], samples["label"], strict=True):
        state = states.get(sample_id)
        if state is None:
            labels.append(given)
            status.append("unreviewed")
            n_reviews.append(0)
            agreement.append(None)
            last_reviewer.append("")
            updated_at.append("")
            continue
        disputed = is_disputed(state)
        labels.append(given if disputed or state.label is None else state.label)
        status.append(DISPUTED_STATUS if disputed else state.status)
        n_reviews.append(state.n_reviews)
        agreement.append(None if state.agreement is None else round(state.agreement, 4))
        last_reviewer.append(state.last_reviewer or "")
        updated_at.append(_iso(state.updated_at))
    paths = samples["sample_id"].to_numpy(object)
    if POOL_COLUMN in samples.columns:  # a curated export with pool images being curated again
        paths = [split_pool_sample_id(s)[1] if pool else s for s, pool in zip(paths, samples[POOL_COLUMN],
                                                                               strict=True)]
    curated = pd.DataFrame({
        "path": paths,
        "label": labels,
        "original_label": original.to_numpy(),
        "status": status,
        "n_reviews": pd.array(n_reviews, dtype="Int64"),
        "agreement": pd.array(agreement, dtype="Float64"),
        "last_reviewer": last_reviewer,
        "updated_at": updated_at,
    })
    own = ["split", "specimen_id", *dataset.taxonomy_columns,
           *[c for c in dataset.extra_columns if c not in CURATED_COLUMNS]]
    for column in own:
        curated[column] = samples[column].to_numpy()
    if dataset.taxonomy_columns:
        warnings.extend(_retaxonomise(curated, samples, dataset.taxonomy_columns))
    if pools:
        curated = _with_pool_rows(curated, dataset, store, pools)
    return curated, tuple(warnings)


def _with_pool_rows(curated: pd.DataFrame, dataset: Dataset, store: LabelStore, pools: tuple[Pool, ...]
                    ) -> pd.DataFrame:
    """`curated` with the decided images of `pools` appended (taxonomy of their class, as relabels get it)."""
    taxonomy = dataset.taxonomy_columns
    by_class = {}
    if taxonomy:
        for label, group in dataset.samples.groupby("label"):
            by_class[label] = Counter(zip(*(group[c] for c in taxonomy), strict=True)).most_common(1)[0][0]
    if POOL_COLUMN not in curated.columns:
        curated[POOL_COLUMN] = ""
    if LABEL_SOURCE_COLUMN not in curated.columns:
        curated[LABEL_SOURCE_COLUMN] = ""
    frames = [curated]
    for pool in pools:
        rows = pool_export_rows(pool, pool_label_frame(store, pool))
        if not len(rows):
            continue
        added = pd.DataFrame({
            "path": rows["path"].to_numpy(), "label": rows["label"].to_numpy(), "original_label": "",
            "status": rows["status"].to_numpy(),
            "n_reviews": pd.array([int(s == "manual") for s in rows["source"]], dtype="Int64"),
            "agreement": pd.array([None] * len(rows), dtype="Float64"),
            "last_reviewer": rows["last_reviewer"].to_numpy(),
            "updated_at": [_iso(t) for t in rows["updated_at"]],
            "split": NEW_IMAGES_SPLIT, "specimen_id": rows["sample_id"].to_numpy(),
            POOL_COLUMN: pool.name, LABEL_SOURCE_COLUMN: rows["source"].to_numpy(),
        })
        for i, column in enumerate(taxonomy):
            added[column] = [by_class.get(label, ("",) * len(taxonomy))[i] for label in added["label"]]
        frames.append(added)
    merged = pd.concat(frames, ignore_index=True)
    for column in curated.columns:
        if merged[column].dtype == object:
            merged[column] = merged[column].fillna("")
    return merged[list(curated.columns)]


def build_audit_log(store: LabelStore) -> pd.DataFrame:
    """Every event (EVENT_COLUMNS), oldest first; `created_at` in ISO 8601 UTC."""
    log = store.events_frame()
    log["created_at"] = [_iso(t.to_pydatetime()) for t in log["created_at"]]
    log["reverts_id"] = log["reverts_id"].astype("Int64")
    return log[list(EVENT_COLUMNS)]


def curated_manifest_csv(dataset: Dataset, store: LabelStore, *, actor: Actor | None = None,
                         pools: tuple[Pool, ...] = ()) -> bytes:
    """The curated manifest as CSV bytes (neutralised), e.g. for a download button.

    `actor`: who asks (needs the `export` permission); None for a trusted caller (the command line, tests).
    """
    if actor is not None:
        actor.require("export")
    curated, _ = build_curated_manifest(dataset, store, pools=pools)
    return _to_csv(curated).encode("utf-8")


def audit_log_csv(store: LabelStore, *, actor: Actor | None = None) -> bytes:
    """The audit log as CSV bytes (neutralised); `actor` as for `curated_manifest_csv`."""
    if actor is not None:
        actor.require("export")
    return _to_csv(build_audit_log(store)).encode("utf-8")


def export_curated_labels(dataset: Dataset, store: LabelStore, out: str | Path, *,
                          audit_out: str | Path | None = None, actor: Actor | None = None,
                          pools: tuple[Pool, ...] = ()) -> ExportSummary:
    """Write the curated manifest to `out` (and the audit log to `audit_out`) atomically; returns a summary.

    `actor`: who asks (needs the `export` permission); None for a trusted caller (the command line, tests).
    """
    if actor is not None:
        actor.require("export")
    out = Path(out)
    curated, warnings = build_curated_manifest(dataset, store, pools=pools)
    _write_atomic(out, _to_csv(curated))
    n_events = 0
    audit_path = None
    if audit_out is not None:
        audit_path = Path(audit_out)
        log = build_audit_log(store)
        _write_atomic(audit_path, _to_csv(log))
        n_events = len(log)
    return ExportSummary(
        manifest_path=out.resolve(),
        audit_path=audit_path.resolve() if audit_path else None,
        dataset_root=dataset.root,
        n_rows=len(curated),
        status_counts=dict(Counter(curated["status"])),
        n_events=n_events,
        warnings=warnings,
    )


def _retaxonomise(curated: pd.DataFrame, samples: pd.DataFrame, taxonomy: tuple[str, ...]) -> list[str]:
    """Give relabelled rows the taxonomy of their new class; returns warnings."""
    warnings = []
    by_class: dict[str, tuple] = {}
    for label, group in samples.groupby("label"):
        tuples = Counter(zip(*(group[c] for c in taxonomy), strict=True))
        by_class[label] = tuples.most_common(1)[0][0]
        if len(tuples) > 1:
            warnings.append(f"class {label!r} has {len(tuples)} different taxonomies in the dataset; relabelled "
                            f"samples get the most common one {by_class[label]}")
    changed = curated["label"] != samples["label"].to_numpy()
    unknown = sorted(set(curated.loc[changed, "label"]) - set(by_class))
    if unknown:
        warnings.append(f"samples relabelled to class(es) {unknown} not otherwise in the dataset have empty "
                        f"taxonomy columns {list(taxonomy)}")
    for row in curated.index[changed]:
        values = by_class.get(curated.at[row, "label"], ("",) * len(taxonomy))
        for column, value in zip(taxonomy, values, strict=True):
            curated.at[row, column] = value
    return warnings


def _to_csv(frame: pd.DataFrame) -> str:
    safe = frame.copy()
    for column in safe.columns:
        if column == "path":
            safe[column] = [neutralise_path(p) for p in safe[column]]
        elif safe[column].dtype == object or pd.api.types.is_string_dtype(safe[column]):
            safe[column] = [neutralise_cell(v) for v in safe[column]]
    safe.columns = [neutralise_cell(str(c)) for c in safe.columns]
    # CRLF: the csv module quotes a cell holding any character of the line terminator, so `\r` and `\n` both are.
    return safe.to_csv(index=False, lineterminator="\r\n")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _iso(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")



TOP_K_BLOCK_VALUES = 20_000_000  # probabilities handled at once by `top_k_classes` (a block's temporaries: ~0.3 GB)


def top_k_classes(probs, k: int):
    """(N, k) int64: each row's `k` most probable classes, most probable first, ties to the lower class index, exactly
    as `np.argsort(-probs, axis=1, kind="stable")[:, :k]`, without sorting every row in full: a partition finds each
    row's k largest in blocks of `TOP_K_BLOCK_VALUES` values (a million x 1,000 float16 memory map is never copied
    whole), and only the rows where the k-th value is tied with a value outside those k are sorted fully."""
    import numpy as np

    n, c = probs.shape
    k = min(k, c)
    out = np.empty((n, k), np.int64)
    step = max(1, TOP_K_BLOCK_VALUES // max(c, 1))
    for start in range(0, n, step):
        neg = -np.asarray(probs[start:start + step], dtype=np.float32)
        if k < c:
            part = np.argpartition(neg, k - 1, axis=1)[:, :k]
            kth = np.take_along_axis(neg, part, axis=1).max(axis=1, keepdims=True)
            tied = (neg <= kth).sum(axis=1) > k  # the k-th place is shared with a class outside `part`
        else:
            part = np.broadcast_to(np.arange(c), neg.shape)
            tied = np.zeros(len(neg), bool)
        values = np.take_along_axis(neg, part, axis=1)
        ranked = np.take_along_axis(part, np.lexsort((part, values), axis=1), axis=1)
        if tied.any():
            ranked[tied] = np.argsort(neg[tied], axis=1, kind="stable")[:, :k]
        out[start:start + len(neg)] = ranked
    return out


def predictions_csv(table: PredictionTable, *, top_k: int = 3) -> bytes:
    """The predictions of `table` as CSV (formula-safe, as the curated manifest): `sample_id`, `split`,
    `specimen_id`, `label`, `pred`, `confidence`, the `top_k` classes and probabilities, and `temperature` (1 for
    the model's own probabilities; the stored temperature when the table was calibrated with
    `core.calibration.calibrate_table`)."""
    import numpy as np

    frame = table.frame[["sample_id", "split", "specimen_id", "label", "pred", "confidence"]].copy()
    k = min(top_k, len(table.class_names))
    if len(table) and k:
        order = top_k_classes(table.pred_probs, k)
        probs = np.take_along_axis(table.pred_probs, order, axis=1)
        names = np.asarray(table.class_names, dtype=object)
        for rank in range(k):
            frame[f"top{rank + 1}"] = names[order[:, rank]]
            frame[f"top{rank + 1}_prob"] = probs[:, rank]
    frame["temperature"] = float(table.meta.get("temperature", 1.0))
    return _to_csv(frame).encode("utf-8")
