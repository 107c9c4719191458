"""Alembic environment of the label store: migrations run on a connection handed over by core.labelstore."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "the label store migrations run through core.labelstore.LabelStore(url), which passes its connection; "
        "open the store instead of calling the alembic command line"
    )
# The caller already holds a write transaction and a migration lock; alembic joins it instead of committing.
context.configure(connection=connection, target_metadata=None, transaction_per_migration=False)
with context.begin_transaction():
    context.run_migrations()
