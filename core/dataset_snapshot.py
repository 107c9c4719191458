"""The dataset snapshot: a large workspace's loaded dataset kept whole in its cache folder, so a server shows it at once
and checks the files behind it in the background.

Loading a dataset stats every image (and opens the new or changed ones, `core.dataset_index`): a million `lstat`s take
7-15 s, which a server restart used to spend before its first page. A full load of a workspace with at least
`quick_open_min_images()` images (`TAXALENS_QUICK_OPEN_MIN_IMAGES`, default 50,000) leaves its result here: the
validated rows with their file stamps, the skipped files and the warnings, as one Arrow IPC file that reopens
memory-mapped in milliseconds. A server (`pages._cached.load_dataset`) then opens the snapshot when its key (the
workspace's dataset settings and the manifest's own stamp) still matches and starts a `DatasetCheck`: `python -m cli
index` in a child process (its own core, no share of the server's GIL) loads the dataset fully, which rewrites the
index and the snapshot, and prints the load's `content_digest`. The same digest means the files are as the snapshot
says and nothing is reloaded; another one means images were added, removed or changed since: the server swaps in the
new snapshot, and every page reads the new dataset on its next run.

What is trusted until the check ends: file sizes and modification times as the last full load saw them. Labels,
splits and the manifest's rows are never trusted: a changed manifest (or `taxalens.toml`) has another key, and the
dataset is loaded fully before any page shows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from core.dataset import Dataset, FileStamps

logger = logging.getLogger(__name__)

SNAPSHOT_NAME = "dataset-snapshot.arrow"  # in the workspace cache folder (`.taxalens/`)
QUICK_OPEN_ENV = "TAXALENS_QUICK_OPEN_MIN_IMAGES"
DEFAULT_QUICK_OPEN_MIN_IMAGES = 50_000  # below it a full load takes well under a second: no snapshot is kept
_META = b"taxalens-dataset-snapshot"
_VERSION = 2  # bump when what a snapshot holds (or `core.dataset` puts in a dataset) changes
_SIZE, _MTIME = "__snapshot_file_size", "__snapshot_file_mtime_ns"
REPO_ROOT = Path(__file__).resolve().parents[1]


def quick_open_min_images() -> int:
    """The size from which a full load keeps a snapshot and a server opens from it: `TAXALENS_QUICK_OPEN_MIN_IMAGES`
    (a positive integer; 0 turns snapshots off), else `DEFAULT_QUICK_OPEN_MIN_IMAGES`."""
    raw = os.environ.get(QUICK_OPEN_ENV, "").strip()
    if not raw:
        return DEFAULT_QUICK_OPEN_MIN_IMAGES
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        logger.warning("ignoring %s=%r (not an integer); using %d", QUICK_OPEN_ENV, raw, DEFAULT_QUICK_OPEN_MIN_IMAGES)
        return DEFAULT_QUICK_OPEN_MIN_IMAGES
    return value if value > 0 else sys.maxsize  # 0 (or less): never


def snapshot_key(source: str | Path, root: str | Path, *, taxonomy: tuple[str, ...], val_fraction: float, seed: int,
                 verify: str) -> dict:
    """What a loaded dataset depends on besides its images: the source (with a manifest's size and mtime: an edited
    manifest is never shown from a snapshot), the root, the taxonomy columns, the split settings and the check
    level. Raises `OSError` when the source cannot be stat-ed."""
    source = Path(source).resolve()
    info = source.stat()
    manifest = None if source.is_dir() else [info.st_size, info.st_mtime_ns]
    return {"version": _VERSION, "source": str(source), "manifest": manifest, "root": str(Path(root).resolve()),
            "taxonomy": list(taxonomy), "val_fraction": float(val_fraction), "seed": int(seed), "verify": verify}


@dataclass(frozen=True)
class SnapshotStamps(FileStamps):
    """A snapshot's file stamps with their fingerprint (`Dataset.fingerprint` of them), as the load that took them
    computed it: the pages' predictions key needs no second pass over a million stamps (`dataset_fingerprint`)."""

    fingerprint: str = ""


