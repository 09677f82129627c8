"""The web server's read-only database access, opened lazily so pages answer even before `make db`."""

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
                    self._engine = make_engine(self.url, read_only=True)
                    logger.info("reading the database %s", self._engine.url)
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
