"""Presence decided in the database, where every worker sees it (issue 22).

`presence_at` is the time of the message that last set a device's `online` in its session: a join, a leave or
an outage applied by one worker is applied only if it is later than what another worker applied. `lost` marks a
device taken offline only because the broker was out of reach: whichever worker hears it next in its session
brings it back. Existing rows get NULL (no decision recorded yet: any later message decides) and FALSE.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add `presence_at`, `lost` and the partial index of lost devices."""
    op.add_column("device", sa.Column("presence_at", sa.String(26), nullable=True))
    op.add_column("device", sa.Column("lost", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_index("ix_device_lost", "device", ["id"], sqlite_where=sa.text("lost"),
                    postgresql_where=sa.text("lost"))


def downgrade() -> None:
    """sensorhub does not downgrade: restore a backup instead (docs/operations.md, "Backups and restore")."""
    raise NotImplementedError("restore a backup taken before the upgrade")
