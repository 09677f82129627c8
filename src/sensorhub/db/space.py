"""Free space on the disk that holds the database, and whether it is running low."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from sensorhub.db.engine import sqlite_path

logger = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True)
class Space:
    """Free bytes on the database's file system and the threshold under which that is low."""

    free: int
    low_below: int

    @property
    def low(self) -> bool:
        """Whether less than the threshold is free."""
        return self.free < self.low_below


def database_dir(url: str) -> Path | None:
    """The directory of a SQLite database file; None for a server database."""
    path = sqlite_path(url)
    return None if path is None else path.resolve().parent


def database_space(url: str, low_space_mib: int = 0) -> Space | None:
    """Free space where the SQLite database lives; None for a server database or a missing directory."""
    directory = database_dir(url)
    if directory is None:
        return None
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return None
    return Space(free, low_space_mib * MIB)


def warn_if_low(url: str, low_space_mib: int) -> Space | None:
    """Log one warning if the database's disk is low on space; return what was measured."""
    space = database_space(url, low_space_mib)
    if space is not None and space.low:
        logger.warning("only %.0f MiB free on the disk that holds the database (warning below %d MiB, "
                       "SENSORHUB_LOW_SPACE_MIB): free some space or set a retention (SENSORHUB_RETENTION_DAYS)",
                       space.free / MIB, low_space_mib)
    return space
