"""Times as sensorhub stores them: UTC, fixed-width text, and microseconds since the epoch on hot paths."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

#: How every timestamp is stored: UTC, fixed width, so text order is time order and the sqlite3 shell
#: shows readable values. The database's CHECK constraints and triggers (db/models.py, db/postgres.py, the
#: migrations) rely on this exact shape.
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
TIMESTAMP_GLOB = (
    "[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-5][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]"
)


def format_timestamp(moment: datetime) -> str:
    """The stored form of an aware datetime."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text: str) -> datetime:
    """An aware UTC datetime from its stored form."""
    return datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_second_cache: dict[int, str] = {}


def format_micros(micros: int) -> str:
    """The stored form of a time given in microseconds since the epoch (exact, and fast on hot paths)."""
    seconds, fraction = divmod(micros, 1_000_000)
    prefix = _second_cache.get(seconds)
    if prefix is None:
        if len(_second_cache) > 256:
            _second_cache.clear()
        prefix = _second_cache[seconds] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))
    return f"{prefix}.{fraction:06d}"


def micros_of(text: str) -> int:
    """µs since the epoch of a stored time text (`YYYY-MM-DD HH:MM:SS.ffffff`, UTC): what
    `to_micros(parse_timestamp(text))` gives, a tenth of the time (no `strptime`: the database's CHECK
    constraints hold the shape)."""
    moment = datetime(int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), int(text[14:16]),
                      int(text[17:19]), int(text[20:26]), tzinfo=UTC)
    return to_micros(moment)


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (exact)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    """The aware UTC datetime of a time in microseconds since the epoch (exact)."""
    return _EPOCH + timedelta(microseconds=micros)
