"""The web server's database access, opened lazily so pages answer even before `make db`: read-only for
everything, and one small writable engine for what people decide about alerts (`DecisionDatabase`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine

from sensorhub.db.engine import make_engine, sqlite_path
from sensorhub.errors import DatabaseError

logger = logging.getLogger(__name__)

MISSING_MESSAGE = "base de données absente : lancez `make db`"


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

    def engine(self) -> Engine:
        """The engine; raise DatabaseMissing while the database file does not exist."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    path = sqlite_path(self.url)
                    if path is not None and not path.exists():
                        raise DatabaseMissing(f"{MISSING_MESSAGE} (aucun fichier {path})")
                    self._engine = make_engine(self.url, read_only=self.read_only, pool_size=self.pool_size)
                    logger.info("%s the database %s", "reading" if self.read_only else "writing alert decisions to",
                                self._engine.url)
        return self._engine

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection in its own read transaction (a fresh snapshot of the database)."""
        with self.engine().connect() as conn:
            yield conn

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

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection in a transaction, committed when the block ends without an exception."""
        with self.engine().begin() as conn:
            yield conn
