"""Alembic environment: runs the migrations on the connection medai hands over."""

from __future__ import annotations

from alembic import context

from medai.service.db import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("medai's migrations run through medai.service.migrate.upgrade()")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
