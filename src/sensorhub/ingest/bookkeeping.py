"""The writer's bookkeeping over time, in the writer's own transaction: roll-ups and the session log.

The writer calls `stage` with what a batch inserts (its reading rows and session events) just before it
commits, `committed` once the commit succeeded and `load` whenever it reloads its state from the database.
The arithmetic is in sensorhub/buckets.py; this module only reads and writes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from enum import IntEnum

from sqlalchemy import Connection, text

from sensorhub.buckets import STATEFUL, Last, Row, roll
from sensorhub.db.rollups import upsert
from sensorhub.protocol import Kind
from sensorhub.timestamps import micros_of

logger = logging.getLogger(__name__)


class Event(IntEnum):
    """What happens to a device's session."""

    STARTED = 0  # the server named the device (MAC join): a new session, the previous one ends
    ONLINE = 1  # the device joined with its session
    ENDED = 2  # it left (or was marked offline)


#: (event, device id, session id, stored time text).
SessionEvent = tuple[Event, int, str, str]

_END_OPEN = text("UPDATE device_session SET ended_at = :at WHERE device_id = :device AND ended_at IS NULL")
_START = text("INSERT INTO device_session (device_id, session_id, started_at) VALUES (:device, :session, :at)")
_ONLINE = text("UPDATE device_session SET online_at = :at WHERE device_id = :device AND session_id = :session "
               "AND online_at IS NULL AND ended_at IS NULL")
#: The LED and button state of every online device, from the latest values its row keeps (db/latest.py: the newest
#: reading by (at, id), what a look-up in each reading table finds). One statement: a look-up per device and
#: kind took 39 s for 100,000 online devices on PostgreSQL (4.8 s on SQLite), every start of the ingest client.
_LAST_STATES = text("SELECT id, " + ", ".join(f"last_{kind}_at, last_{kind}" for kind in STATEFUL)
                    + " FROM device WHERE online")


class History:
    """Roll-ups and sessions, staged in the writer's transaction; the LED and button states between batches."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.states: dict[tuple[int, str], Last] = {}
        self._staged: dict[tuple[int, str], Last] | None = None
        #: Roll-up rows written since start (benchmarks).
        self.rollup_rows = 0

    def load(self, conn: Connection) -> None:
        """Read the LED and button state of each online device (from its row's latest values)."""
        self._staged = None
        states: dict[tuple[int, str], Last] = {}
        for row in conn.execute(_LAST_STATES):
            for n, kind in enumerate(STATEFUL):
                at, value = row[1 + 2 * n], row[2 + 2 * n]
                if at is not None and value is not None:
                    states[(int(row[0]), kind)] = Last(micros_of(str(at)), int(value))
        self.states = states

    def stage(self, conn: Connection, readings: Mapping[Kind, Sequence[Row]], events: Sequence[SessionEvent]) -> None:
        """Write the batch's session changes and roll-up upserts (not committed)."""
        ends: list[tuple[int, str]] = []
        for event, device_id, session_id, at in events:
            values = {"device": device_id, "session": session_id, "at": at}
            if event is Event.STARTED:
                conn.execute(_END_OPEN, values)
                conn.execute(_START, values)
                ends.append((device_id, at))
            elif event is Event.ONLINE:
                conn.execute(_ONLINE, values)
            else:
                conn.execute(_END_OPEN, values)
                ends.append((device_id, at))
        if not self.enabled:
            return
        rolled = roll({kind.value: rows for kind, rows in readings.items() if rows}, self.states, ends)
        self.rollup_rows += upsert(conn, rolled.buckets)
        self._staged = rolled.states

    def committed(self) -> None:
        """The transaction committed: keep the states it produced."""
        if self._staged is not None:
            self.states = self._staged
            self._staged = None

    def discard(self) -> None:
        """The transaction rolled back: forget what it staged."""
        self._staged = None
