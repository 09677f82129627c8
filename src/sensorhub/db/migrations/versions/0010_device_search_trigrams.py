"""Searching a name or MAC among 100,000 devices on SQLite from an index (issue 28): FTS5's trigram tokenizer.

Migration 0009 left SQLite scanning the unique indexes of name and MAC for `?q=` (15–25 ms of CPU at 100,000
devices, 170–200 ms p99 through gunicorn on a loaded machine). `device_search` (db/sqlite.py) is an FTS5 table
with the `trigram` tokenizer over each device's name and MAC, external content (it reads `device`, stores only the
index), kept in step by three triggers on `device`; existing devices are indexed here. A SQLite without FTS5's
trigram tokenizer (before 3.34) gets nothing and keeps searching as before (one warning line says so), until a
`sensorhub db upgrade` with a SQLite that has it (db/sqlite.py's `ensure_search`).
PostgreSQL has its pg_trgm indexes (0009): nothing to do there.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

import logging
import sqlite3

from alembic import op

from sensorhub.db import sqlite

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

logger = logging.getLogger(__name__)


def upgrade() -> None:
    """Create `device_search` and its triggers, and index every device (SQLite with FTS5's trigram tokenizer)."""
    if op.get_bind().dialect.name != "sqlite":
        return
    if not sqlite.trigram_available():
        logger.warning("SQLite %s lacks FTS5's trigram tokenizer (3.34 or later): names and MACs are searched "
                       "without an index", sqlite3.sqlite_version)
        return
    sqlite.ensure_search(op.get_bind())


def downgrade() -> None:
    """Drop the triggers and the table."""
    if op.get_bind().dialect.name == "sqlite":
        for statement in sqlite.DROP:
            op.execute(statement)
