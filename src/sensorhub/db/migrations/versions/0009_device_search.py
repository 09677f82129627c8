"""Pages of 100,000 devices (issue 28): online devices by name or last message; searching a name or MAC.

`ix_device_online_name` and `ix_device_online_seen` serve a page of /capteurs (online or offline devices by name,
or by their last message) and its counts from the index alone: without them, 100,000 silent devices were counted
through `ix_device_last_seen` and a row read for each (0.9 s on SQLite).

`?q=` finds devices whose name (or MAC) contains the text, ignoring case: `lower(x) LIKE '%…%'`, which no B-tree
serves. PostgreSQL's pg_trgm GIN indexes do (one name among 100,000 in a few milliseconds). SQLite gets nothing:
db/listing.py scans its narrow unique indexes of name and MAC, a tenth of the table. pg_trgm is a "trusted"
extension: the database's owner may create it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

from sensorhub.db.postgres import SEARCH_INDEXES

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the two listing indexes; on PostgreSQL, pg_trgm and the two search indexes."""
    op.create_index("ix_device_online_name", "device", ["online", "name"])
    op.create_index("ix_device_online_seen", "device", ["online", "last_seen", "id"])
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    for statement in SEARCH_INDEXES.values():
        op.execute(statement)


def downgrade() -> None:
    """Drop the indexes (the extension stays: other databases of the cluster may use it)."""
    op.drop_index("ix_device_online_seen", "device")
    op.drop_index("ix_device_online_name", "device")
    if op.get_bind().dialect.name == "postgresql":
        for name in SEARCH_INDEXES:
            op.execute(f"DROP INDEX {name}")
