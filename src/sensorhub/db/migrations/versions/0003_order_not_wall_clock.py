"""Time stamps survive clock steps; what the database refuses is kept aside, never dropped (reliability issue).

The first release's triggers refused any time stamp ahead of the database's wall clock: when the clock
stepped back (NTP on a Raspberry Pi without a real-time clock), every reading was refused and lost. The ingest
client now stamps each device's messages in increasing order whatever the clock does; the database checks
that order (a reading after its device joined, a `last_seen` that never goes back), not the wall clock.

`quarantine` keeps, with the reason, every valid message the database refused, so that nothing acknowledged
disappears.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sensorhub.db import postgres

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_STAMP = "[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-5][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]"
_READINGS = ("led_reading", "button_reading", "light_reading")


def upgrade() -> None:
    """Replace the wall-clock triggers by order checks; add the quarantine table."""
    if op.get_bind().dialect.name == "postgresql":
        statements = [s for table in _READINGS for s in postgres.reading_insert_check(table, wall_clock=False)]
        statements += postgres.device_insert_check(wall_clock=False) + postgres.device_last_seen_check(wall_clock=False)
        for statement in statements:
            op.execute(statement)
    else:
        _sqlite_triggers()
    _create_quarantine()


def _sqlite_triggers() -> None:
    for table in _READINGS:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_insert_check")
        op.execute(f"""CREATE TRIGGER {table}_insert_check BEFORE INSERT ON {table}
        BEGIN
            SELECT RAISE(ABORT, '{table}: unknown device')
            WHERE NOT EXISTS (SELECT 1 FROM device WHERE id = NEW.device_id);
            SELECT RAISE(ABORT, '{table}: a reading must be after the device joined')
            WHERE NEW.at <= (SELECT joined_at FROM device WHERE id = NEW.device_id);
        END""")
    op.execute("DROP TRIGGER IF EXISTS device_insert_check")
    op.execute("""CREATE TRIGGER device_insert_check BEFORE INSERT ON device
    BEGIN
        SELECT RAISE(ABORT, 'device: a new device uses its name in its session')
        WHERE NEW.session_name IS NOT NEW.name;
        SELECT RAISE(ABORT, 'device: name already used by another device''s session')
        WHERE EXISTS (SELECT 1 FROM device WHERE session_name = NEW.name);
    END""")
    op.execute("DROP TRIGGER IF EXISTS device_last_seen_check")
    op.execute("""CREATE TRIGGER device_last_seen_check BEFORE UPDATE OF last_seen ON device
    WHEN NEW.last_seen < OLD.last_seen
    BEGIN
        SELECT RAISE(ABORT, 'device: last_seen cannot go back');
    END""")


def _create_quarantine() -> None:
    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("received_at", sa.String(26), nullable=False),
        sa.Column("topic", sa.String(64), nullable=False),
        sa.Column("payload", sa.String(256), nullable=False),
        sa.Column("reason", sa.String(512), nullable=False),
        sa.CheckConstraint(postgres.check(f"received_at GLOB '{_STAMP}'", op.get_bind().dialect.name),
                           name="received_at_format"),
    )
    op.create_index("ix_quarantine_received_at", "quarantine", ["received_at"])


def downgrade() -> None:
    """sensorhub does not downgrade: restore a backup instead (docs/operations.md, "Backups and restore")."""
    raise NotImplementedError("restore a backup taken before the upgrade")
