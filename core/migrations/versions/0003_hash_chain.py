"""Hash-chain the label events, refuse an insert over an existing event, and (PostgreSQL) an INSERT+SELECT role.

- Adds `prev_hash` and `event_hash` (see `core.labelchain`) and back-fills the chain of the existing events in id
  order (the UPDATE triggers of 0002 are lifted for that one statement and restored in the same transaction).
- A unique index on `prev_hash`: two events can never chain onto the same predecessor (the chain stays linear
  whatever a writer does).
- SQLite: `INSERT OR REPLACE` / `REPLACE INTO` delete the conflicting row without firing DELETE triggers (unless a
  connection turns on `recursive_triggers`), and an UPSERT rewrites it; a BEFORE INSERT trigger refuses any insert
  whose id (or undo target) is already recorded, and any insert without hashes, before a conflict can be resolved.
  PostgreSQL refuses such an insert through the primary key, and `ON CONFLICT DO UPDATE` through 0002's UPDATE
  trigger; the hash columns become NOT NULL.
- PostgreSQL: the NOLOGIN role `taxalens_writer` may SELECT and INSERT label events and read the schema revision,
  nothing else (created when the migrating account may create roles; README "Running for a team" has the SQL
  otherwise). The dashboard connects as a login role that is a member of it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

from core.labelchain import GENESIS_HASH, event_hash

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

logger = logging.getLogger(__name__)

WRITER_ROLE = "taxalens_writer"
_NO_UPDATE_0002 = ("CREATE TRIGGER label_events_no_update BEFORE UPDATE ON label_events BEGIN SELECT RAISE(ABORT, "
                   "'label_events is append-only: record a new event (e.g. undo) instead of changing history "
                   "(UPDATE refused)'); END")
_SQLITE_NO_OVERWRITE = (
    "CREATE TRIGGER label_events_no_overwrite BEFORE INSERT ON label_events "
    "WHEN EXISTS (SELECT 1 FROM label_events WHERE id = NEW.id) "
    "OR (NEW.reverts_id IS NOT NULL AND EXISTS (SELECT 1 FROM label_events WHERE reverts_id = NEW.reverts_id)) "
    "BEGIN SELECT RAISE(ABORT, 'label_events is append-only: an event with this id (or an undo of this event) is "
    "already recorded; REPLACE and UPSERT are refused, record a new event instead'); END"
)
_SQLITE_HASHES_REQUIRED = (
    "CREATE TRIGGER label_events_hashes_required BEFORE INSERT ON label_events "
    "WHEN NEW.prev_hash IS NULL OR NEW.event_hash IS NULL OR length(NEW.event_hash) <> 64 "
    "BEGIN SELECT RAISE(ABORT, 'label_events rows carry prev_hash and event_hash: write events through TaxaLens "
    "(core.labelstore), which chains them'); END"
)

_events = sa.table(
    "label_events",
    sa.column("id", sa.BigInteger()),
    sa.column("sample_id", sa.Text()),
    sa.column("previous_label", sa.Text()),
    sa.column("new_label", sa.Text()),
    sa.column("action", sa.String(16)),
    sa.column("reviewer", sa.Text()),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("note", sa.Text()),
    sa.column("checkpoint", sa.Text()),
    sa.column("adjudication", sa.Boolean()),
    sa.column("reverts_id", sa.BigInteger()),
)


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    op.add_column("label_events", sa.Column("prev_hash", sa.String(64), nullable=True))
    op.add_column("label_events", sa.Column("event_hash", sa.String(64), nullable=True))
    _backfill(bind, dialect)
    op.create_index("ux_label_events_prev_hash", "label_events", ["prev_hash"], unique=True)
    if dialect == "sqlite":
        op.execute(_SQLITE_NO_OVERWRITE)
        op.execute(_SQLITE_HASHES_REQUIRED)
    elif dialect == "postgresql":
        op.alter_column("label_events", "prev_hash", nullable=False)
        op.alter_column("label_events", "event_hash", nullable=False)
        _create_writer_role(bind)
    else:
        raise NotImplementedError(f"label store on {dialect!r}: only sqlite and postgresql are supported")


def _backfill(bind: sa.Connection, dialect: str) -> None:
    rows = [dict(r) for r in bind.execute(sa.select(_events).order_by(_events.c.id)).mappings()]
    if not rows:
        return
    updates, prev = [], GENESIS_HASH
    for row in rows:
        digest = event_hash(row, prev)
        updates.append({"row_id": row["id"], "p": prev, "h": digest})
        prev = digest
    statement = sa.text("UPDATE label_events SET prev_hash = :p, event_hash = :h WHERE id = :row_id")
    if dialect == "sqlite":
        op.execute("DROP TRIGGER label_events_no_update")
        bind.execute(statement, updates)
        op.execute(_NO_UPDATE_0002)
    else:
        op.execute("ALTER TABLE label_events DISABLE TRIGGER label_events_no_change")
        bind.execute(statement, updates)
        op.execute("ALTER TABLE label_events ENABLE TRIGGER label_events_no_change")
    logger.info("label store: hash chain back-filled over %d existing events", len(rows))


def _create_writer_role(bind: sa.Connection) -> None:
    may_create = bind.execute(sa.text(
        "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user")).scalar()
    if not may_create:
        logger.warning("label store: %s may not create roles; create the %s role by hand (README, Running for a "
                       "team)", bind.execute(sa.text("SELECT current_user")).scalar(), WRITER_ROLE)
        return
    # Roles belong to the whole server: another database's migration may have created it already.
    op.execute(f"DO $$ BEGIN CREATE ROLE {WRITER_ROLE} NOLOGIN; "
               "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$")
    op.execute(f"GRANT SELECT, INSERT ON label_events TO {WRITER_ROLE}")
    op.execute(f"GRANT SELECT ON alembic_version TO {WRITER_ROLE}")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS label_events_no_overwrite")
        op.execute("DROP TRIGGER IF EXISTS label_events_hashes_required")
    elif dialect == "postgresql":
        op.execute(f"DO $$ BEGIN REVOKE ALL ON label_events FROM {WRITER_ROLE}; "
                   f"REVOKE ALL ON alembic_version FROM {WRITER_ROLE}; EXCEPTION WHEN undefined_object THEN NULL; "
                   "END $$")
    op.drop_index("ux_label_events_prev_hash", "label_events")
    op.drop_column("label_events", "event_hash")
    op.drop_column("label_events", "prev_hash")
