"""Read queries over time: a device's readings in a range (raw or from the roll-ups), CSV export rows, sessions,
the oldest reading and the database's size.

Every query is an index range scan: readings through `(device_id, at)`, roll-ups through their primary key
`(device_id, kind, start)`, sessions through `(device_id, started_at)`. Times are compared as the stored
fixed-width UTC text, so they are passed as text and read back as text where speed matters (the CSV export).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from sqlalchemy import Connection, Engine, Select, String, func, select, type_coerce

from sensorhub.buckets import Bucket, Key, bucket_start, credit
from sensorhub.db.engine import sqlite_path
from sensorhub.db.models import READING_MODELS, ROLLUP_MODELS, Device, DeviceSession
from sensorhub.errors import UnknownDevice
from sensorhub.protocol import Kind
from sensorhub.timestamps import format_timestamp, parse_timestamp, to_micros

#: `bucket=auto` picks the finest bucket that gives at most this many points.
AUTO_POINTS = 1000
#: Most raw points one JSON answer holds (the CSV has no limit).
RAW_LIMIT = 100_000
BUCKETS = ("raw", "1m", "1h")


class TooManyPoints(Exception):
    """More raw readings in the range than one JSON answer holds."""


@dataclass(frozen=True, slots=True)
class RawPoint:
    """One reading."""

    at: datetime
    value: int


@dataclass(frozen=True, slots=True)
class BucketPoint:
    """One roll-up bucket: its start, how many readings, their min / mean / max, and the time on (µs)."""

    at: datetime
    count: int
    low: int | None
    high: int | None
    total: int
    on_us: int

    @property
    def avg(self) -> float | None:
        """The mean of the bucket's readings, or None if there were none."""
        return None if self.count == 0 else self.total / self.count


@dataclass(frozen=True, slots=True)
class Series:
    """A device's readings of one kind over a range, raw or bucketed; `before` is the last reading before it."""

    device_id: int
    kind: Kind
    start: datetime
    end: datetime
    bucket: str
    points: list[RawPoint] | list[BucketPoint]
    before: RawPoint | None = None


@dataclass(frozen=True, slots=True)
class SessionRow:
    """One session of a device."""

    session_id: str
    started_at: datetime
    online_at: datetime | None
    ended_at: datetime | None


def _count_upto(conn: Connection, stmt: Select[*tuple[Any, ...]], limit: int) -> int:
    """How many rows `stmt` gives, counting no further than limit + 1 (a bounded index range scan)."""
    inner = stmt.limit(limit + 1).subquery()
    return int(conn.execute(select(func.count()).select_from(inner)).scalar_one())


def _raw_select(kind: Kind, device_id: int, start: str, end: str) -> Select[str, int]:
    model = READING_MODELS[kind]
    at = type_coerce(model.at, String)
    return select(at, model.value).where(model.device_id == device_id, at >= start, at < end)


def _bucket_select(size: str, kind: Kind, device_id: int, start: str,
                   end: str) -> Select[datetime, int, int | None, int | None, int, int]:
    model = ROLLUP_MODELS[size]
    at = type_coerce(model.start, String)
    return (select(model.start, model.count, model.low, model.high, model.total, model.on_us)
            .where(model.device_id == device_id, model.kind == kind.value, at >= bucket_start(start, size), at < end)
            .order_by(model.start))


def choose_bucket(conn: Connection, device_id: int, kind: Kind, start: datetime, end: datetime,
                  limit: int = AUTO_POINTS) -> str:
    """The finest bucket that gives at most `limit` points (`1h` when even that gives more)."""
    low, high = format_timestamp(start), format_timestamp(end)
    if _count_upto(conn, _raw_select(kind, device_id, low, high), limit) <= limit:
        return "raw"
    if _count_upto(conn, _bucket_select("1m", kind, device_id, low, high), limit) <= limit:
        return "1m"
    return "1h"


