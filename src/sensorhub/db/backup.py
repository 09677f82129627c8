"""`sensorhub db backup FILE`: a consistent copy of the live database, taken while the ingest client writes.

SQLite's online backup copies every page in one step, inside one read transaction: the copy is the database
as it was when the backup started (every reading committed before then, none half-written), and in WAL mode
that reader never blocks the writer. The copy is written next to its destination, checked with
`PRAGMA integrity_check`, switched out of WAL mode (one self-contained file) and only then renamed into place.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from sensorhub.db.engine import BUSY_TIMEOUT_MS, sqlite_path
from sensorhub.errors import DatabaseError
from sensorhub.i18n import N_

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BackupResult:
    """Where the copy went, its size and how long it took."""

    path: Path
    size: int
    seconds: float


def backup(url: str, target: Path, *, overwrite: bool = False) -> BackupResult:
    """Copy the SQLite database of `url` to `target` (mode 0600); DatabaseError in one line if it cannot."""
    source = sqlite_path(url)
    if source is None:
        raise DatabaseError(N_("only a SQLite database file can be backed up this way: back up PostgreSQL with its "
                               "own tools (pg_dump -Fc, or continuous archiving), docs/install.md, \"PostgreSQL\""))
    if not source.exists():
        raise DatabaseError(N_("no database at {path}: nothing to back up"), path=source)
    if target.exists() and target.resolve() == source.resolve():
        raise DatabaseError(N_("the backup cannot overwrite the database itself: choose another file"))
    if target.exists() and not overwrite:
        raise DatabaseError(N_("{path} already exists: choose another file or pass --force"), path=target)
    if not target.parent.is_dir():
        raise DatabaseError(N_("no directory {path} for the backup"), path=target.parent)
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    started = time.monotonic()
    try:
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        src = sqlite3.connect(source, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            src.execute("PRAGMA query_only = ON")
            dest = sqlite3.connect(partial)
            try:
                src.backup(dest)  # all pages in one step: one snapshot
                dest.execute("PRAGMA journal_mode = DELETE")
                problems = [row[0] for row in dest.execute("PRAGMA integrity_check")]
            finally:
                dest.close()
        finally:
            src.close()
        if problems != ["ok"]:
            raise DatabaseError(f"the copy failed its integrity check: {'; '.join(problems[:3])}")
        os.replace(partial, target)
    except sqlite3.Error as err:
        raise DatabaseError(f"cannot back up {source} to {target}: {err}") from err
    except OSError as err:
        raise DatabaseError(N_("cannot write the backup {path}: {reason}"), path=target, reason=err.strerror) from err
    finally:
        partial.unlink(missing_ok=True)
    result = BackupResult(target, target.stat().st_size, time.monotonic() - started)
    logger.info("database %s backed up to %s (%d bytes, %.1f s)", source, target, result.size, result.seconds)
    return result
