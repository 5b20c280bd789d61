"""Alembic environment: run with the connection `storage.db.migrate` hands over (no alembic.ini needed)."""

from __future__ import annotations

from alembic import context

from cds_service.storage.tables import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
