"""What the overview (`/accueil`, `GET /api/overview`) reads: presence counts, traffic, joins and leaves, the worst.

Every query is cheap whatever the history's size: the device table (one row per board), the fleet's 1-minute
roll-up of the last hour through its primary key (start, worker), and the newest sessions through their id; never
the reading tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, func, select, text, true

from sensorhub.db.models import Device, DeviceSession
from sensorhub.timestamps import format_timestamp, parse_timestamp

#: How many joins and leaves, and how many silent devices, the overview lists at most.
LIST_LENGTH = 10
#: The traffic chart's span, in 1-minute buckets.
TRAFFIC_MINUTES = 60
#: Readings per minute since `:first`: the fleet's roll-up (`rollup_fleet_minute`, one row a minute and a worker,
#: kept by the ingest client with the devices' `rollup_minute`), through its primary key (start, worker). Summing
#: every device's roll-ups instead took 0.3–1 s at 100,000 devices.
TRAFFIC_SQL = "SELECT start, sum(count) FROM rollup_fleet_minute WHERE start >= :first GROUP BY start"

@dataclass(frozen=True, slots=True)
class Presence:
    """How many devices are online, offline, and online but silent (included in online)."""

    online: int
    offline: int
    silent: int


@dataclass(frozen=True, slots=True)
class Minute:
    """Readings received in one minute (its start, UTC)."""

    start: datetime
    count: int


@dataclass(frozen=True, slots=True)
class Event:
    """A device joining (`joined`) or leaving (`left`) at `at`."""

    kind: str
    at: datetime
    device_id: int
    name: str
    mac: str


@dataclass(frozen=True, slots=True)
class SilentDevice:
    """An online device not heard from since `last_seen`."""

    device_id: int
    name: str
    mac: str
    last_seen: datetime


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def presence(conn: Connection, now: datetime, silent_seconds: float) -> Presence:
    """Online, offline and silent counts (silent: online, last message more than `silent_seconds` ago)."""
    cut = now - timedelta(seconds=silent_seconds)
    # Three counts, each from an index alone (the primary key; ix_device_online_seen for the online and the silent
    # ones): one pass of sums over the table read every row (PostgreSQL: 84 ms at 100,000 devices, loaded machine).
    count = select(func.count()).select_from(Device)
    total = conn.execute(count).scalar_one()
    online = conn.execute(count.where(Device.online == true())).scalar_one()  # `=`: IS cannot use an index
    silent = conn.execute(count.where(Device.online == true(), Device.last_seen < cut)).scalar_one()
    return Presence(int(online), int(total) - int(online), int(silent))


def silent_devices(conn: Connection, now: datetime, silent_seconds: float,
                   limit: int = LIST_LENGTH) -> list[SilentDevice]:
    """The online devices silent the longest first (through the index on last_seen)."""
    cut = now - timedelta(seconds=silent_seconds)
    rows = conn.execute(select(Device.id, Device.name, Device.mac, Device.last_seen)
                        .where(Device.online, Device.last_seen < cut)
                        .order_by(Device.last_seen, Device.id).limit(limit))
    return [SilentDevice(int(row[0]), str(row[1]), str(row[2]), row[3]) for row in rows]


def traffic(conn: Connection, now: datetime, minutes: int = TRAFFIC_MINUTES) -> list[Minute]:
    """Readings per minute over the last `minutes` minutes, the current one included, oldest first (0 when none)."""
    last = _minute(now)
    first = last - timedelta(minutes=minutes - 1)
    rows = conn.execute(text(TRAFFIC_SQL), {"first": format_timestamp(first)})
    counts = {_minute(parse_timestamp(str(row[0]))): int(row[1] or 0) for row in rows}
    return [Minute(start, counts.get(start, 0))
            for start in (first + timedelta(minutes=i) for i in range(minutes))]


def joins_and_leaves(conn: Connection, limit: int = LIST_LENGTH) -> list[Event]:
    """The latest joins (the newest sessions) and leaves (ended sessions, and offline devices last seen), newest
    first."""
    sessions = conn.execute(
        select(DeviceSession.device_id, DeviceSession.started_at, DeviceSession.online_at, DeviceSession.ended_at,
               Device.name, Device.mac)
        .join(Device, Device.id == DeviceSession.device_id)
        .order_by(DeviceSession.id.desc()).limit(limit)).all()
    events: dict[tuple[str, int, datetime], Event] = {}

    def add(kind: str, at: datetime, device_id: int, name: str, mac: str) -> None:
        events.setdefault((kind, device_id, at), Event(kind, at, device_id, name, mac))

    for device_id, started, online_at, ended, name, mac in sessions:
        add("joined", online_at or started, int(device_id), str(name), str(mac))
        if ended is not None:
            add("left", ended, int(device_id), str(name), str(mac))
    # A device that left long after its session began: the offline devices seen last (index on last_seen).
    offline = conn.execute(select(Device.id, Device.name, Device.mac, Device.last_seen)
                           .where(~Device.online).order_by(Device.last_seen.desc(), Device.id.desc())
                           .limit(limit)).all()
    for device_id, name, mac, last_seen in offline:
        ended = conn.execute(select(DeviceSession.ended_at).where(DeviceSession.device_id == device_id)
                             .order_by(DeviceSession.started_at.desc(), DeviceSession.id.desc()).limit(1)).scalar()
        add("left", ended or last_seen, int(device_id), str(name), str(mac))
    return sorted(events.values(), key=lambda e: (e.at, e.kind == "left"), reverse=True)[:limit]
