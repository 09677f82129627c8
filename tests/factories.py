"""Rows as the ingest client writes them, for tests and benchmarks: one place that knows the device table's shape."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, insert, text, update
from sqlalchemy.orm import Session

from sensorhub.db.latest import refresh_latest
from sensorhub.db.models import Device
from sensorhub.timestamps import format_micros

#: A session id of the old shape (any text the SESSION_RULE accepts will do).
SESSION = "1743946777.603371"
#: The columns of `device_row`'s tuples, in order.
DEVICE_COLUMNS = ("id", "name", "session_name", "mac", "online", "session_id", "joined_at", "last_seen")


def mac_of(number: int, first: int = 0x02) -> str:
    """A MAC address for device `number` (up to 2**40 devices), its first byte `first` (02: locally administered)."""
    return ":".join(f"{byte:02X}" for byte in (first, *(number >> shift & 255 for shift in (32, 24, 16, 8, 0))))


def add_device(engine: Engine, name: str = "capteur01", index: int = 1, *, mac: str | None = None,
               online: bool = True, session: str = SESSION, joined: datetime | None = None,
               last_seen: datetime | None = None, display_name: str | None = None) -> int:
    """Insert one device as the ingest client would (through the ORM); `display_name` renames it after its session
    started. Its MAC is `mac`, or `mac_of(index)`."""
    joined = joined or datetime.now(UTC) - timedelta(hours=2)
    with Session(engine) as session_, session_.begin():
        device = Device(name=name, session_name=name, mac=mac or mac_of(index), online=online, session_id=session,
                        joined_at=joined, last_seen=last_seen or joined)
        session_.add(device)
        session_.flush()
        device_id = device.id
    if display_name is not None:
        with engine.begin() as conn:
            conn.execute(update(Device).where(Device.id == device_id).values(name=display_name))
    return device_id


def add_readings(engine: Engine, model: Any, device_id: int, values: list[int], start: datetime,
                 step: timedelta = timedelta(seconds=1)) -> list[datetime]:
    """Insert a device's readings of one kind (`model`), one every `step` after `start`; return their times."""
    moments = [start + step * (i + 1) for i in range(len(values))]
    with engine.begin() as conn:
        conn.execute(insert(model), [{"device_id": device_id, "at": at, "value": v}
                                     for at, v in zip(moments, values, strict=True)])
        refresh_latest(conn, [device_id])  # as the ingest client keeps them
    return moments


def device_row(number: int, *, joined_us: int, last_seen_us: int | None = None, online: bool = True,
               name: str | None = None, mac: str | None = None, session: str | None = None) -> tuple[Any, ...]:
    """One device row (DEVICE_COLUMNS) for bulk inserts: device `number` is called `capteur<number>` by default."""
    name = name or f"capteur{number:04d}"
    return (number, name, name, mac or mac_of(number), online, session or f"{joined_us // 1_000_000}.{number:06d}",
            format_micros(joined_us), format_micros(last_seen_us if last_seen_us is not None else joined_us))


def insert_devices(target: sqlite3.Connection | Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert `device_row`s in one statement: through sqlite3 directly (fast, for the benchmarks' big databases) or
    an SQLAlchemy connection (SQLite or PostgreSQL; there the id sequence moves past them)."""
    columns = ", ".join(DEVICE_COLUMNS)
    if isinstance(target, sqlite3.Connection):
        target.executemany(f"INSERT INTO device ({columns}) VALUES ({', '.join('?' * len(DEVICE_COLUMNS))})", rows)
        return
    target.execute(text(f"INSERT INTO device ({columns}) VALUES ({', '.join(':' + c for c in DEVICE_COLUMNS)})"),
                   [dict(zip(DEVICE_COLUMNS, row, strict=True)) for row in rows])
    if target.dialect.name == "postgresql" and rows:
        target.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('device', 'id'), {max(r[0] for r in rows)})")
