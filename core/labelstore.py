"""The label store: an append-only table of review events on SQLite or PostgreSQL; current labels derive from it.

Semantics (one sample, events in id order):

- Every write appends one row to `label_events`; nothing is ever updated or deleted (the database refuses it with
  triggers, an insert over an existing id too, and this module has no UPDATE or DELETE statement).
- Events form a hash chain in id order (`core.labelchain`): each stores the SHA-256 of its predecessor and of its own
  canonical content. Writers are serialised over the whole log (SQLite `BEGIN IMMEDIATE`; PostgreSQL one advisory
  lock), so the chain stays linear; a unique index on `prev_hash` refuses a fork whatever a writer does. Opening
  the store checks the newest links (and runs SQLite's `PRAGMA quick_check`); a store that fails refuses every write
  until it is repaired (`python -m cli verify-labels` finds the first broken link).
- `undo` by reviewer R reverts R's latest not-yet-undone, non-undo event on that sample (its id is stored in
  `reverts_id`; an event can be undone once). `undo_event(id)` reverts one named event: its author may, and a lead
  may undo another reviewer's event, recorded under the lead's own name. There is no redo: decide again instead.
- Access: every writer takes `actor: Actor | None`. Given an actor, its role must allow the write (`core.access`:
  record, adjudicate, undo_others) and the recorded reviewer is `actor.name` (nobody writes as someone else).
  `actor=None` is a trusted caller: the command line run by the owner of the server's files, tests, benchmarks;
  the dashboard always passes the signed-in (or local) actor.
- Pool annotation (`core.pools`): `label` sets the class of a new, unlabelled image (status `labelled`; it needs a
  label, like relabel); `auto_accept` is one lead's bulk event on a pool's own id, whose note lists what it accepted
  (never anyone's vote; undone like any event).
- The *effective* events are the non-undo events that were not undone. If any effective event is an adjudication
  (a lead resolving a conflict), only the adjudications count ("the lead wins"); otherwise all effective events do.
  Within that layer the latest event sets the status (confirm -> confirmed, relabel -> relabeled, unsure -> unsure,
  exclude -> excluded; none -> unreviewed), and the label is the `new_label` of the latest confirm/relabel in that
  layer, else of any effective confirm/relabel, else None (the dataset's own label stands).
- A reviewer's *vote* is their latest effective non-adjudication event: the label they confirmed or chose, or
  `(unsure)` / `(excluded)`. `n_reviews` counts the reviewers with a vote and `agreement` is the share of votes that
  equal the outcome (the label, or `(unsure)` / `(excluded)` when that is the status).
- `previous_label` of an event is the sample's label just before it (the derived label, else the dataset label the
  caller passed as `given_label`); `new_label` is the label the reviewer decided (confirm, relabel) or the sample's
  label after the event (unsure, exclude, undo); the two coincide unless an adjudication overrides the review.
  Writes are serialised (see above), so these per-sample chains are consistent under concurrency too.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Engine, make_url

from core.access import AccessError, Actor
from core.errors import TaxaLensError
from core.labelchain import GENESIS_HASH, BrokenLink, event_hash, find_broken_link

logger = logging.getLogger(__name__)

ACTIONS = ("confirm", "relabel", "unsure", "exclude", "undo", "label", "auto_accept")
STATUSES = ("unreviewed", "confirmed", "relabeled", "unsure", "excluded", "labelled", "auto_accepted")
UNSURE_VOTE = "(unsure)"
EXCLUDED_VOTE = "(excluded)"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MAX_REVIEWER_LENGTH = 200
MAX_NOTE_LENGTH = 10_000
MAX_BULK_NOTE_LENGTH = 50_000_000  # an auto_accept event's note holds its threshold table and every accepted image
EVENT_COLUMNS = ("id", "sample_id", "previous_label", "new_label", "action", "reviewer", "created_at", "note",
                 "checkpoint", "adjudication", "reverts_id")
STATE_COLUMNS = ("sample_id", "label", "status", "n_reviews", "agreement", "last_reviewer", "updated_at",
                 "adjudicated", "decided_by")

_STATUS_OF_ACTION = {"confirm": "confirmed", "relabel": "relabeled", "unsure": "unsure", "exclude": "excluded",
                     "label": "labelled", "auto_accept": "auto_accepted"}
_LABEL_ACTIONS = frozenset({"confirm", "relabel", "label"})
_NO_LABEL_ACTIONS = ("unsure", "exclude", "undo", "auto_accept")
_MIGRATION_LOCK_KEY = 7_263_519_804  # PostgreSQL advisory lock held while migrating
_CHAIN_LOCK_KEY = 7_263_519_805  # PostgreSQL advisory lock held by every write: one chain head at a time
OPEN_CHECK_LINKS = 64  # newest links checked when a store opens (plus PRAGMA quick_check on SQLite)
_IN_CHUNK = 500  # sample ids per IN (...) clause
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_METADATA = sa.MetaData()
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# Mirrors migrations 0001-0004 (migrations own the schema; this is for building queries).
label_events = sa.Table(
    "label_events",
    _METADATA,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("sample_id", sa.Text(), nullable=False),
    sa.Column("previous_label", sa.Text()),
    sa.Column("new_label", sa.Text()),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("reviewer", sa.Text(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("note", sa.Text(), nullable=False),
    sa.Column("checkpoint", sa.Text()),
    sa.Column("adjudication", sa.Boolean(), nullable=False),
    sa.Column("reverts_id", _ID),
    sa.Column("prev_hash", sa.String(64)),
    sa.Column("event_hash", sa.String(64)),
)


class LabelStoreError(TaxaLensError, RuntimeError):
    """The label store cannot be opened or used as asked (unknown schema, unsupported database, ...)."""


class LabelStoreIntegrityError(LabelStoreError):
    """The label log failed its integrity check (a broken hash-chain link or a damaged SQLite file)."""


@dataclass(frozen=True)
class IntegrityReport:
    """The outcome of checking the label log (`LabelStore.check_integrity`, `LabelStore.verify_chain`)."""

    ok: bool  # nothing wrong was found in what was checked
    links_checked: int  # events whose link and content hash were recomputed
    head_hash: str | None  # event_hash of the newest event checked (GENESIS_HASH for an empty log)
    broken: BrokenLink | None = None  # the first broken link, if any
    database_problem: str | None = None  # SQLite `PRAGMA quick_check` / `integrity_check` findings, if any

    @property
    def problem(self) -> str | None:
        """One sentence saying what is wrong, or None."""
        if self.database_problem:
            return f"the database file is damaged ({self.database_problem})"
        return self.broken.problem if self.broken else None


@dataclass(frozen=True)
class LabelEvent:
    """One row of the audit trail."""

    id: int  # increasing in commit order per sample
    sample_id: str  # the dataset's sample id (its path relative to the dataset root)
    previous_label: str | None  # the sample's label just before this event
    new_label: str | None  # the sample's label just after this event
    action: str  # one of ACTIONS
    reviewer: str  # who did it (required, free text)
    created_at: datetime  # UTC, timezone-aware
    note: str  # free text, shown as text only
    checkpoint: str | None  # the checkpoint whose suggestion was on screen
    adjudication: bool  # a lead's resolution; adjudications override ordinary reviews
    reverts_id: int | None  # for `undo`: the id of the event it reverts
    prev_hash: str = ""  # event_hash of the event before it (core.labelchain.GENESIS_HASH for the first)
    event_hash: str = ""  # SHA-256 of this event's canonical content (core.labelchain)


@dataclass(frozen=True)
class NewEvent:
    """An event to write (`LabelStore.record_many`)."""

    sample_id: str  # the dataset's sample id
    action: str  # one of ACTIONS
    reviewer: str | None  # who does it; required, except that None means the actor given to `record_many`
    label: str | None = None  # relabel: the new class (required); confirm: the label confirmed (default: current)
    given_label: str | None = None  # the dataset's label, the sample's label until a reviewer decides one
    note: str = ""  # optional free text
    checkpoint: str | None = None  # checkpoint whose suggestion was shown
    adjudication: bool = False  # a lead resolving a conflict
    reverts_id: int | None = None  # undo: the event to revert (default: this reviewer's latest on the sample)


@dataclass(frozen=True)
class SampleState:
    """What the events say about one sample now."""

    sample_id: str
    label: str | None  # None: no label decided by a reviewer, the dataset's label stands
    status: str  # one of STATUSES
    n_reviews: int  # reviewers with an effective (not undone) non-adjudication decision
    agreement: float | None  # share of those reviewers whose vote equals the outcome; None without votes
    last_reviewer: str | None  # reviewer of the latest event of any kind (undo included)
    updated_at: datetime | None  # time of that event
    adjudicated: bool = False  # an effective adjudication decides this sample
    decided_by: str | None = None  # reviewer of the event that set the status
    votes: Mapping[str, str] = field(default_factory=dict)  # reviewer -> label or (unsure)/(excluded)


def validate_reviewer(reviewer: object) -> str:
    """Return the cleaned reviewer identity, or raise ValueError saying what is wrong with it."""
    if not isinstance(reviewer, str) or not reviewer.strip():
        raise ValueError(
            f"a reviewer identity is required to write label events, got {reviewer!r}; "
            "enter your name or initials (e.g. reviewer='jdoe')"
        )
    cleaned = reviewer.strip()
    if len(cleaned) > MAX_REVIEWER_LENGTH or _CONTROL.search(cleaned):
        raise ValueError(
            f"reviewer identity {cleaned[:40]!r}... must be at most {MAX_REVIEWER_LENGTH} printable characters"
        )
    return cleaned


class LabelStore:
    """Review events in a SQLAlchemy database; `url` is `sqlite:///FILE` (default) or `postgresql://...`.

    Opening runs the schema migrations (Alembic, `core/migrations`) when the database is behind, then a quick
    integrity check (`check_integrity`: the newest `OPEN_CHECK_LINKS` links, and `PRAGMA quick_check` on SQLite); a
    store that fails it opens for reading but refuses every write (`LabelStoreIntegrityError`). Use one store per
    process (after `fork`, open a new one) and close it (`close()` or `with`).
    """

    def __init__(self, url: str, *, busy_timeout_ms: int = 30_000, synchronous: str = "NORMAL",
                 migrate: bool = True, check_on_open: bool = True) -> None:
        self.url = _normalise_url(url)
        parsed = make_url(self.url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            database = parsed.database or ""
            if database in ("", ":memory:") or database.startswith("file::memory:"):
                raise ValueError(f"label store URL {url!r} is an in-memory database; give a file "
                                 "(sqlite:///path/labels.db) so every process and restart sees the same events")
            if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
                raise ValueError(f"synchronous={synchronous!r}; use NORMAL (WAL default), FULL or EXTRA")
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self._engine = sa.create_engine(self.url, connect_args={"timeout": busy_timeout_ms / 1000})
            _install_sqlite_hooks(self._engine, busy_timeout_ms=busy_timeout_ms, synchronous=synchronous.upper())
        elif self.dialect == "postgresql":
            self._engine = sa.create_engine(self.url, pool_pre_ping=True)
        else:
            raise LabelStoreError(f"label store URL {url!r} uses {self.dialect!r}; use sqlite:///FILE or "
                                  "postgresql://USER@HOST:PORT/DB")
        self.integrity: IntegrityReport | None = None  # the check run on opening (None: not run)
        if migrate:
            self.migrate()
            if check_on_open:
                self.integrity = self.check_integrity()
                if not self.integrity.ok:
                    logger.error("label store %s failed its integrity check on opening: %s", self._safe_url(),
                                 self.integrity.problem)

    # ----------------------------------------------------------------------------------------------- lifecycle

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for tests and tooling; write through `record`)."""
        return self._engine

    def close(self) -> None:
        """Release pooled connections."""
        self._engine.dispose()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at (None before the first migration)."""
        from alembic.runtime.migration import MigrationContext

        with self._engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def migrate(self, revision: str | None = None) -> str:
        """Bring the schema to the newest revision, or up to `revision` (no-op when there); returns the revision."""
        if revision is None:
            head = _head_from_files()
            if head is not None and self._stored_revision() == head:
                return head  # at the newest revision: decided without importing Alembic (0.3 s of a first visit)
        from alembic import command
        from alembic.runtime.migration import MigrationContext

        config, known, head = _alembic_scripts()
        target = revision or head
        current = self.schema_revision()
        if current == target:
            return target
        if current is not None and current not in known:
            raise LabelStoreError(f"label store {self._safe_url()} is at schema revision {current!r}, unknown to this "
                                  f"TaxaLens (newest known: {head!r}); upgrade TaxaLens to open it")
        with self._engine.connect() as conn:
            conn.execution_options(taxalens_write=True)  # SQLite: BEGIN IMMEDIATE, one migrator at a time
            with conn.begin():
                if self.dialect == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
                if MigrationContext.configure(conn).get_current_revision() != target:  # another process may have won
                    logger.info("migrating label store %s from schema %s to %s", self._safe_url(), current, target)
                    with _MIGRATION_THREAD_LOCK:
                        config.attributes["connection"] = conn
                        try:
                            command.upgrade(config, target)
                        finally:
                            config.attributes.pop("connection", None)
        return target

    def _stored_revision(self) -> str | None:
        """The one revision in the database's `alembic_version` table, read with a plain query; None when the table
        is missing (a new store), unreadable or holds no single revision (Alembic decides then)."""
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
        except sa.exc.DBAPIError:
            return None
        return str(rows[0][0]) if len(rows) == 1 else None

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden (for messages and logs)."""
        return make_url(self.url).render_as_string(hide_password=True)

    def _safe_url(self) -> str:
        return self.safe_url

    # -------------------------------------------------------------------------------------------------- writes

    def record(
        self,
        sample_id: str,
        action: str,
        *,
        reviewer: str | None = None,
        label: str | None = None,
        given_label: str | None = None,
        note: str = "",
        checkpoint: str | None = None,
        adjudication: bool = False,
        actor: Actor | None = None,
    ) -> LabelEvent:
        """Append one event and return it as stored.

        `action`: confirm (the current label, or `label`), relabel (`label` required), unsure, exclude, undo (reverts
        this reviewer's latest effective event on the sample; ValueError when there is none). `given_label`: the
        dataset's label, recorded as `previous_label` while no reviewer has decided one. `adjudication=True` marks a
        lead's resolution, which overrides ordinary reviews. `actor`: who acts (their role must allow it; the
        reviewer recorded is `actor.name`, and `reviewer` may be left out); None for a trusted caller, which must
        name the `reviewer`. Raises ValueError for a missing reviewer or bad input, AccessError for a role that may
        not do it or a reviewer other than the actor, LabelStoreIntegrityError when the log is damaged.
        """
        return self.record_many([NewEvent(sample_id, action, reviewer, label, given_label, note, checkpoint,
                                          adjudication)], actor=actor)[0]

    def record_many(self, events: Iterable[NewEvent], *, actor: Actor | None = None) -> list[LabelEvent]:
        """Append several events in one transaction (all or none), applied in the given order.

        `actor` as for `record` (an event without a reviewer is recorded under `actor.name`).
        """
        todo = [_validate_new_event(_as_actor(e, actor)) for e in events]
        if not todo:
            return []
        if actor is not None:
            actor.require("record")
            if any(e.adjudication for e in todo):
                actor.require("adjudicate")
            if any(e.action == "auto_accept" for e in todo):
                actor.require("auto_accept")
        self._refuse_if_damaged()
        sample_ids = sorted({e.sample_id for e in todo})
        for attempt in range(4):
            try:
                return self._record(todo, sample_ids, actor)
            except sa.exc.OperationalError as exc:  # SQLite busy beyond busy_timeout (rare with BEGIN IMMEDIATE)
                if self.dialect != "sqlite" or "locked" not in str(exc).lower() or attempt == 3:
                    raise
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    def _record(self, todo: list[NewEvent], sample_ids: list[str], actor: Actor | None) -> list[LabelEvent]:
        written: list[LabelEvent] = []
        with self._write_transaction() as conn:
            head_id, head_hash = self._chain_head(conn)
            history = self._history_rows(conn, sample_ids)
            for new in todo:
                rows = history[new.sample_id]
                row = _plan_event(new, rows, now=datetime.now(UTC), actor=actor)
                head_id += 1
                row["id"] = head_id
                row["prev_hash"] = head_hash
                row["event_hash"] = head_hash = event_hash(row, head_hash)
                conn.execute(sa.insert(label_events).values(**row))
                rows.append(row)
                written.append(_event_from_row(row))
        return written

    def _chain_head(self, conn: Connection) -> tuple[int, str]:
        """(id, event_hash) of the newest event, after checking that its content still hashes to it."""
        head = conn.execute(sa.select(label_events).order_by(label_events.c.id.desc()).limit(1)).mappings().first()
        if head is None:
            return 0, GENESIS_HASH
        broken, _, _ = find_broken_link([head], expected_prev=None)
        if broken is not None:
            self.integrity = IntegrityReport(ok=False, links_checked=0, head_hash=None, broken=broken)
            self._refuse_if_damaged()
        return int(head["id"]), head["event_hash"]

    def _refuse_if_damaged(self) -> None:
        if self.integrity is not None and not self.integrity.ok:
            raise LabelStoreIntegrityError(
                f"label store {self._safe_url()} failed its integrity check: {self.integrity.problem}. Nothing was "
                "written. Stop the dashboard, keep a copy of the database as it is, run `python -m cli verify-labels "
                "--workspace DIR` to find the first broken link, and restore the label store from a backup taken "
                "before it (reading and exporting still work meanwhile)"
                + ("; a damaged SQLite file can also be rebuilt with `sqlite3 labels.db .recover | sqlite3 new.db`, "
                   "then checked with verify-labels --url sqlite:///new.db" if self.integrity.database_problem else "")
            )

    def last_undoable(self, reviewer: str) -> LabelEvent | None:
        """The reviewer's latest effective (not undone, non-undo) event on any sample: what `undo` there reverts."""
        reviewer = validate_reviewer(reviewer)
        mine = label_events.c.reviewer == reviewer
        with self._engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(sa.select(label_events).where(mine)
                                                  .order_by(label_events.c.id)).mappings()]
            # Undone by anyone: the reviewer themself, or a lead undoing it by id.
            undone = set(conn.execute(sa.select(label_events.c.reverts_id).where(
                label_events.c.action == "undo",
                label_events.c.reverts_id.in_(sa.select(label_events.c.id).where(mine)))).scalars())
        for row in reversed(rows):
            if row["action"] != "undo" and row["id"] not in undone:
                return _event_from_row(row)
        return None

    def undo_last(self, reviewer: str | None = None, *, note: str = "", actor: Actor | None = None) -> LabelEvent:
        """Undo the reviewer's (the actor's) latest effective decision, whichever sample it was on (ValueError if
        none)."""
        if actor is not None:
            actor.require("record")
        reviewer = validate_reviewer(_as_actor(NewEvent("-", "undo", reviewer), actor).reviewer)
        target = self.last_undoable(reviewer)
        if target is None:
            raise ValueError(f"nothing to undo: reviewer {reviewer!r} has no effective event")
        return self.record(target.sample_id, "undo", reviewer=reviewer, note=note, actor=actor)

    def undo_event(self, event_id: int, *, reviewer: str | None = None, note: str = "",
                   actor: Actor | None = None) -> LabelEvent:
        """Undo one event by id, recorded under the undoer's own name.

        Its author may undo it; undoing another reviewer's event needs the `undo_others` permission (a lead). The
        event must be an effective decision (not an undo, not undone already): ValueError otherwise.
        """
        if actor is not None:
            actor.require("record")
        with self._engine.connect() as conn:
            target = conn.execute(sa.select(label_events.c.sample_id).where(label_events.c.id == int(event_id))
                                  ).scalar()
        if target is None:
            raise ValueError(f"no label event with id {event_id}; see the audit log for the ids")
        return self.record_many([NewEvent(target, "undo", reviewer, note=note, reverts_id=int(event_id))],
                                actor=actor)[0]

    def check_integrity(self, *, last: int = OPEN_CHECK_LINKS) -> IntegrityReport:
        """The quick check run on opening: the newest `last` links of the chain, and on SQLite `PRAGMA quick_check`
        (which reads the whole file once: see benchmarks/bench_labelstore.py --integrity for its cost)."""
        problem = self._sqlite_check("quick_check")
        with self._engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(
                sa.select(label_events).order_by(label_events.c.id.desc()).limit(last + 1)).mappings()]
        rows.reverse()
        whole = len(rows) <= last  # the window reaches the first event: it must chain onto the genesis value
        broken, checked, head = find_broken_link(rows, expected_prev=GENESIS_HASH if whole else None)
        return IntegrityReport(ok=broken is None and problem is None, links_checked=checked,
                               head_hash=head if rows else GENESIS_HASH, broken=broken, database_problem=problem)

    def verify_chain(self, *, batch: int = 5000) -> IntegrityReport:
        """Recompute every link of the chain from the first event (and on SQLite `PRAGMA integrity_check`)."""
        problem = self._sqlite_check("integrity_check")
        checked, head, after_id = 0, GENESIS_HASH, None
        with self._engine.connect() as conn:
            while True:
                query = sa.select(label_events).order_by(label_events.c.id).limit(batch)
                if after_id is not None:
                    query = query.where(label_events.c.id > after_id)
                rows = [dict(r) for r in conn.execute(query).mappings()]
                if not rows:
                    break
                broken, n, head_now = find_broken_link(rows, expected_prev=head, after_id=after_id)
                checked += n
                if broken is not None:
                    return IntegrityReport(ok=False, links_checked=checked, head_hash=head, broken=broken,
                                           database_problem=problem)
                head, after_id = head_now or head, int(rows[-1]["id"])
        return IntegrityReport(ok=problem is None, links_checked=checked, head_hash=head, database_problem=problem)

    def _sqlite_check(self, pragma: str) -> str | None:
        if self.dialect != "sqlite":
            return None
        with self._engine.connect() as conn:
            findings = [str(r[0]) for r in conn.exec_driver_sql(f"PRAGMA {pragma}")]
        return None if findings == ["ok"] else "; ".join(" ".join(f.split()) for f in findings[:5])

    @contextmanager
    def _write_transaction(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            conn.execution_options(taxalens_write=True)  # SQLite: BEGIN IMMEDIATE, one writer at a time
            with conn.begin():
                if self.dialect == "postgresql":
                    # One writer at a time extends the chain; released at commit, after the commit is visible.
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CHAIN_LOCK_KEY})
                yield conn

    # --------------------------------------------------------------------------------------------------- reads

    def _history_rows(self, conn: Connection, sample_ids: Sequence[str] | None,
                      reviewer: str | None = None) -> defaultdict[str, list[dict]]:
        by_sample: defaultdict[str, list[dict]] = defaultdict(list)
        for query in _event_queries(sample_ids, reviewer):
            for row in conn.execute(query).mappings():
                by_sample[row["sample_id"]].append(dict(row))
        for rows in by_sample.values():
            rows.sort(key=lambda r: r["id"])
        return by_sample

    def events(self, *, sample_ids: Iterable[str] | None = None, reviewer: str | None = None) -> list[LabelEvent]:
        """Events in id order, optionally of some samples and/or one reviewer."""
        ids = None if sample_ids is None else sorted(set(sample_ids))
        with self._engine.connect() as conn:
            history = self._history_rows(conn, ids, reviewer)
        rows = sorted((r for rows in history.values() for r in rows), key=lambda r: r["id"])
        return [_event_from_row(r) for r in rows]

    def history(self, sample_id: str) -> list[LabelEvent]:
        """All events of one sample, oldest first."""
        return self.events(sample_ids=[sample_id])

    def events_frame(self, *, sample_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """The audit log as a DataFrame with EVENT_COLUMNS, in id order (`created_at` as UTC timestamps)."""
        events = self.events(sample_ids=sample_ids)
        frame = pd.DataFrame([e.__dict__ for e in events], columns=list(EVENT_COLUMNS))
        frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
        return frame

    def count_events(self) -> int:
        """Number of rows in the audit log."""
        with self._engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(label_events)).scalar_one())

    def last_event_id(self) -> int:
        """The id of the newest event (0 for an empty store): a cheap token that changes with every write."""
        with self._engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(label_events.c.id))).scalar_one() or 0)

    def sample_ids(self) -> set[str]:
        """Ids of all samples that have at least one event."""
        with self._engine.connect() as conn:
            return set(conn.execute(sa.select(label_events.c.sample_id).distinct()).scalars())

    def state(self, sample_id: str) -> SampleState:
        """The derived state of one sample (uses the per-sample index)."""
        with self._engine.connect() as conn:
            rows = self._history_rows(conn, [sample_id])[sample_id]
        return derive_state(sample_id, rows)

    def states(self, sample_ids: Iterable[str] | None = None) -> dict[str, SampleState]:
        """Derived states of the samples that have events (all of them when `sample_ids` is None)."""
        ids = None if sample_ids is None else sorted(set(sample_ids))
        with self._engine.connect() as conn:
            history = self._history_rows(conn, ids)
        return {sample_id: derive_state(sample_id, rows) for sample_id, rows in history.items()}

    def state_frame(self, sample_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """`states()` as a DataFrame with STATE_COLUMNS, one row per sample that has events."""
        states = self.states(sample_ids)
        frame = pd.DataFrame([{c: getattr(s, c) for c in STATE_COLUMNS} for s in states.values()],
                             columns=list(STATE_COLUMNS))
        frame["updated_at"] = pd.to_datetime(frame["updated_at"], utc=True)
        return frame

    def votes_frame(self, sample_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """One row per (sample, reviewer) vote: sample_id, reviewer, vote (label, `(unsure)` or `(excluded)`)."""
        rows = [(s.sample_id, reviewer, vote) for s in self.states(sample_ids).values()
                for reviewer, vote in sorted(s.votes.items())]
        return pd.DataFrame(rows, columns=["sample_id", "reviewer", "vote"])

    def reviewed_by(self, reviewer: str) -> set[str]:
        """Sample ids on which `reviewer` has an effective (not undone) decision."""
        reviewer = validate_reviewer(reviewer)
        with self._engine.connect() as conn:
            sample_ids = sorted(conn.execute(
                sa.select(label_events.c.sample_id).where(label_events.c.reviewer == reviewer).distinct()
            ).scalars())
            history = self._history_rows(conn, sample_ids)
        return {sample_id for sample_id, rows in history.items() if _effective_of(rows, reviewer)}


def open_label_store(workspace_or_url: Any, **options: Any) -> LabelStore:
    """Open the store of a `Workspace` (its `label_store_url`) or of a URL string.

    Raises `LabelStoreError` naming the setting the URL came from and the fix for a URL of another database kind, a
    server that cannot be reached and a file that is not a SQLite database (which is left as it is)."""
    url = getattr(workspace_or_url, "label_store_url", workspace_or_url)
    if not isinstance(url, str) or not url:
        raise ValueError(f"expected a Workspace or a label store URL, got {workspace_or_url!r}")
    setting = _url_setting(workspace_or_url)
    try:
        parsed = make_url(_normalise_url(url))
    except sa.exc.ArgumentError as exc:
        raise LabelStoreError(f"{setting} is {url[:80]!r}, not a database URL; use sqlite:///PATH/labels.db or "
                              "postgresql://USER@HOST:PORT/DB") from exc
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise LabelStoreError(f"{setting} is {shown}, a {parsed.get_backend_name()} database, which TaxaLens cannot "
                              "keep labels in; use sqlite:///PATH/labels.db (one machine) or "
                              "postgresql://USER@HOST:PORT/DB (a team)")
    try:
        return LabelStore(url, **options)
    except sa.exc.DBAPIError as exc:
        raise LabelStoreError(f"cannot open the label store {shown} ({setting}): {_open_failure(exc, parsed)}") \
            from exc


# Why a database refused to open, by a phrase of the driver's message (psycopg, sqlite3), and what to do about it.
_OPEN_FAILURES = (
    ("connection refused", "nothing accepts connections at that host and port; start the PostgreSQL server there "
                           "or correct the host and port in the URL"),
    ("could not translate host name", "its host name does not resolve; correct the host in the URL"),
    ("name or service not known", "its host name does not resolve; correct the host in the URL"),
    ("timeout expired", "the server did not answer in time; check the host, the port and any firewall between"),
    ("password authentication failed", "the server refused the user name or password; correct them in the URL"),
    ("does not exist", "the server has no such database or user; create it or correct the URL"),
    ("file is not a database", "{file} is not a SQLite database (damaged or overwritten); it was left untouched: "
                               "move it aside and restore labels.db from a backup (where no file is, a new empty "
                               "label log is created)"),
    ("malformed", "{file} is damaged; it was left untouched: move it aside and restore labels.db from a backup"),
    ("unable to open database file", "{file} cannot be opened; check that its folder exists and that this account "
                                     "may write there"),
)


def _open_failure(exc: sa.exc.DBAPIError, url: sa.URL) -> str:
    message = str(exc.orig).lower()
    file = url.database or "the database file"
    for phrase, advice in _OPEN_FAILURES:
        if phrase in message:
            return advice.format(file=file)
    return (f"the database refused the connection ({type(exc.orig).__name__}); check that it runs and that the URL "
            "is right")


def _url_setting(workspace_or_url: Any) -> str:
    """Where the label store URL was set, as a user would look for it."""
    if os.environ.get("TAXALENS_LABEL_STORE_URL"):
        return "the TAXALENS_LABEL_STORE_URL environment variable"
    root = getattr(workspace_or_url, "root", None)
    if root is None:
        return "the label store URL"
    if getattr(workspace_or_url, "label_store_url", "") == f"sqlite:///{Path(root) / 'labels.db'}":
        return f"the workspace's own label log, no `url` under [labels] in {Path(root) / 'taxalens.toml'}"
    return f"`url` under [labels] in {Path(root) / 'taxalens.toml'}"


# ------------------------------------------------------------------------------------------------- derivation


def derive_state(sample_id: str, rows: Sequence[Mapping[str, Any]]) -> SampleState:
    """Derive a sample's state from its event rows (mappings with EVENT_COLUMNS keys), sorted by id.

    Pure function; the rules are in the module docstring.
    """
    if not rows:
        return SampleState(sample_id, None, "unreviewed", 0, None, None, None)
    undone = {r["reverts_id"] for r in rows if r["action"] == "undo"}
    effective = [r for r in rows if r["action"] != "undo" and r["id"] not in undone]
    adjudications = [r for r in effective if r["adjudication"]]
    layer = adjudications or effective
    label = _latest_label(layer)
    if label is None:
        label = _latest_label(effective)
    votes: dict[str, str] = {}
    for r in effective:
        if not r["adjudication"] and r["action"] != "auto_accept":  # a bulk event is no one's vote on a sample
            votes[r["reviewer"]] = _vote_of(r)
    last = rows[-1]
    if not layer:
        status, decided_by = "unreviewed", None
    else:
        status, decided_by = _STATUS_OF_ACTION[layer[-1]["action"]], layer[-1]["reviewer"]
    outcome = EXCLUDED_VOTE if status == "excluded" else UNSURE_VOTE if status == "unsure" else label
    agreement = sum(v == outcome for v in votes.values()) / len(votes) if votes else None
    return SampleState(
        sample_id=sample_id,
        label=label,
        status=status,
        n_reviews=len(votes),
        agreement=agreement,
        last_reviewer=last["reviewer"],
        updated_at=_as_utc(last["created_at"]),
        adjudicated=bool(adjudications),
        decided_by=decided_by,
        votes=votes,
    )


def _latest_label(rows: Sequence[Mapping[str, Any]]) -> str | None:
    for r in reversed(rows):
        if r["action"] in _LABEL_ACTIONS:
            return r["new_label"]
    return None


def _vote_of(row: Mapping[str, Any]) -> str:
    if row["action"] == "exclude":
        return EXCLUDED_VOTE
    if row["action"] == "unsure":
        return UNSURE_VOTE
    return row["new_label"]


def _effective_of(rows: Sequence[Mapping[str, Any]], reviewer: str) -> list[Mapping[str, Any]]:
    undone = {r["reverts_id"] for r in rows if r["action"] == "undo"}
    return [r for r in rows if r["reviewer"] == reviewer and r["action"] != "undo" and r["id"] not in undone]


def _plan_event(new: NewEvent, rows: list[dict], *, now: datetime, actor: Actor | None = None) -> dict:
    """The row to insert for `new`, given the sample's existing rows (validated input)."""
    before = derive_state(new.sample_id, rows)
    # The dataset's label: as the caller gives it, else as the sample's first event recorded it.
    given = new.given_label if new.given_label is not None else (rows[0]["previous_label"] if rows else None)
    current = before.label if before.label is not None else given
    reverts_id = None
    adjudication = new.adjudication
    if new.action == "undo":
        target = _undo_target(new, rows, actor)
        reverts_id = target["id"]
        adjudication = False
        after = derive_state(new.sample_id, [*rows, {**target, "id": -1, "action": "undo", "reverts_id": reverts_id,
                                                   "reviewer": new.reviewer, "created_at": now}])
        new_label = after.label if after.label is not None else given
    elif new.action in ("relabel", "label"):
        new_label = new.label
    elif new.action == "confirm":
        new_label = new.label if new.label is not None else current
        if new_label is None:
            raise ValueError(f"confirm on sample {new.sample_id!r} needs the label being confirmed: pass label= or "
                             "given_label= (the dataset's label)")
    else:  # unsure, exclude: the label stays
        new_label = current
    return {
        "sample_id": new.sample_id,
        "previous_label": current,
        "new_label": new_label,
        "action": new.action,
        "reviewer": new.reviewer,
        "created_at": now,
        "note": new.note,
        "checkpoint": new.checkpoint,
        "adjudication": adjudication,
        "reverts_id": reverts_id,
    }


def _undo_target(new: NewEvent, rows: list[dict], actor: Actor | None) -> dict:
    """The event an undo reverts: the named one (its author, or a lead, may), else the reviewer's latest."""
    if new.reverts_id is None:
        mine = _effective_of(rows, new.reviewer)
        if not mine:
            raise ValueError(f"nothing to undo: reviewer {new.reviewer!r} has no effective event on sample "
                             f"{new.sample_id!r}")
        return mine[-1]
    target = next((r for r in rows if r["id"] == new.reverts_id), None)
    if target is None:
        raise ValueError(f"event {new.reverts_id} is not an event of sample {new.sample_id!r}")
    undone = {r["reverts_id"] for r in rows if r["action"] == "undo"}
    if target["action"] == "undo" or target["id"] in undone:
        raise ValueError(f"event {new.reverts_id} is {'an undo' if target['action'] == 'undo' else 'undone already'}"
                         "; there is no redo: record the decision again instead")
    if target["reviewer"] != new.reviewer and actor is not None:
        actor.require("undo_others")
    return target


def _as_actor(new: NewEvent, actor: Actor | None) -> NewEvent:
    """`new` recorded under `actor.name` (AccessError when it names someone else); unchanged without an actor."""
    if actor is None or not isinstance(new, NewEvent):
        return new
    if new.reviewer is None or (isinstance(new.reviewer, str) and not new.reviewer.strip()):
        return replace(new, reviewer=actor.name)
    if not isinstance(new.reviewer, str) or new.reviewer.strip() != actor.name:
        raise AccessError(f"{actor.name!r} may not record events as {new.reviewer!r}: events are recorded under the "
                          "identity of whoever makes them")
    return new


def _validate_new_event(new: NewEvent) -> NewEvent:
    if not isinstance(new, NewEvent):
        raise TypeError(f"expected NewEvent, got {type(new).__name__}")
    reviewer = validate_reviewer(new.reviewer)
    if not isinstance(new.sample_id, str) or not new.sample_id:
        raise ValueError(f"sample_id must be a non-empty string, got {new.sample_id!r}")
    if new.action not in ACTIONS:
        raise ValueError(f"action {new.action!r} is not one of {list(ACTIONS)}")
    label = new.label
    if label is not None and (not isinstance(label, str) or not label.strip()):
        raise ValueError(f"label must be a non-empty class name, got {label!r}")
    if new.action in ("relabel", "label") and label is None:
        raise ValueError(f"{new.action} of sample {new.sample_id!r} needs the new class: pass label=")
    if new.action in _NO_LABEL_ACTIONS and label is not None:
        raise ValueError(f"{new.action} takes no label (got {label!r}); use relabel or confirm to set one")
    if new.reverts_id is not None and (new.action != "undo" or isinstance(new.reverts_id, bool)
                                       or not isinstance(new.reverts_id, int)):
        raise ValueError(f"reverts_id={new.reverts_id!r}: only an undo names the event (an int id) it reverts")
    note = new.note or ""
    limit = MAX_BULK_NOTE_LENGTH if new.action == "auto_accept" else MAX_NOTE_LENGTH
    if not isinstance(note, str) or len(note) > limit:
        raise ValueError(f"note must be text of at most {limit} characters")
    return NewEvent(new.sample_id, new.action, reviewer, label, new.given_label, note, new.checkpoint,
                    bool(new.adjudication), new.reverts_id)


def _event_queries(sample_ids: Sequence[str] | None, reviewer: str | None) -> Iterator[sa.Select]:
    base = sa.select(label_events)
    if reviewer is not None:
        base = base.where(label_events.c.reviewer == reviewer)
    if sample_ids is None:
        yield base.order_by(label_events.c.id)
        return
    for start in range(0, len(sample_ids), _IN_CHUNK):
        chunk = list(sample_ids[start:start + _IN_CHUNK])
        yield base.where(label_events.c.sample_id.in_(chunk)).order_by(label_events.c.id)


def _event_from_row(row: Mapping[str, Any]) -> LabelEvent:
    return LabelEvent(
        id=int(row["id"]),
        sample_id=row["sample_id"],
        previous_label=row["previous_label"],
        new_label=row["new_label"],
        action=row["action"],
        reviewer=row["reviewer"],
        created_at=_as_utc(row["created_at"]),
        note=row["note"] or "",
        checkpoint=row["checkpoint"],
        adjudication=bool(row["adjudication"]),
        reverts_id=None if row["reverts_id"] is None else int(row["reverts_id"]),
        prev_hash=row.get("prev_hash") or "",
        event_hash=row.get("event_hash") or "",
    )


def _as_utc(value: datetime) -> datetime:
    # SQLite returns naive datetimes (we only ever store UTC); PostgreSQL returns aware ones.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# ------------------------------------------------------------------------------------------ engine plumbing


def _normalise_url(url: str) -> str:
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"label store URL must be a non-empty string, got {url!r}")
    url = url.strip()
    if url.startswith("postgres://"):  # the Heroku-style spelling
        url = "postgresql://" + url[len("postgres://"):]
    return url


def _install_sqlite_hooks(engine: Engine, *, busy_timeout_ms: int, synchronous: str) -> None:
    @sa_event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from sqlite3 (see SQLAlchemy's SQLite "transactions" docs), so that
        # BEGIN is ours: DEFERRED for reads, IMMEDIATE for writes (no lock-upgrade deadlocks between writers).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cursor.execute("PRAGMA journal_mode = WAL")  # readers never block the writer, and vice versa
        cursor.execute(f"PRAGMA synchronous = {synchronous}")  # NORMAL in WAL: a process crash loses no commit
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @sa_event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("taxalens_write") else "BEGIN")


_ALEMBIC: tuple | None = None
_FILE_HEAD: list[str | None] = []  # the head `_head_from_files` read, once per process
_REVISION_LINE = re.compile(r"^(revision|down_revision)\s*(?::[^=\n]*)?=\s*(?:None|[\"']([^\"'\n]+)[\"'])\s*$", re.M)
_MIGRATION_THREAD_LOCK = threading.Lock()  # the alembic Config is shared per process


def _head_from_files() -> str | None:
    """The newest migration's revision, read from the `revision = "..."` and `down_revision = ...` lines of the
    version files (no Alembic import); None, so that Alembic decides, unless every file has both lines and the
    revisions form one unbranched chain from a single root."""
    if not _FILE_HEAD:
        parent_of: dict[str, str | None] = {}
        for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
            found = {m.group(1): m.group(2) for m in _REVISION_LINE.finditer(path.read_text(encoding="utf-8"))}
            if found.get("revision") is None or "down_revision" not in found or found["revision"] in parent_of:
                parent_of = {}
                break
            parent_of[found["revision"]] = found["down_revision"]
        parents = list(parent_of.values())
        heads = set(parent_of) - set(parents)
        chain = (len(heads) == 1 and parents.count(None) == 1 and len(set(parents)) == len(parents)
                 and all(p is None or p in parent_of for p in parents))
        _FILE_HEAD.append(heads.pop() if chain else None)
    return _FILE_HEAD[0]


def _alembic_scripts() -> tuple[Any, frozenset[str], str]:
    """(alembic Config, known revision ids, head revision), read once per process."""
    global _ALEMBIC
    if _ALEMBIC is None:
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        script = ScriptDirectory.from_config(config)
        known = frozenset(rev.revision for rev in script.walk_revisions())
        _ALEMBIC = (config, known, script.get_current_head())
    return _ALEMBIC
