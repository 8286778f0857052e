"""Alembic environment: runs on the connection that `upgrade()` passes in."""

from __future__ import annotations

from alembic import context

from hoody.control.db import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "hoody migrations run in code: call hoody.control.migrations.upgrade(engine)"
    )
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
context.run_migrations()
