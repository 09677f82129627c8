"""Engines with SQLite set up on connect (WAL, foreign keys, busy timeout) and the schema's triggers."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from sensorhub.db.models import Base
from sensorhub.errors import DatabaseError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000
# A reading may be stamped at most this far ahead of the database's clock (same machine: only rounding).
FUTURE_TOLERANCE = "+1 seconds"


def _reading_triggers(table: str) -> list[str]:
    return [
        f"""CREATE TRIGGER IF NOT EXISTS {table}_insert_check BEFORE INSERT ON {table}
        BEGIN
            SELECT RAISE(ABORT, '{table}: unknown device')
            WHERE NOT EXISTS (SELECT 1 FROM device WHERE id = NEW.device_id);
            SELECT RAISE(ABORT, '{table}: a reading must be after the device joined')
            WHERE NEW.at <= (SELECT joined_at FROM device WHERE id = NEW.device_id);
            SELECT RAISE(ABORT, '{table}: a reading cannot be in the future')
            WHERE NEW.at > strftime('%Y-%m-%d %H:%M:%f', 'now', '{FUTURE_TOLERANCE}');
        END""",
        f"""CREATE TRIGGER IF NOT EXISTS {table}_at_immutable BEFORE UPDATE OF at ON {table}
        WHEN NEW.at IS NOT OLD.at
        BEGIN
            SELECT RAISE(ABORT, '{table}: a reading''s timestamp cannot change');
        END""",
        f"""CREATE TRIGGER IF NOT EXISTS {table}_device_immutable BEFORE UPDATE OF device_id ON {table}
        WHEN NEW.device_id IS NOT OLD.device_id
        BEGIN
            SELECT RAISE(ABORT, '{table}: a reading cannot move to another device');
        END""",
    ]


TRIGGERS: list[str] = [
    *_reading_triggers("led_reading"),
    *_reading_triggers("button_reading"),
    *_reading_triggers("light_reading"),
    f"""CREATE TRIGGER IF NOT EXISTS device_insert_check BEFORE INSERT ON device
    BEGIN
        SELECT RAISE(ABORT, 'device: joined_at cannot be in the future')
        WHERE NEW.joined_at > strftime('%Y-%m-%d %H:%M:%f', 'now', '{FUTURE_TOLERANCE}');
        SELECT RAISE(ABORT, 'device: a new device uses its name in its session')
        WHERE NEW.session_name IS NOT NEW.name;
        SELECT RAISE(ABORT, 'device: name already used by another device''s session')
        WHERE EXISTS (SELECT 1 FROM device WHERE session_name = NEW.name);
    END""",
    """CREATE TRIGGER IF NOT EXISTS device_joined_at_immutable BEFORE UPDATE OF joined_at ON device
    WHEN NEW.joined_at IS NOT OLD.joined_at
    BEGIN
        SELECT RAISE(ABORT, 'device: joined_at cannot change');
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS device_last_seen_check BEFORE UPDATE OF last_seen ON device
    WHEN NEW.last_seen > strftime('%Y-%m-%d %H:%M:%f', 'now', '{FUTURE_TOLERANCE}')
    BEGIN
        SELECT RAISE(ABORT, 'device: last_seen cannot be in the future');
    END""",
    """CREATE TRIGGER IF NOT EXISTS device_name_check BEFORE UPDATE OF name ON device
    WHEN NEW.name IS NOT OLD.name
    BEGIN
        SELECT RAISE(ABORT, 'device: name already used by another device''s session')
        WHERE EXISTS (SELECT 1 FROM device WHERE session_name = NEW.name AND id != NEW.id);
    END""",
    """CREATE TRIGGER IF NOT EXISTS device_session_name_check BEFORE UPDATE OF session_name ON device
    WHEN NEW.session_name IS NOT OLD.session_name
    BEGIN
        SELECT RAISE(ABORT, 'device: a session can only take the device''s current name')
        WHERE NEW.session_name IS NOT NEW.name;
    END""",
]


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL, or None for an in-memory database."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _set_pragmas(dbapi_connection: Any, _record: Any, *, read_only: bool) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if read_only:
            cursor.execute("PRAGMA query_only = ON")
        else:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def make_engine(url: str, *, read_only: bool = False, create_dir: bool = False) -> Engine:
    """An engine for `url`; `read_only` engines refuse every write (the web server's)."""
    path = sqlite_path(url)
    if path is not None:
        if create_dir:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise DatabaseError(f"cannot create the database directory {path.parent}: {err}") from err
            try:
                # Readable by its owner only (SQLite gives its -wal and -shm files the same mode).
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            except OSError as err:
                raise DatabaseError(f"cannot create the database {path}: {err.strerror}") from err
        elif not path.exists():
            raise DatabaseError(f"no database at {path}: create it with `make db` (sensorhub db init)")
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
    event.listen(engine, "connect", lambda c, r: _set_pragmas(c, r, read_only=read_only))
    return engine


def init_db(engine: Engine) -> None:
    """Create the tables, indexes and triggers that are missing (idempotent)."""
    try:
        with engine.begin() as conn:
            Base.metadata.create_all(conn)
            for statement in TRIGGERS:
                conn.execute(text(statement))
            conn.execute(text(f"PRAGMA user_version = {SCHEMA_VERSION}"))
    except (SQLAlchemyError, sqlite3.Error) as err:
        raise DatabaseError(f"cannot create the database schema at {engine.url}: {_reason(err)}") from err
    logger.info("database ready at %s", engine.url)


def check_schema(engine: Engine) -> None:
    """Raise DatabaseError unless the database holds sensorhub's schema."""
    try:
        with engine.connect() as conn:
            version = conn.execute(text("PRAGMA user_version")).scalar_one()
    except SQLAlchemyError as err:
        raise DatabaseError(f"cannot open the database {engine.url}: {_reason(err)}") from err
    if version != SCHEMA_VERSION:
        raise DatabaseError(
            f"the database {engine.url} has no sensorhub schema (version {version}): run `make db`"
        )


def _reason(err: BaseException) -> str:
    orig = getattr(err, "orig", None)
    return str(orig if orig is not None else err).splitlines()[0]
