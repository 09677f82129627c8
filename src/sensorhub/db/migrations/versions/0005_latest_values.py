"""Each device's latest LED, button and light value (and its time) in the device row (issue 14).

Lists of devices (`/api/devices`, the pages) read them instead of searching each reading table's index once per
device and kind (6,000 searches for 2,000 devices). The ingest client keeps them up to date; the upgrade fills
them from the readings already recorded (db/latest.py).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the nullable latest value columns and fill them from the reading tables."""
    from sensorhub.db.latest import COLUMNS, refresh_latest

    for _table, value, at in COLUMNS.values():
        op.add_column("device", sa.Column(value, sa.Integer, nullable=True))
        op.add_column("device", sa.Column(at, sa.String(26), nullable=True))
    refresh_latest(op.get_bind())


def downgrade() -> None:
    """sensorhub does not downgrade: restore a backup instead (docs/operations.md, "Backups and restore")."""
    raise NotImplementedError("restore a backup taken before the upgrade")
