"""The session engine and the database: the engine loaded from the device table, and, with several workers,
the few rows a batch depends on read again before it is decided (another worker may have changed them)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from sensorhub.commands import LedRequest, RenameRequest
from sensorhub.db import dialect, writes
from sensorhub.db.presence import lost_devices
from sensorhub.ingest.limits import Limits
from sensorhub.ingest.sessions import Device, Inbound, Sessions, default_name
from sensorhub.protocol import Leave, MacJoin, Reading, SessionRef
from sensorhub.timestamps import micros_of

logger = logging.getLogger(__name__)


def load_sessions(conn: Connection, presence_timeout_us: int, *, exact: bool = True,
                  limits: Limits | None = None) -> Sessions:
    """A session engine holding the device table as it is now (`exact`: the only worker on it)."""
    conn.rollback()
    devices = [device_of(row) for row in conn.exec_driver_sql(writes.DEVICE_ROWS)]
    seq = conn.exec_driver_sql(dialect.LAST_DEVICE_ID[conn.dialect.name]).scalar()
    conn.rollback()
    return Sessions(devices, next_id=int(seq or 0) + 1, presence_timeout_us=presence_timeout_us, exact=exact,
                    limits=limits)


def device_of(row: Any) -> Device:
    """A row of writes.DEVICE_ROWS as the engine holds it."""
    return Device(row[0], row[1], row[2], row[3], row[4], bool(row[5]), micros_of(row[6]), micros_of(row[7]),
                  bool(row[8]), micros_of(row[9]) if row[9] else 0)


def reread(conn: Connection, sessions: Sessions, ids: set[int]) -> None:
    """Take the rows of `ids` as the database holds them (another worker decided their presence later)."""
    sql = dialect.placeholders(f"{writes.DEVICE_ROWS} WHERE id IN ({', '.join('?' * len(ids))})",
                               conn.dialect.paramstyle)
    sessions.upsert([device_of(row) for row in conn.exec_driver_sql(sql, tuple(sorted(ids)))],
                         sessions.next_id)


def refresh(conn: Connection, sessions: Sessions, batch: Sequence[Inbound]) -> bool:
    """With several workers, bring the rows `batch` depends on up to the database's state before deciding it;
    True if the database knew sessions `sessions` did not.

    A batch that may hand out ids or names (joins, renames) first takes the cross-worker lock, and reads the
    rows of its MACs and renamed devices, of the names it may give, and of the devices other workers added
    since this engine last looked. Any batch reads the rows of sessions this engine does not know, and of
    the devices its LED commands are for: another worker may have seen their join, or their leave. Those few
    rows are read by index, never the whole table (100,000 devices take 1.7 s to read here). Every batch reads
    which devices are lost in an outage (usually none, by a partial index): whichever worker hears one of
    them brings it back.
    """
    conn.rollback()
    sessions.mark_lost(lost_devices(conn))
    conn.rollback()  # no snapshot held while the batch is decided
    names: set[str] = set()
    ids: set[int] = set()
    macs: set[str] = set()
    stale: set[tuple[str, str]] = set()  # (session name, session) this engine does not know
    offline: set[tuple[int, str]] = set()  # (device, session) of LED commands
    for item in batch:
        message = item.message
        if isinstance(message, (Reading, SessionRef, Leave)):
            device = sessions.by_session_name.get(message.name)
            if device is None or device.session_id != message.session:
                stale.add((message.name, message.session))
        elif isinstance(message, LedRequest):
            # Whatever this worker saw: another may have taken the device's leave since.
            offline.add((message.device_id, message.session))
        elif isinstance(message, MacJoin):
            macs.add(message.mac)
        elif isinstance(message, RenameRequest):
            ids.add(message.device_id)
            names.add(message.name)
    locked = bool(macs or ids)
    if not (locked or stale or offline):
        return False
    next_id = sessions.next_id
    rechecked = False
    if locked:
        conn.rollback()
        conn.exec_driver_sql(dialect.DEVICE_LOCK[conn.dialect.name])
        next_id = int(conn.exec_driver_sql(dialect.LAST_DEVICE_ID[conn.dialect.name]).scalar() or 0) + 1
        names.update(default_name(device_id) for device_id in range(next_id, next_id + len(macs)))
    names.update(name for name, _session in stale)
    ids.update(device_id for device_id, _session in offline)
    conditions: list[str] = []
    params: list[object] = []
    for column, values in (("mac", sorted(macs)), ("id", sorted(ids)), ("name", sorted(names)),
                           ("session_name", sorted(names))):
        if values:
            conditions.append(f"{column} IN ({', '.join('?' * len(values))})")
            params += values
    if locked and next_id > sessions.next_id:
        conditions.append("id >= ?")  # devices other workers added since
        params.append(sessions.next_id)
    sql = dialect.placeholders(f"{writes.DEVICE_ROWS} WHERE {' OR '.join(conditions)}", conn.dialect.paramstyle)
    devices = [device_of(row) for row in conn.exec_driver_sql(sql, tuple(params))]
    if not locked:
        conn.rollback()  # a read: no snapshot held while the batch is decided
        if not (stale & {(d.session_name, d.session_id) for d in devices} or offline):
            return False  # out of band for the database too
        if stale:
            rechecked = True
            logger.debug("the database knows sessions this worker did not: %d row(s) read", len(devices))
    if macs:
        # A MAC this engine knows but the database no longer holds: another worker's retention deleted it
        # (a device that never came online); its join now makes a new device.
        found = {device.mac for device in devices}
        sessions.forget([sessions.by_mac[mac].id for mac in macs - found if mac in sessions.by_mac])
    sessions.upsert(devices, next_id)
    return rechecked