def series(conn: Connection, device_id: int, kind: Kind, start: datetime, end: datetime, bucket: str) -> Series:
    """A device's readings of `kind` from `start` (included) to `end` (excluded); `bucket` is raw, 1m, 1h or auto.

    Raises TooManyPoints when raw readings exceed RAW_LIMIT.
    """
    if bucket == "auto":
        bucket = choose_bucket(conn, device_id, kind, start, end)
    low, high = format_timestamp(start), format_timestamp(end)
    before = last_before(conn, device_id, kind, start)
    if bucket == "raw":
        model = READING_MODELS[kind]
        stmt = _raw_select(kind, device_id, low, high).order_by(model.at, model.id).limit(RAW_LIMIT + 1)
        raw = [RawPoint(parse_timestamp(row[0]), int(row[1])) for row in conn.execute(stmt)]
        if len(raw) > RAW_LIMIT:
            raise TooManyPoints(f"more than {RAW_LIMIT} readings")
        return Series(device_id, kind, start, end, "raw", raw, before)
    rows = conn.execute(_bucket_select(bucket, kind, device_id, low, high))
    points = [BucketPoint(row[0], int(row[1]), row[2], row[3], int(row[4]), int(row[5])) for row in rows]
    if kind is not Kind.LIGHT:
        points = _with_current_state(conn, device_id, kind, start, end, bucket, points)
    return Series(device_id, kind, start, end, bucket, points, before)


def _with_current_state(conn: Connection, device_id: int, kind: Kind, start: datetime, end: datetime, bucket: str,
                        points: list[BucketPoint]) -> list[BucketPoint]:
    """Add the time on since the last reading, when the LED is on (the button pressed) now.

    The writer counts the time a state lasted when the next reading (or a leave) ends it; while the device is
    online in the session of its last reading, that state still holds: count it up to now, here.
    """
    online = conn.execute(select(Device.online).where(Device.id == device_id)).scalar()
    if not online:
        return points
    now = datetime.now(UTC)
    last = last_before(conn, device_id, kind, now)
    session_start = conn.execute(
        select(type_coerce(DeviceSession.started_at, String))
        .where(DeviceSession.device_id == device_id, DeviceSession.ended_at.is_(None))
        .order_by(DeviceSession.started_at.desc()).limit(1)).scalar()
    if last is None or not last.value or (session_start is not None and format_timestamp(last.at) < session_start):
        return points
    first, until = max(last.at, start), min(now, end)
    if first >= until:
        return points
    minutes: dict[Key, Bucket] = {}
    hours: dict[Key, Bucket] = {}
    credit(minutes, hours, device_id, kind.value, to_micros(first), to_micros(until))
    by_start = {point.at: point for point in points}
    for (_device, _kind, text), added in (minutes if bucket == "1m" else hours).items():
        moment = parse_timestamp(text)
        found = by_start.get(moment)
        by_start[moment] = (BucketPoint(moment, 0, None, None, 0, added.on_us) if found is None else
                            BucketPoint(moment, found.count, found.low, found.high, found.total,
                                        found.on_us + added.on_us))
    return [by_start[moment] for moment in sorted(by_start)]


def last_before(conn: Connection, device_id: int, kind: Kind, moment: datetime) -> RawPoint | None:
    """The last reading of `kind` strictly before `moment` (where a step chart starts), or None."""
    model = READING_MODELS[kind]
    at = type_coerce(model.at, String)
    row = conn.execute(select(at, model.value).where(model.device_id == device_id, at < format_timestamp(moment))
                       .order_by(model.at.desc(), model.id.desc()).limit(1)).first()
    return None if row is None else RawPoint(parse_timestamp(row[0]), int(row[1]))


#: One CSV row: at (stored text), device id, kind, value.
ExportRow = tuple[str, int, str, int]


def export_rows(conn: Connection, start: datetime, end: datetime, kinds: Sequence[Kind] = tuple(Kind),
                device_ids: Sequence[int] | None = None) -> Iterator[ExportRow]:
    """Raw readings in [start, end), device by device (id order), each device's kinds merged in time order.

    Lazy: one indexed range scan per device and kind, read as it is consumed (constant memory).
    """
    low, high = format_timestamp(start), format_timestamp(end)
    if device_ids is None:
        device_ids = [int(i) for i in conn.execute(select(Device.id).order_by(Device.id)).scalars()]
    streaming = conn.execution_options(yield_per=2000)
    for device_id in device_ids:
        streams = []
        for kind in kinds:
            model = READING_MODELS[kind]
            stmt = _raw_select(kind, device_id, low, high).order_by(model.at, model.id)
            streams.append(_tagged(streaming.execute(stmt), device_id, kind.value))
        yield from (heapq.merge(*streams, key=lambda row: row[0]) if len(streams) > 1 else streams[0])


def _tagged(rows: Iterable[Any], device_id: int, kind: str) -> Iterator[ExportRow]:
    for at, value in rows:
        yield at, device_id, kind, value


CSV_HEADER = "at,device_id,device_name,kind,value\r\n"
#: CSV lines per chunk of the streamed text.
CSV_CHUNK = 2000


