"""The fleet's readings per minute, for the overview's traffic chart at 100,000 devices (issue 28).

`/accueil`'s chart (readings per minute over the last hour) summed every device's 1-minute roll-ups of the hour:
100,000 rows and more at 100,000 devices, most of the page's 0.3–1 s. `rollup_fleet_minute` holds, per minute and
ingest worker, the readings the worker added to `rollup_minute` in the same transaction (db/rollups.py's
`upsert`); the chart reads about 60 rows. Filled here from the roll-ups already recorded, as worker 0.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sensorhub.db.postgres import check

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_STAMP = "[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-5][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]"


def upgrade() -> None:
    """Create `rollup_fleet_minute` and fill it from `rollup_minute`."""
    op.create_table(
        "rollup_fleet_minute",
        sa.Column("start", sa.String(26), nullable=False),
        sa.Column("worker", sa.Integer, nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("start", "worker", name="pk_rollup_fleet_minute"),
        sa.CheckConstraint("count >= 0", name="rollup_fleet_minute_count"),
        sa.CheckConstraint(check(f"start GLOB '{_STAMP}'", op.get_bind().dialect.name), name="start_format"),
        sqlite_with_rowid=False,
    )
    op.execute("INSERT INTO rollup_fleet_minute (start, worker, count) SELECT start, 0, sum(count) "
               "FROM rollup_minute GROUP BY start HAVING sum(count) > 0")


def downgrade() -> None:
    """sensorhub does not downgrade: restore a backup instead (docs/operations.md, "Backups and restore")."""
    raise NotImplementedError("restore a backup taken before the upgrade")
