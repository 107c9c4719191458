"""Allow the actions `label` (a pool image labelled in the annotation queue) and `auto_accept` (one bulk event
accepting every pool prediction above its class threshold).

Only the CHECK constraint `ck_label_events_action` changes, to a wider list; no row is touched, so the hash chain
and the append-only triggers stay as they are. PostgreSQL drops and re-adds the constraint. SQLite cannot alter a
CHECK constraint in place; this follows SQLite's documented procedure for loosening one ("ALTER TABLE", making other
kinds of schema changes): the table's stored CREATE statement is edited under `writable_schema` and the schema
version bumped, in the migration's transaction. Rebuilding the table instead would drop its triggers and fight its
self-referencing foreign key.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_OLD = "action IN ('confirm', 'relabel', 'unsure', 'exclude', 'undo')"
_NEW = "action IN ('confirm', 'relabel', 'unsure', 'exclude', 'undo', 'label', 'auto_accept')"


def _swap(before: str, after: str) -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    if dialect == "postgresql":
        op.execute("ALTER TABLE label_events DROP CONSTRAINT ck_label_events_action")
        op.execute(f"ALTER TABLE label_events ADD CONSTRAINT ck_label_events_action CHECK ({after})")
        return
    if dialect != "sqlite":
        raise NotImplementedError(f"label store on {dialect!r}: only sqlite and postgresql are supported")
    sql = bind.execute(sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'label_events'")
                       ).scalar_one()
    if before not in sql:
        raise RuntimeError(f"label_events has an unexpected action constraint; its schema is: {sql}")
    version = int(bind.exec_driver_sql("PRAGMA schema_version").scalar_one())
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    try:
        bind.execute(sa.text("UPDATE sqlite_master SET sql = :sql WHERE type = 'table' AND name = 'label_events'"),
                     {"sql": sql.replace(before, after)})
        bind.exec_driver_sql(f"PRAGMA schema_version = {version + 1}")
    finally:
        bind.exec_driver_sql("PRAGMA writable_schema = OFF")


def upgrade() -> None:
    _swap(_OLD, _NEW)


def downgrade() -> None:
    _swap(_NEW, _OLD)
