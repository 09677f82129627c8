"""Read queries of the web server: device lists, last values, history pages and counts.

The latest value of each kind is a column of the device row (kept by the ingest client, db/latest.py), so a
list of devices reads no reading table. Every "last N values of a device" goes through the (device_id, at)
index of its reading table, one `ORDER BY at DESC LIMIT N` per device (a correlated subquery), never a window
over the whole table: the cost stays proportional to the devices shown, whatever the number of readings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    Row,
    String,
    case,
    func,
    or_,
    select,
    true,
    type_coerce,
)

from sensorhub.db import listing
from sensorhub.db.models import READING_MODELS, ButtonReading, Device, LedReading, LightReading
from sensorhub.protocol import Kind
from sensorhub.rules import name_taken as holds_name
from sensorhub.timestamps import format_timestamp

#: How many values per kind the pages and the API show.
HISTORY_LENGTH = 10
#: Devices per /historique page.
PAGE_SIZE = 50

ReadingModel = type[LedReading] | type[ButtonReading] | type[LightReading]


@dataclass(frozen=True, slots=True)
class Value:
    """One recorded reading: when (aware UTC) and what."""

    at: datetime
    value: int


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """A device with the latest value of each kind (None where nothing was recorded)."""

    id: int
    name: str
    session_name: str
    mac: str
    online: bool
    session_id: str
    joined_at: datetime
    last_seen: datetime
    led: int | None = None
    button: int | None = None
    light: int | None = None

    def latest(self, kind: Kind) -> int | None:
        """The latest value of `kind`."""
        return {Kind.LED: self.led, Kind.BUTTON: self.button, Kind.LIGHT: self.light}[kind]


@dataclass(frozen=True, slots=True)
class DeviceHistory:
    """A device and its last values of each kind, newest first."""

    device: DeviceRow
    history: dict[Kind, list[Value]] = field(default_factory=dict)


_CURSOR_RE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6})Z~(\d{1,18})")


@dataclass(frozen=True, slots=True)
class Cursor:
    """/historique's `?avant=` of the release before the opaque cursor (a link kept in a bookmark): its last
    device's (last_seen, id), read only to be turned into a `listing.PageCursor`."""

    last_seen: datetime
    id: int

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Parse an old `?avant=` (`YYYY-MM-DDTHH:MM:SS.ffffffZ~id`); raise ValueError if it is not one."""
        match = _CURSOR_RE.fullmatch(text)
        if match is None:
            raise ValueError(f"not a page cursor: {text[:40]!r}")
        moment = datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)
        return cls(moment, int(match[2]))

    def page_cursor(self) -> listing.PageCursor:
        """The same position as an opaque cursor of the `recent` order."""
        return listing.PageCursor("recent", format_timestamp(self.last_seen), self.id)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of /historique, the cursor of the next one (None on the last page) and how many devices in all."""

    devices: list[DeviceHistory]
    next: listing.PageCursor | None
    total: int = 0


@dataclass(frozen=True, slots=True)
class Stats:
    """How many devices, online devices and readings of each kind the database holds."""

    devices: int
    online: int
    readings: dict[Kind, int]


def _latest_columns() -> list[Any]:
    """Each kind's latest value, kept in the device row (db/latest.py): no reading table is read."""
    return [Device.last_led.label("led"), Device.last_button.label("button"), Device.last_light.label("light")]


def _device_select() -> Any:
    return select(
        Device.id, Device.name, Device.session_name, Device.mac, Device.online, Device.session_id,
        Device.joined_at, Device.last_seen, *_latest_columns(),
    )


def _row(row: Any) -> DeviceRow:
    return DeviceRow(
        id=row.id, name=row.name, session_name=row.session_name, mac=row.mac, online=bool(row.online),
        session_id=row.session_id, joined_at=row.joined_at, last_seen=row.last_seen,
        led=row.led, button=row.button, light=row.light,
    )


_NEWEST_FIRST = (Device.last_seen.desc(), Device.id.desc())


def list_devices(conn: Connection, *, online: bool | None = None) -> list[DeviceRow]:
    """Devices, most recently seen first, with their latest values; optionally only (not) online ones (a search,
    a filter or a page: `listing.page`)."""
    stmt = _device_select().order_by(*_NEWEST_FIRST)
    if online is not None:
        stmt = stmt.where(Device.online == online)
    return [_row(row) for row in conn.execute(stmt)]


def _as_stored(column: Any, label: str) -> Any:
    """A time column as its stored UTC text (`YYYY-MM-DD HH:MM:SS.ffffff`), not parsed into a datetime."""
    return type_coerce(column, String()).label(label)


def record_columns(latest: bool = True) -> list[Any]:
    """The columns of `device_records`' rows (a large list's: times as their stored UTC text)."""
    columns: list[Any] = [
        Device.id, Device.name, Device.session_name, Device.mac, Device.online, Device.session_id,
        _as_stored(Device.joined_at, "joined_at"), _as_stored(Device.last_seen, "last_seen"),
    ]
    return columns + _latest_columns() if latest else columns


def device_records(conn: Connection, *, online: bool | None = None, latest: bool = True) -> Sequence[Row[Any]]:
    """What `list_devices` finds, as plain rows for a large list: the same columns and order, but `joined_at`
    and `last_seen` as their stored UTC text; without `latest`, no led/button/light columns (no reading is read)."""
    stmt = select(*record_columns(latest)).order_by(*_NEWEST_FIRST)
    if online is not None:
        stmt = stmt.where(Device.online == online)
    return conn.execute(stmt).all()  # one fetchall, not a fetch per row


