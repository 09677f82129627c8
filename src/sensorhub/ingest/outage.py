"""A database that cannot be written (locked, full, gone): what the writer says about it, and the WAL's space."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError

from sensorhub.db.engine import sqlite_path
from sensorhub.db.space import MIB, database_dir, database_space
from sensorhub.errors import reason

logger = logging.getLogger(__name__)

#: While the database cannot be written, one line about it at most this often (seconds).
OUTAGE_LOG_EVERY = 60.0
#: After an outage, for this long (seconds) at most, the WAL is truncated whenever the writer is idle and the WAL
#: has grown since: the broker hands the backlog over in bursts, with idle moments in between on a busy machine.
TRUNCATE_WINDOW = 300.0
#: ... and it ends sooner once nothing has been written for this long (seconds) and the WAL is empty.
QUIET = 5.0


def is_full(err: BaseException) -> bool:
    """Whether the database says the disk (or its size limit) is full."""
    orig = getattr(err, "orig", err)
    code = getattr(orig, "sqlite_errorcode", None)
    text = str(orig).lower()
    return code == 13 or "full" in text or "no space left" in text  # SQLITE_FULL; PostgreSQL's ENOSPC


class Outage:
    """Whether the database can be written now; says so at most once a minute while it cannot, and gives the
    WAL's space back to the file system when the disk was full (SQLite)."""

    def __init__(self, url: str, waiting: Callable[[], int], clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        #: Where the SQLite file lives (None on a server database: no WAL to truncate, no disk of ours).
        self.db_dir = database_dir(url)
        path = sqlite_path(url)
        #: The SQLite database's WAL file (None on a server database).
        self._wal = None if path is None else Path(f"{path}-wal")
        self._waiting = waiting
        self._clock = clock
        #: Since when (clock) the database cannot be written, and when that was last said.
        self.since: float | None = None
        self._said = 0.0
        #: Until when (clock) to give the WAL's space back at idle moments, after an outage (None: not now).
        self.truncate_until: float | None = None
        self._last_write = clock()

    def blocked(self, conn: Connection, err: OperationalError, retry_in: float) -> None:
        """A batch could not be written: say why (the first time, then once a minute); make room in the WAL."""
        now = self._clock()
        first = self.since is None
        if first:
            self.since = now
        full = is_full(err)
        logger.debug("the database cannot be written: %s", reason(err))
        if full:
            self.truncate_wal(conn)
        if first or now - self._said >= OUTAGE_LOG_EVERY:
            self._said = now
            space = database_space(self.url)
            free = "unknown space" if space is None else f"{space.free / MIB:.1f} MiB"
            waiting = self._waiting()
            if full:
                logger.error("the disk holding the database is full (%s free in %s): nothing is acknowledged, "
                             "%d message(s) wait here and the rest with the broker; writing resumes by itself "
                             "once space is freed", free, self.db_dir, waiting)
            else:
                logger.error("cannot write to the database (%s); retrying every %.1f s, nothing acknowledged, "
                             "%d message(s) waiting", reason(err), retry_in, waiting)

    def written(self, conn: Connection) -> None:
        """A batch was written: if the database could not be written before, say it can again."""
        self._last_write = self._clock()
        if self.since is None:
            return
        logger.warning("writing to the database again after %.0f s", self._clock() - self.since)
        self.since = None
        self.truncate_wal(conn)
        self.truncate_until = self._clock() + TRUNCATE_WINDOW  # and again while the backlog comes in

    def idle(self, conn: Connection) -> None:
        """Nothing waits: after an outage, the moment to give the WAL's space back, at each idle moment the WAL has
        grown since the last, until nothing has been written for QUIET seconds or the window ends (a reader of
        another thread or process, such as the notification dispatcher, may hold the WAL at one moment)."""
        if self.truncate_until is None:
            return
        now = self._clock()
        if now > self.truncate_until:
            self.truncate_until = None
        elif self._wal_size() > 0:
            self.truncate_wal(conn)
        elif now - self._last_write >= QUIET:
            self.truncate_until = None  # the backlog is in, and its space given back

    def _wal_size(self) -> int:
        """The WAL file's size in bytes (0 without one)."""
        try:
            return 0 if self._wal is None else self._wal.stat().st_size
        except FileNotFoundError:
            return 0

    def truncate_wal(self, conn: Connection) -> bool:
        """Give the WAL file's space back to the file system; False if a reader held it or the checkpoint failed
        (try again later)."""
        if self.db_dir is None:
            return True
        try:
            conn.rollback()
            row = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").first()
            conn.rollback()
        except Exception as err:  # best effort: the next attempt tries again
            logger.debug("WAL checkpoint failed: %s", reason(err))
            return False
        # (busy, pages in the WAL, pages checkpointed): busy 1 means a reader kept it from finishing.
        if row is not None and int(row[0]) != 0:
            logger.debug("the WAL could not be truncated yet (a reader holds it: %s)", tuple(row))
            return False
        return True
