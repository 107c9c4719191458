"""Refuse UPDATE, DELETE (and on PostgreSQL TRUNCATE) of label events at the database level.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-01
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_MESSAGE = "label_events is append-only: record a new event (e.g. undo) instead of changing history"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER label_events_no_{operation.lower()} BEFORE {operation} ON label_events "
                f"BEGIN SELECT RAISE(ABORT, '{_MESSAGE} ({operation} refused)'); END"
            )
    elif dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION label_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN RAISE EXCEPTION USING MESSAGE = '{_MESSAGE} (' || TG_OP || ' refused)', "
            "ERRCODE = 'restrict_violation'; END; $$"
        )
        op.execute(
            "CREATE TRIGGER label_events_no_change BEFORE UPDATE OR DELETE ON label_events "
            "FOR EACH ROW EXECUTE FUNCTION label_events_append_only()"
        )
        op.execute(
            "CREATE TRIGGER label_events_no_truncate BEFORE TRUNCATE ON label_events "
            "FOR EACH STATEMENT EXECUTE FUNCTION label_events_append_only()"
        )
    else:
        raise NotImplementedError(f"label store on {dialect!r}: only sqlite and postgresql are supported")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS label_events_no_update")
        op.execute("DROP TRIGGER IF EXISTS label_events_no_delete")
    elif dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS label_events_no_change ON label_events")
        op.execute("DROP TRIGGER IF EXISTS label_events_no_truncate ON label_events")
        op.execute("DROP FUNCTION IF EXISTS label_events_append_only()")
