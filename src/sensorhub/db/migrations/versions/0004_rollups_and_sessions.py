"""Data over time: 1-minute and 1-hour roll-ups of the readings, and a log of each device's sessions.

`rollup_minute` and `rollup_hour` hold, per device, kind and bucket, the count, minimum, maximum and sum of the
readings and the LED / button on-time; the ingest client keeps them up to date in the same transaction as the
readings. `device_session` records when each session started, came online and ended.

The upgrade fills both from what the database holds: every device's current session (the only one known),
and the roll-ups of every reading already recorded (one pass over each reading table, once).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sensorhub.db.postgres import check

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_STAMP = "[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-5][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]"


def _check(expression: str, name: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(check(expression, op.get_bind().dialect.name), name=name)


def _rollup_table(table: str) -> None:
    op.create_table(
        table,
        sa.Column("device_id", sa.Integer, sa.ForeignKey("device.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(6), nullable=False),
        sa.Column("start", sa.String(26), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("low", sa.Integer, nullable=True),
        sa.Column("high", sa.Integer, nullable=True),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("on_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("device_id", "kind", "start", name=f"pk_{table}"),
        sa.CheckConstraint("kind IN ('led', 'button', 'light')", name=f"{table}_kind"),
        sa.CheckConstraint("count >= 0 AND total >= 0 AND on_us >= 0", name=f"{table}_counts"),
        _check(f"start GLOB '{_STAMP}'", "start_format"),
        sqlite_with_rowid=False,
    )


def _session_start(session_id: str, joined_at: str, last_seen: str) -> str:
    """When the current session started: its id is the time it was handed out, in µs (protocol.new_session_id)."""
    from sensorhub.timestamps import format_micros

    seconds, _, fraction = session_id.partition(".")
    if seconds.isdigit() and fraction.isdigit() and len(fraction) == 6:
        started = format_micros(int(seconds) * 1_000_000 + int(fraction))
        if joined_at <= started <= last_seen:
            return started
    return joined_at


def upgrade() -> None:
    """Create the roll-up and session tables and fill them from the devices and readings already recorded."""
    _rollup_table("rollup_minute")
    _rollup_table("rollup_hour")
    op.create_table(
        "device_session",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("device_id", sa.Integer, sa.ForeignKey("device.id", ondelete="CASCADE"), nullable=False),
        sa.Column("session_id", sa.String(17), nullable=False),
        sa.Column("started_at", sa.String(26), nullable=False),
        sa.Column("online_at", sa.String(26), nullable=True),
        sa.Column("ended_at", sa.String(26), nullable=True),
        _check(f"started_at GLOB '{_STAMP}'", "started_at_format"),
        _check(f"online_at IS NULL OR online_at GLOB '{_STAMP}'", "online_at_format"),
        _check(f"ended_at IS NULL OR ended_at GLOB '{_STAMP}'", "ended_at_format"),
    )
    op.create_index("ix_device_session_device_started", "device_session", ["device_id", "started_at"])
    conn = op.get_bind()
    sessions = []
    for device_id, session_id, online, joined_at, last_seen in conn.execute(
            sa.text("SELECT id, session_id, online, joined_at, last_seen FROM device ORDER BY id")):
        started = _session_start(str(session_id), str(joined_at), str(last_seen))
        sessions.append({"device_id": device_id, "session_id": session_id, "started_at": started,
                         "online_at": started if online else None, "ended_at": None if online else last_seen})
    if sessions:
        conn.execute(sa.text("INSERT INTO device_session (device_id, session_id, started_at, online_at, ended_at) "
                             "VALUES (:device_id, :session_id, :started_at, :online_at, :ended_at)"), sessions)
    from sensorhub.db.rollups import rebuild

    rebuild(conn, fleet=False)  # the fleet's table comes with 0011, which fills it


def downgrade() -> None:
    """sensorhub does not downgrade: restore a backup instead (docs/operations.md, "Backups and restore")."""
    raise NotImplementedError("restore a backup taken before the upgrade")