def dataset_fingerprint(dataset: Dataset, *, max_age_s: float | None = None) -> str:
    """`dataset.fingerprint(max_age_s=...)`, taken from a snapshot's stamps when they are those of its samples and
    any age will do (the same digest, without hashing every stamp again)."""
    stamps = dataset.file_stamps
    if isinstance(stamps, SnapshotStamps) and stamps.fingerprint and max_age_s is None \
            and stamps.matches(dataset.samples["sample_id"]):
        return stamps.fingerprint
    return dataset.fingerprint(max_age_s=max_age_s)


def content_digest(dataset: Dataset) -> str:
    """sha256 of what a load found: the usable images and their stamps (`Dataset.fingerprint`), the skipped files
    and the warnings. Two loads of one configuration with the same digest gave the same dataset."""
    return _content_digest(dataset, dataset_fingerprint(dataset))


def _content_digest(dataset: Dataset, fingerprint: str) -> str:
    digest = hashlib.sha256(fingerprint.encode())
    digest.update(json.dumps([_skipped_rows(dataset), list(dataset.warnings)], ensure_ascii=False).encode())
    return digest.hexdigest()


def write_snapshot(path: str | Path, key: dict, dataset: Dataset) -> bool:
    """Keep `dataset` (a full load under `key`) at `path` when it has at least `quick_open_min_images()` images,
    else remove an old snapshot there. Rewrites only when the content changed. Atomic (a reader has the old file or
    the new one); False (logged) when it was not written: too small, no file stamps, an unwritable folder."""
    path = Path(path)
    stamps = dataset.file_stamps
    if len(dataset) < quick_open_min_images() or stamps is None or not stamps.matches(dataset.samples["sample_id"]):
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("cannot remove the old dataset snapshot %s (%s)", path, exc)
        return False
    fingerprint = dataset_fingerprint(dataset)
    digest = _content_digest(dataset, fingerprint)
    old = _read_meta(path)
    if old is not None and old.get("key") == key and old.get("digest") == digest:
        return True
    meta = {"key": key, "digest": digest, "fingerprint": fingerprint, "images": len(dataset), "written_at": time.time(),
            "root": str(dataset.root), "source": dataset.source, "class_names": list(dataset.class_names),
            "taxonomy_columns": list(dataset.taxonomy_columns), "extra_columns": list(dataset.extra_columns),
            "skipped": _skipped_rows(dataset), "warnings": list(dataset.warnings)}
    table = pa.Table.from_pandas(dataset.samples.assign(**{_SIZE: stamps.sizes, _MTIME: stamps.mtimes}),
                                 preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META: json.dumps(meta)})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(handle)
        os.chmod(temporary, 0o644)  # mkstemp makes it 0600: others sharing the workspace must read it
        try:
            with pa.OSFile(temporary, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table, max_chunksize=max(len(table), 1))
            os.replace(temporary, path)
        finally:
            Path(temporary).unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("cannot write the dataset snapshot %s (%s); the next server start stats every image first",
                       path, exc)
        return False
    logger.debug("dataset snapshot %s: %d images", path, len(dataset))
    return True


@dataclass(frozen=True)
class Snapshot:
    """A dataset as its last full load left it, and what the snapshot says of that load."""

    dataset: Dataset
    digest: str  # `content_digest` of that load
    written_at: float  # time.time() the snapshot was written


def read_snapshot(path: str | Path, key: dict) -> Snapshot | None:
    """The snapshot at `path` when it was written under `key` and still has at least `quick_open_min_images()`
    images; None otherwise, or when it cannot be read (logged: it only costs a full load). Memory-mapped: its
    columns are read as they are used. Its file stamps count as taken when the snapshot was written."""
    meta = _read_meta(path)
    if meta is None or meta.get("key") != key or int(meta.get("images", 0)) < quick_open_min_images():
        return None
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
        sizes = table.column(_SIZE).to_numpy()
        mtimes = table.column(_MTIME).to_numpy()
        samples = table.drop_columns([_SIZE, _MTIME]).to_pandas()
    except (OSError, KeyError, pa.ArrowException) as exc:
        logger.warning("ignoring the dataset snapshot %s, which cannot be read (%s)", path, exc)
        return None
    age = max(0.0, time.time() - float(meta["written_at"]))
    stamps = SnapshotStamps(table.column("sample_id").combine_chunks().cast(pa.large_string()),
                            np.asarray(sizes, np.int64), np.asarray(mtimes, np.int64), time.monotonic() - age,
                            fingerprint=str(meta.get("fingerprint") or ""))
    dataset = Dataset(root=Path(meta["root"]), samples=samples, class_names=tuple(meta["class_names"]),
                      taxonomy_columns=tuple(meta["taxonomy_columns"]), extra_columns=tuple(meta["extra_columns"]),
                      skipped=pd.DataFrame([tuple(row) for row in meta["skipped"]],
                                           columns=["sample_id", "reason", "detail"]),
                      warnings=tuple(meta["warnings"]), source=meta["source"], file_stamps=stamps)
    return Snapshot(dataset, meta["digest"], float(meta["written_at"]))


