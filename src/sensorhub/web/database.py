"""The web server's database access, opened lazily so pages answer even before `make db`: read-only for
everything, and one small writable engine for what people decide about alerts (`DecisionDatabase`)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from flask_babel import gettext as _
from sqlalchemy import Connection, Engine, event

from sensorhub.db import history
from sensorhub.db.engine import make_engine, sqlite_path
from sensorhub.errors import DatabaseError
from sensorhub.i18n import N_

logger = logging.getLogger(__name__)

MISSING_MESSAGE = N_("base de données absente : lancez `make db`")
#: Seconds the oldest reading's time is kept once found: it moves only when retention deletes (a pass a minute at
#: most) or the first reading arrives, and finding it reads an index entry per device and kind (40–60 ms at
#: 100,000 devices on SQLite, most of what was left of `/accueil` once its chart read the fleet's roll-up).
OLDEST_SECONDS = 60.0


#: The tables the web server's decisions may write (`alert_outbox`: a deleted rule's alerts leave their
#: notifications, whose `alert_id` the foreign key sets to NULL).
DECISION_TABLES = frozenset({"alert_rule", "alert", "alert_outbox"})
_WRITES = frozenset({sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE})


def _only_alert_writes(dbapi_connection: Any, _record: Any) -> None:
    def authorize(action: int, table: str | None, *_: Any) -> int:
        if action in _WRITES and table not in DECISION_TABLES and not (table or "").startswith("sqlite_"):
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    dbapi_connection.set_authorizer(authorize)


class DatabaseMissing(DatabaseError):
    """The database file (or its schema) does not exist yet."""


class ReadOnlyDatabase:
    """A read-only engine created on first use (in each gunicorn worker, after the fork)."""

    #: make_engine's read_only: what the web server does with this engine.
    read_only = True
    #: make_engine's pool_size (None: SQLAlchemy's default).
    pool_size: int | None = None

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self._oldest: tuple[float, datetime] | None = None

    def engine(self) -> Engine:
        """The engine; raise DatabaseMissing while the database file does not exist."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    path = sqlite_path(self.url)
                    if path is not None and not path.exists():
                        raise DatabaseMissing(_("base de données absente : lancez `make db` (aucun fichier %(path)s)",
                                                path=path))
                    engine = make_engine(self.url, read_only=self.read_only, pool_size=self.pool_size)
                    self._prepare(engine)
                    self._engine = engine
                    logger.info("%s the database %s", "reading" if self.read_only else "writing alert decisions to",
                                self._engine.url)
        return self._engine

    def _prepare(self, engine: Engine) -> None:
        """Set up a new engine before its first use (nothing to do: `read_only` says all)."""

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection in its own read transaction (a fresh snapshot of the database)."""
        with self.engine().connect() as conn:
            yield conn

    def oldest(self, conn: Connection) -> datetime | None:
        """The oldest reading's time (`history.oldest`), found again after OLDEST_SECONDS (at once while there is
        none: the first one may arrive any moment)."""
        kept = self._oldest
        if kept is not None and time.monotonic() - kept[0] < OLDEST_SECONDS:
            return kept[1]
        found = history.oldest(conn)
        self._oldest = None if found is None else (time.monotonic(), found)
        return found

    def dispose(self) -> None:
        """Close the pooled connections."""
        if self._engine is not None:
            self._engine.dispose()


class DecisionDatabase(ReadOnlyDatabase):
    """The one writable engine of the web server, for what people decide about alerts only: rules,
    acknowledgements and snoozes, through the functions of `sensorhub.db.alerts` (docs/security.md). Never
    readings, devices nor accounts: those stay the ingest client's and the command line's. Two pooled
    connections at most per worker: a person's click is rare."""

    read_only = False
    pool_size = 1

    def _prepare(self, engine: Engine) -> None:
        """On SQLite, each connection refuses to write any table but the alerts' (an authorizer): a mistake in the
        web server cannot touch readings, devices nor accounts through it. PostgreSQL has no per-connection
        equivalent short of a role of its own (docs/security.md)."""
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _only_alert_writes)

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection in a transaction, committed when the block ends without an exception."""
        with self.engine().begin() as conn:
            yield conn