def csv_chunks(rows: Iterator[ExportRow], names: dict[int, str]) -> Iterator[str]:
    """CSV text (RFC 4180, CRLF, times in ISO 8601 UTC) of export rows, header first, CSV_CHUNK lines a chunk."""
    quoted = {device_id: csv_field(name) for device_id, name in names.items()}
    yield CSV_HEADER
    chunk: list[str] = []
    for at, device_id, kind, value in rows:
        chunk.append(f"{at[:10]}T{at[11:]}+00:00,{device_id},{quoted.get(device_id, '')},{kind},{value}\r\n")
        if len(chunk) >= CSV_CHUNK:
            yield "".join(chunk)
            chunk = []
    if chunk:
        yield "".join(chunk)


#: A cell starting with one of these is a formula to a spreadsheet (Excel, LibreOffice, Google Sheets).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_field(text: str) -> str:
    """One text cell of every CSV export: neutralised if a spreadsheet would run it, then quoted as RFC 4180 wants.

    A cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading single quote (OWASP, "CSV
    injection"): a device named `=HYPERLINK(...)` shows as that text, never as a formula. Only the free-text
    column (the device's name) goes through here; the numbers (ids, values 0 to 100) are never negative.
    """
    if text.startswith(FORMULA_STARTS):
        text = "'" + text
    if any(c in text for c in ',"\r\n') or text != text.strip():
        return '"' + text.replace('"', '""') + '"'
    return text


def export_csv(conn: Connection, start: datetime, end: datetime, kinds: Sequence[Kind],
               device_ids: Sequence[int] | None = None) -> Iterator[str]:
    """The CSV export of [start, end) (every device, or `device_ids`), header first, CSV_CHUNK lines a chunk."""
    return csv_chunks(export_rows(conn, start, end, kinds, device_ids), device_names(conn, device_ids))


def write_export(conn: Connection, out: TextIO, start: datetime, end: datetime, kinds: Sequence[Kind],
                 device_id: int | None = None) -> int:
    """Write the CSV export of [start, end) (every device, or `device_id`) to `out`; how many readings.

    Raises UnknownDevice for a device id that does not exist."""
    wanted = None if device_id is None else [device_id]
    if wanted is not None and not device_names(conn, wanted):
        raise UnknownDevice(f"no device has the id {device_id}")
    lines = 0
    for chunk in export_csv(conn, start, end, kinds, wanted):
        out.write(chunk)
        lines += chunk.count("\n")
    return lines - 1  # the header


def device_names(conn: Connection, device_ids: Sequence[int] | None = None) -> dict[int, str]:
    """Device id -> name."""
    stmt = select(Device.id, Device.name)
    if device_ids is not None:
        stmt = stmt.where(Device.id.in_(list(device_ids)))
    return {int(row[0]): str(row[1]) for row in conn.execute(stmt)}


def sessions(conn: Connection, device_id: int, limit: int = 20) -> list[SessionRow]:
    """The device's last `limit` sessions, newest first."""
    stmt = (select(DeviceSession.session_id, DeviceSession.started_at, DeviceSession.online_at,
                   DeviceSession.ended_at)
            .where(DeviceSession.device_id == device_id)
            .order_by(DeviceSession.started_at.desc(), DeviceSession.id.desc()).limit(limit))
    return [SessionRow(*row) for row in conn.execute(stmt)]


def oldest(conn: Connection) -> datetime | None:
    """The time of the oldest raw reading of any kind (one index look-up per device and kind), or None."""
    found: list[str] = []
    for model in READING_MODELS.values():
        first = (select(type_coerce(model.at, String)).where(model.device_id == Device.id).order_by(model.at)
                 .limit(1).correlate(Device).scalar_subquery())
        value = conn.execute(select(func.min(first))).scalar()
        if value is not None:
            found.append(str(value))
    return parse_timestamp(min(found)) if found else None


def database_bytes(engine: Engine, conn: Connection) -> int:
    """Bytes the database takes on disk (SQLite: the file and its write-ahead log; PostgreSQL: the database)."""
    path = sqlite_path(engine.url.render_as_string(hide_password=False))
    if path is not None and path.exists():
        total = path.stat().st_size
        wal = path.with_name(path.name + "-wal")
        if wal.exists():
            total += wal.stat().st_size
        return total
    if conn.dialect.name == "postgresql":
        return int(conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar() or 0)
    pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
    size = conn.exec_driver_sql("PRAGMA page_size").scalar()
    return int(pages or 0) * int(size or 0)
