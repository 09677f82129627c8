"""Alembic environment: migrations run on the connection sensorhub hands over (never from alembic.ini)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from sensorhub.db.models import Base

connection: Connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite alters tables by copying them ("batch mode").
    render_as_batch=connection.dialect.name == "sqlite",
    transaction_per_migration=True,
)
with context.begin_transaction():
    context.run_migrations()