def _read_meta(path: str | Path) -> dict | None:
    if not Path(path).is_file():
        return None
    try:
        schema = pa.ipc.open_file(pa.memory_map(str(path), "r")).schema
        meta = json.loads((schema.metadata or {})[_META])
    except (OSError, KeyError, ValueError, pa.ArrowException) as exc:
        logger.warning("ignoring the dataset snapshot %s, which cannot be read (%s)", path, exc)
        return None
    return meta if isinstance(meta, dict) and meta.get("key", {}).get("version") == _VERSION else None


def _skipped_rows(dataset: Dataset) -> list[list[str]]:
    skipped = dataset.skipped
    return [[str(v) for v in row] for row in skipped[["sample_id", "reason", "detail"]].itertuples(index=False)]


# The background check -------------------------------------------------------------------------------------------


@dataclass
class DatasetCheck:
    """One background check of a workspace's files against the snapshot a server shows (`start_check`).

    `state` is `running`, then `unchanged` (the files are as the snapshot says), `changed` (`images` now differ:
    added, removed or edited; the new snapshot is written) or `failed` (`detail` says why: the snapshot stays shown).
    Read it from any thread; the check's own thread is the only writer."""

    workspace_root: str
    expected_digest: str  # the shown snapshot's
    images: int  # in the shown snapshot
    snapshot_written_at: float
    started_at: float = field(default_factory=time.time)
    state: str = "running"
    detail: str = ""
    finished_at: float | None = None
    checked_images: int | None = None  # images the full load found usable
    found_digest: str | None = None  # `content_digest` of the full load (of the snapshot it wrote, when changed)
    thread: threading.Thread | None = field(default=None, repr=False, compare=False)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the check ends (tests, scripts); True when it has."""
        if self.thread is not None:
            self.thread.join(timeout)
        return not self.running


def check_command(workspace_root: str | Path, *, python: str | None = None) -> list[str]:
    """The child process a `DatasetCheck` runs: a full load of the workspace's dataset (`python -m cli index`)."""
    return [python or sys.executable, "-m", "cli", "index", "--workspace", str(workspace_root), "--json"]


def start_check(workspace_root: str | Path, snapshot: Snapshot, *,
                on_done: Callable[[DatasetCheck], None] | None = None) -> DatasetCheck:
    """Start checking the files of the workspace at `workspace_root` against `snapshot` in a child process; returns
    the running check. `on_done(check)` runs on the check's thread when it ends (any state)."""
    check = DatasetCheck(str(workspace_root), snapshot.digest, len(snapshot.dataset), snapshot.written_at)

    def run() -> None:
        try:
            _run_check(check)
        except Exception as exc:  # noqa: BLE001 — a check that cannot run must say so, never kill the server's thread
            logger.exception("the background dataset check of %s failed", check.workspace_root)
            check.detail = f"{type(exc).__name__}: {exc}"
            check.state = "failed"
        check.finished_at = time.time()
        if on_done is not None:
            on_done(check)

    check.thread = threading.Thread(target=run, daemon=True, name="dataset-check")
    check.thread.start()
    return check


def _run_check(check: DatasetCheck) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(check_command(check.workspace_root), cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    report = _last_json_line(done.stdout)
    if done.returncode != 0 or report is None:
        lines = (done.stderr or done.stdout or "").strip().splitlines()
        check.detail = lines[-1] if lines else f"exit status {done.returncode}"
        check.state = "failed"
        return
    check.checked_images = int(report["images"])
    check.found_digest = str(report["digest"])
    check.state = "unchanged" if report["digest"] == check.expected_digest else "changed"
    logger.info("background dataset check of %s: %s (%d images)", check.workspace_root, check.state,
                check.checked_images)


def _last_json_line(text: str) -> dict | None:
    for line in reversed((text or "").strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "digest" in value and "images" in value:
            return value
    return None
