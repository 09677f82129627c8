"""Engines: SQLite set up on connect (WAL, foreign keys, busy timeout); PostgreSQL through psycopg 3."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from sensorhub.errors import DatabaseError
from sensorhub.i18n import N_

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
#: Pages written to the WAL before a checkpoint (SQLite's default is 1000), and bytes of WAL file kept after.
WAL_PAGES = 256
JOURNAL_SIZE_LIMIT = 2 * 1024 * 1024
#: Seconds to wait for PostgreSQL to answer a connection.
CONNECT_TIMEOUT_S = 5


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL, or None for an in-memory or another engine's database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _to_wal(cursor: Any) -> None:
    """Switch the database to WAL, retrying while another connection holds the lock that takes: SQLite answers
    "database is locked" at once there, without its busy handler (several processes opening a new file at once,
    such as gunicorn's workers and their web-state database)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _set_pragmas(dbapi_connection: Any, _record: Any, *, read_only: bool) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if read_only:
            cursor.execute("PRAGMA query_only = ON")
        else:
            _to_wal(cursor)
            cursor.execute("PRAGMA synchronous = NORMAL")
            # A small WAL: checkpointed every WAL_PAGES pages, and shrunk back to JOURNAL_SIZE_LIMIT bytes after,
            # so that a nearly full disk never holds a WAL too big to be checkpointed (the checkpoint needs room
            # in the database file for what the WAL holds).
            cursor.execute(f"PRAGMA wal_autocheckpoint = {WAL_PAGES}")
            cursor.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
    finally:
        cursor.close()


def make_engine(url: str, *, read_only: bool = False, create_dir: bool = False,
                pool_size: int | None = None) -> Engine:
    """An engine for `url`; `read_only` engines refuse every write (the web server's); `pool_size` keeps at most
    that many idle connections (and as many more while busy) instead of SQLAlchemy's 5 + 10."""
    pool = {} if pool_size is None else {"pool_size": pool_size, "max_overflow": pool_size}
    if make_url(url).get_backend_name() == "postgresql":
        return _postgresql_engine(url, read_only=read_only, pool=pool)
    path = sqlite_path(url)
    if path is not None:
        if create_dir:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise DatabaseError(N_("cannot create the database directory {path}: {reason}"), path=path.parent,
                                    reason=err) from err
            try:
                # Readable by its owner only (SQLite gives its -wal and -shm files the same mode).
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            except OSError as err:
                raise DatabaseError(N_("cannot create the database {path}: {reason}"), path=path,
                                    reason=err.strerror) from err
        elif not path.exists():
            raise DatabaseError(N_("no database at {where}: create it with `make db` (sensorhub db init)"), where=path)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000}, **pool)
    event.listen(engine, "connect", lambda c, r: _set_pragmas(c, r, read_only=read_only))
    return engine


def _postgresql_engine(url: str, *, read_only: bool, pool: dict[str, int]) -> Engine:
    options = "-c default_transaction_read_only=on" if read_only else ""
    try:
        # pre_ping: a pooled connection that PostgreSQL closed (restart, idle timeout) is replaced, not failed.
        return create_engine(url, pool_pre_ping=True, connect_args={
            "connect_timeout": CONNECT_TIMEOUT_S, "application_name": "sensorhub", "options": options}, **pool)
    except ImportError as err:
        raise DatabaseError(N_("the PostgreSQL driver is missing ({reason}): run `make install` (psycopg)"),
                            reason=err) from err
