"""The writer's raw SQL on either database: `?` placeholders for sqlite3, `%s` for psycopg, and the bulk path.

The writer passes its statements straight to the driver (SQLAlchemy's parameter processing would cost more
than the insert). With psycopg, a list of rows is sent in pipeline mode (one round trip per batch, not per
row); readings go through `COPY … FROM STDIN`, PostgreSQL's bulk load, which fires the same triggers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cache
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from sensorhub.db.postgres import LAST_DEVICE_ID as _PG_LAST_DEVICE_ID

logger = logging.getLogger(__name__)

#: The last device id ever handed out (0 if none), per dialect.
LAST_DEVICE_ID = {
    "sqlite": "SELECT seq FROM sqlite_sequence WHERE name = 'device'",
    "postgresql": _PG_LAST_DEVICE_ID,
}
#: Taken, with several workers, by a transaction that may hand out device ids or names, or delete devices (then
#: released by its commit): SQLite's write lock through a write that changes nothing; on PostgreSQL an advisory lock.
DEVICE_LOCK = {
    "sqlite": "DELETE FROM quarantine WHERE id = -1",
    "postgresql": "SELECT pg_advisory_xact_lock(1616)",
}
_COLUMNS = "(device_id, at, value)"


@cache
def placeholders(sql: str, paramstyle: str) -> str:
    """`sql` written with `?` placeholders, in the driver's style (none of sensorhub's SQL quotes a `?`)."""
    return sql if paramstyle == "qmark" else sql.replace("?", "%s")


def execute(conn: Connection, sql: str, params: Sequence[Any]) -> None:
    """Run `sql` (with `?` placeholders) once with a tuple, or once per row with a list of tuples."""
    conn.exec_driver_sql(placeholders(sql, conn.dialect.paramstyle), params)


def insert_readings(conn: Connection, kind: str, rows: Sequence[tuple[int, str, int]]) -> None:
    """Insert readings of one kind: COPY on PostgreSQL, executemany on SQLite (in the caller's transaction)."""
    if conn.dialect.name != "postgresql":
        execute(conn, f"INSERT INTO {kind}_reading {_COLUMNS} VALUES (?, ?, ?)", rows)
        return
    statement = f"COPY {kind}_reading {_COLUMNS} FROM STDIN"
    if not conn.in_transaction():
        conn.begin()  # so that the caller's commit or rollback reaches the driver's connection
    raw: Any = conn.connection.dbapi_connection  # a psycopg.Connection, in the caller's transaction
    try:
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
    except conn.dialect.loaded_dbapi.Error as err:
        # As SQLAlchemy would have raised it: OperationalError (retry), IntegrityError (refused row), ...
        invalidated = conn.dialect.is_disconnect(err, raw, None)
        if invalidated:
            conn.invalidate(err)
        raise DBAPIError.instance(statement, None, err, conn.dialect.loaded_dbapi.Error,
                                  connection_invalidated=invalidated) from err
