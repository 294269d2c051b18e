"""Alembic environment: runs on the connection handed over by ``store.migrate``."""

from alembic import context

from sylphx._server.store.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only via store.migrate
    raise RuntimeError("run migrations through sylphx._server.store.migrate()")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
