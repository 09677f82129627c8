"""The schema of sensorhub's first release: devices and their LED, button and light readings.

A database made before migrations existed (PRAGMA user_version = 1, no alembic_version table) is stamped with
this revision instead of running it (sensorhub.db.schema).

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sensorhub.db import postgres

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_STAMP = "[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-5][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]"
_MAC = ":".join(["[0-9A-F][0-9A-F]"] * 6)


def _check(expression: str, name: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(postgres.check(expression, op.get_bind().dialect.name), name=name)


def _stamp_check(column: str) -> sa.CheckConstraint:
    return _check(f"{column} GLOB '{_STAMP}'", f"{column}_format")


def _postgresql() -> bool:
    return bool(op.get_bind().dialect.name == "postgresql")


def _reading_table(table: str, check: str) -> None:
    op.create_table(
        table,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("device_id", sa.Integer, sa.ForeignKey("device.id", ondelete="CASCADE"), nullable=False),
        sa.Column("at", sa.String(26), nullable=False),
        sa.Column("value", sa.Integer, nullable=False),
        _check(f"typeof(value) = 'integer' AND {check}", f"{table.split('_')[0]}_value"),
        _stamp_check("at"),
    )
    op.create_index(f"ix_{table}_device_at", table, ["device_id", "at"])
    if _postgresql():
        for statement in postgres.reading_triggers(table):
            op.execute(statement)
        return
    op.execute(f"""CREATE TRIGGER {table}_insert_check BEFORE INSERT ON {table}
        BEGIN
            SELECT RAISE(ABORT, '{table}: unknown device')
            WHERE NOT EXISTS (SELECT 1 FROM device WHERE id = NEW.device_id);
            SELECT RAISE(ABORT, '{table}: a reading must be after the device joined')
            WHERE NEW.at <= (SELECT joined_at FROM device WHERE id = NEW.device_id);
            SELECT RAISE(ABORT, '{table}: a reading cannot be in the future')
            WHERE NEW.at > strftime('%Y-%m-%d %H:%M:%f', 'now', '+1 seconds');
        END""")
    op.execute(f"""CREATE TRIGGER {table}_at_immutable BEFORE UPDATE OF at ON {table}
        WHEN NEW.at IS NOT OLD.at
        BEGIN
            SELECT RAISE(ABORT, '{table}: a reading''s timestamp cannot change');
        END""")
    op.execute(f"""CREATE TRIGGER {table}_device_immutable BEFORE UPDATE OF device_id ON {table}
        WHEN NEW.device_id IS NOT OLD.device_id
        BEGIN
            SELECT RAISE(ABORT, '{table}: a reading cannot move to another device');
        END""")


def upgrade() -> None:
    """Create the first release's tables, indexes and triggers."""
    name_rule = "length({c}) BETWEEN 1 AND 29 AND instr({c}, ';') = 0 AND {c} NOT GLOB '*[^ -~]*' AND {c} = trim({c})"
    op.create_table(
        "device",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(29), nullable=False, unique=True),
        sa.Column("session_name", sa.String(29), nullable=False, unique=True),
        sa.Column("mac", sa.String(17), nullable=False, unique=True),
        sa.Column("online", sa.Boolean, nullable=False),
        sa.Column("session_id", sa.String(17), nullable=False),
        sa.Column("joined_at", sa.String(26), nullable=False),
        sa.Column("last_seen", sa.String(26), nullable=False),
        _check(name_rule.format(c="name"), "name_format"),
        _check(name_rule.format(c="session_name"), "session_name_format"),
        _check(f"mac GLOB '{_MAC}'", "mac_format"),
        _check("length(session_id) BETWEEN 1 AND 17 AND session_id NOT GLOB '*[^!-~]*' "
               "AND instr(session_id, ';') = 0", "session_id_format"),
        _check("online IN (0, 1)", "online_boolean"),
        _stamp_check("joined_at"),
        _stamp_check("last_seen"),
        sa.CheckConstraint("joined_at <= last_seen", name="seen_after_joined"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_device_last_seen", "device", ["last_seen", "id"])
    op.create_index("ix_device_online", "device", ["online"])
    for table, check in (("led_reading", "value IN (0, 1)"), ("button_reading", "value IN (0, 1)"),
                         ("light_reading", "value BETWEEN 0 AND 100")):
        _reading_table(table, check)
    if _postgresql():
        for statement in postgres.device_triggers():
            op.execute(statement)
        return
    op.execute("""CREATE TRIGGER device_insert_check BEFORE INSERT ON device
    BEGIN
        SELECT RAISE(ABORT, 'device: joined_at cannot be in the future')
        WHERE NEW.joined_at > strftime('%Y-%m-%d %H:%M:%f', 'now', '+1 seconds');
        SELECT RAISE(ABORT, 'device: a new device uses its name in its session')
        WHERE NEW.session_name IS NOT NEW.name;
        SELECT RAISE(ABORT, 'device: name already used by another device''s session')
        WHERE EXISTS (SELECT 1 FROM device WHERE session_name = NEW.name);
    END""")
    op.execute("""CREATE TRIGGER device_joined_at_immutable BEFORE UPDATE OF joined_at ON device
    WHEN NEW.joined_at IS NOT OLD.joined_at
    BEGIN
        SELECT RAISE(ABORT, 'device: joined_at cannot change');
    END""")
    op.execute("""CREATE TRIGGER device_last_seen_check BEFORE UPDATE OF last_seen ON device
    WHEN NEW.last_seen > strftime('%Y-%m-%d %H:%M:%f', 'now', '+1 seconds')
    BEGIN
        SELECT RAISE(ABORT, 'device: last_seen cannot be in the future');
    END""")
    op.execute("""CREATE TRIGGER device_name_check BEFORE UPDATE OF name ON device
    WHEN NEW.name IS NOT OLD.name
    BEGIN
        SELECT RAISE(ABORT, 'device: name already used by another device''s session')
        WHERE EXISTS (SELECT 1 FROM device WHERE session_name = NEW.name AND id != NEW.id);
    END""")
    op.execute("""CREATE TRIGGER device_session_name_check BEFORE UPDATE OF session_name ON device
    WHEN NEW.session_name IS NOT OLD.session_name
    BEGIN
        SELECT RAISE(ABORT, 'device: a session can only take the device''s current name')
        WHERE NEW.session_name IS NOT NEW.name;
    END""")


def downgrade() -> None:
    """sensorhub does not downgrade: restore a backup instead (docs/operations.md, "Backups and restore")."""
    raise NotImplementedError("restore a backup taken before the upgrade")
