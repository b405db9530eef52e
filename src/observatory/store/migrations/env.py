"""Alembic environment: migrations run on the connection handed over by store.engine.migrate."""

from __future__ import annotations

from alembic import context

from observatory.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reached when alembic is run by hand
    raise RuntimeError("run migrations with `observatory migrate`")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