def device_page(conn: Connection, *, sort: str, where: listing.Filter, cursor: listing.PageCursor | None,
                limit: int) -> tuple[list[DeviceRow], listing.Listed]:
    """One page of devices (listing.page) as DeviceRows, and the page itself (its next cursor and total)."""
    columns = [Device.id, Device.name, Device.session_name, Device.mac, Device.online, Device.session_id,
               Device.joined_at, Device.last_seen, *_latest_columns()]
    found = listing.page(conn, columns, sort=sort, where=where, cursor=cursor, limit=limit)
    return [_row(row) for row in found.rows], found


def get_device(conn: Connection, device_id: int) -> DeviceRow | None:
    """One device with its latest values, or None."""
    row = conn.execute(_device_select().where(Device.id == device_id)).one_or_none()
    return None if row is None else _row(row)


def online_device_by_session(conn: Connection, session_name: str, session_id: str) -> DeviceRow | None:
    """The online device using `session_name` in session `session_id`, or None (not committed yet, or gone)."""
    stmt = _device_select().where(
        Device.session_name == session_name, Device.session_id == session_id, Device.online.is_(True)
    )
    row = conn.execute(stmt).one_or_none()
    return None if row is None else _row(row)


def histories(
    conn: Connection, device_ids: Sequence[int], limit: int = HISTORY_LENGTH, kinds: Sequence[Kind] = tuple(Kind)
) -> dict[int, dict[Kind, list[Value]]]:
    """The last `limit` values of each of `kinds` for each device, newest first (one indexed query per kind;
    the other kinds come back empty)."""
    result: dict[int, dict[Kind, list[Value]]] = {i: {kind: [] for kind in Kind} for i in device_ids}
    if not device_ids:
        return result
    lateral = conn.dialect.name == "postgresql"
    for kind in kinds:
        model = READING_MODELS[kind]
        if lateral:
            # PostgreSQL ran the correlated `IN` below as a filter over every reading of the table for each device
            # (13 s for a page of 50 among 100,000 devices, 300,000 readings); LATERAL takes each device's last
            # `limit` through the (device_id, at) index: 6 ms. SQLite has no LATERAL, and plans the `IN` well.
            last = (select(model.id, model.at, model.value).where(model.device_id == Device.id)
                    .order_by(model.at.desc(), model.id.desc()).limit(limit).lateral("newest"))
            rows = conn.execute(select(Device.id, last.c.at, last.c.value).join(last, true())
                                .where(Device.id.in_(list(device_ids)))
                                .order_by(Device.id, last.c.at.desc(), last.c.id.desc()))
            for device_id, at, value in rows:
                result[device_id][kind].append(Value(at, value))
            continue
        newest = (
            select(model.id)
            .where(model.device_id == Device.id)
            .order_by(model.at.desc(), model.id.desc())
            .limit(limit)
            .correlate(Device)
        )
        stmt = (
            select(Device.id, model.at, model.value)
            .join(model, model.id.in_(newest))
            .where(Device.id.in_(list(device_ids)))
            .order_by(Device.id, model.at.desc(), model.id.desc())
        )
        for device_id, at, value in conn.execute(stmt):
            result[device_id][kind].append(Value(at, value))
    return result


def device_history(conn: Connection, device_id: int, limit: int = HISTORY_LENGTH) -> DeviceHistory | None:
    """One device with its last values of each kind, or None."""
    device = get_device(conn, device_id)
    if device is None:
        return None
    return DeviceHistory(device, histories(conn, [device.id], limit)[device.id])


def with_histories(conn: Connection, devices: Sequence[DeviceRow], limit: int = HISTORY_LENGTH,
                   kinds: Sequence[Kind] = tuple(Kind)) -> list[DeviceHistory]:
    """Attach to each device its last values of each of `kinds`."""
    found = histories(conn, [d.id for d in devices], limit, kinds)
    return [DeviceHistory(d, found[d.id]) for d in devices]


def history_page(
    conn: Connection, *, before: listing.PageCursor | None = None, query: str = "", by_mac: bool = True,
    size: int = PAGE_SIZE
) -> Page:
    """A page of devices in (last_seen DESC, id DESC) order after `before`, with their histories, and how many
    devices the search holds."""
    rows, found = device_page(conn, sort="recent", where=listing.Filter(query=query, by_mac=by_mac), cursor=before,
                              limit=size)
    return Page(with_histories(conn, rows), found.next, found.total or 0)


def online_count(conn: Connection) -> int:
    """How many devices are online (through ix_device_online)."""
    return int(conn.execute(select(func.count()).select_from(Device).where(Device.online)).scalar_one())


def stats(conn: Connection) -> Stats:
    """Counts of devices, online devices and readings per kind."""
    devices, online = conn.execute(
        # Counted with CASE: PostgreSQL has no sum() of booleans (and typed like the column, a sum came back as True).
        select(func.count(), func.coalesce(func.sum(case((Device.online, 1), else_=0), type_=Integer), 0))
    ).one()
    readings = {kind: int(conn.execute(select(func.count()).select_from(model)).scalar_one())
                for kind, model in READING_MODELS.items()}
    return Stats(int(devices), int(online), readings)


def name_taken(conn: Connection, name: str, device_id: int) -> bool:
    """Whether another device than `device_id` uses `name` (rules.name_taken on the devices holding it)."""
    stmt = select(Device.id, Device.name, Device.session_name).where(
        or_(Device.name == name, Device.session_name == name)
    )
    holders = [(row.id, row.name, row.session_name) for row in conn.execute(stmt)]
    return holds_name(name, device_id, holders)


def device_name(conn: Connection, device_id: int) -> str | None:
    """The current display name of a device, or None if it does not exist."""
    return conn.execute(select(Device.name).where(Device.id == device_id)).scalar_one_or_none()
