"""Create the append-only `label_events` table and its query indexes.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "label_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("sample_id", sa.Text(), nullable=False),
        sa.Column("previous_label", sa.Text(), nullable=True),
        sa.Column("new_label", sa.Text(), nullable=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("reviewer", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text(), nullable=False, server_default=""),
        sa.Column("checkpoint", sa.Text(), nullable=True),
        sa.Column("adjudication", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("reverts_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.CheckConstraint(
            "action IN ('confirm', 'relabel', 'unsure', 'exclude', 'undo')", name="ck_label_events_action"
        ),
        sa.CheckConstraint("length(reviewer) > 0", name="ck_label_events_reviewer"),
        sa.CheckConstraint(
            "(action = 'undo' AND reverts_id IS NOT NULL) OR (action <> 'undo' AND reverts_id IS NULL)",
            name="ck_label_events_undo_target",
        ),
        sa.ForeignKeyConstraint(["reverts_id"], ["label_events.id"], name="fk_label_events_reverts"),
    )
    op.create_index("ix_label_events_sample", "label_events", ["sample_id", "id"])
    op.create_index("ix_label_events_reviewer", "label_events", ["reviewer", "sample_id"])
    # An event is undone at most once: two concurrent undos of the same event cannot both commit.
    op.create_index("ux_label_events_reverts", "label_events", ["reverts_id"], unique=True)


def downgrade() -> None:
    op.drop_table("label_events")
