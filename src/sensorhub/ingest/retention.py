"""Retention: the writer deletes raw readings older than SENSORHUB_RETENTION_DAYS and roll-ups older than
SENSORHUB_ROLLUP_RETENTION_DAYS, a few hundred rows at a time between batches, so that ingest never waits
long behind it.

Rows are found device by device through the `(device_id, at)` indexes (and the roll-ups' primary keys), so no
extra index slows the inserts and no step scans a table. SQLite puts the freed pages on its free list and
reuses them for new rows: once retention is reached, the file stops growing.

A step that deleted a device's newest reading of a kind (its `last_<kind>_at` is older than the cut-off)
recomputes that device's latest value columns from what is left, in the same transaction (db/latest.py): they
always say what the reading tables say, so a latest value purged with all its kind's readings becomes NULL and
the pages show no value for it, as they did when the latest value was read from the readings.

Stray devices go too, after SENSORHUB_STRAY_DEVICE_HOURS: a device that was given a name by a MAC join but never
came online in any session (no `name;session` join taken) nor sent a reading that was stored (no latest value, no
hourly roll-up), and has not been heard from since (its `last_seen`: a later MAC join moves it on). A board
running the protocol comes online within a second of its name; what stays a stray is a join flood's random
MACs. They are deleted with their sessions (ON DELETE CASCADE), under the device lock that joins take, and one
line says how many; the writer then forgets them. Their ids are never handed out again (AUTOINCREMENT).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, TextClause, text

from sensorhub.db import dialect
from sensorhub.db.latest import COLUMNS, refresh_sql
from sensorhub.protocol import Kind
from sensorhub.timestamps import format_micros

logger = logging.getLogger(__name__)

DAY_US = 86_400 * 1_000_000
HOUR_US = 3_600 * 1_000_000
#: Rows deleted per statement, and per transaction.
STEP_ROWS = 250
#: Time the writer may spend purging after a batch while messages wait, and when it is idle.
BUSY_BUDGET = 0.005
IDLE_BUDGET = 0.05
#: Pause between two purge rounds while messages arrive, and between two passes once everything is purged.
BUSY_INTERVAL = 0.02
REST_INTERVAL = 60.0
#: The first pass waits this long after the client starts: what the broker kept for it while it was away
#: (and the joins of every board after a restart) go first.
START_DELAY = 10.0

_READINGS = ("light_reading", "led_reading", "button_reading")
_KIND_OF = {table: kind for kind, (table, _value, _at) in COLUMNS.items()}
_ROLLUPS = ("rollup_minute", "rollup_hour")
#: Stray devices, oldest first (ix_device_last_seen), STEP_ROWS at a time.
_STRAYS = text(
    "SELECT id, mac, name FROM device WHERE last_seen < :cutoff AND online = FALSE AND last_led_at IS NULL "
    "AND last_button_at IS NULL AND last_light_at IS NULL "
    "AND NOT EXISTS (SELECT 1 FROM device_session s WHERE s.device_id = device.id AND s.online_at IS NOT NULL) "
    "AND NOT EXISTS (SELECT 1 FROM rollup_hour r WHERE r.device_id = device.id) "
    f"ORDER BY last_seen, id LIMIT {STEP_ROWS}"
)
#: Names of the stray devices a log line shows at most.
SHOWN = 10


def _reading_delete(table: str) -> TextClause:
    return text(f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE device_id = :device "
                f"AND at < :cutoff ORDER BY at LIMIT {STEP_ROWS})")


def _latest_refresh(table: str) -> TextClause:
    """Recompute a device's latest value of the kind of `table` if the newest one was older than the cut-off."""
    kind: Kind = _KIND_OF[table]
    at = COLUMNS[kind][2]
    return text(f"{refresh_sql([kind])} WHERE id = :device AND {at} < :cutoff")


#: The fleet's readings per minute older than the cut-off, STEP_ROWS minutes at a time (its primary key).
_FLEET_DELETE = text("DELETE FROM rollup_fleet_minute WHERE start IN (SELECT start FROM rollup_fleet_minute "
                     f"WHERE start < :cutoff ORDER BY start LIMIT {STEP_ROWS})")


def _rollup_delete(table: str) -> TextClause:
    return text(f"DELETE FROM {table} WHERE device_id = :device AND kind = :kind AND start IN (SELECT start FROM "
                f"{table} WHERE device_id = :device AND kind = :kind AND start < :cutoff ORDER BY start "
                f"LIMIT {STEP_ROWS})")


@dataclass
class RetentionStats:
    """What the purge deleted since start."""

    readings: int = 0
    rollups: int = 0
    devices: int = 0
    passes: int = 0
    last_pass_s: float = 0.0


class Purger:
    """Deletes what retention allows, a small step at a time; `run` is called by the writer between batches."""

    def __init__(self, raw_days: int, rollup_days: int, now_us: Callable[[], int] | None = None, *,
                 stray_hours: float = 0) -> None:
        self.raw_days = raw_days
        self.rollup_days = rollup_days
        self.stray_hours = stray_hours
        #: Stray devices deleted and not yet taken by the writer (`take_deleted_devices`).
        self._deleted_devices: list[int] = []
        #: Looked for every quarter of their time, at most once a minute (so a short time in a test is kept).
        self._stray_every = min(REST_INTERVAL, max(1.0, stray_hours * 3600 / 4))
        self._stray_next = time.monotonic() + START_DELAY
        self._strays_in_pass: list[str] = []
        self._stray_count = 0
        self.now_us = now_us or (lambda: time.time_ns() // 1000)
        self.stats = RetentionStats()
        self._tasks: list[tuple[TextClause, dict[str, object], str]] = []
        self._refresh: dict[TextClause, TextClause] = {}
        self._next = time.monotonic() + START_DELAY
        self._pass_started = 0.0
        self._deleted_in_pass = 0

    @property
    def enabled(self) -> bool:
        """Whether anything is ever deleted."""
        return self.raw_days > 0 or self.rollup_days > 0 or self.stray_hours > 0

    def _plan(self, conn: Connection) -> None:
        """One pass: every (device, table) to purge, with the cut-offs as of now."""
        now = self.now_us()
        devices = [int(row[0]) for row in conn.execute(text("SELECT id FROM device ORDER BY id"))]
        conn.rollback()
        tasks: list[tuple[TextClause, dict[str, object], str]] = []
        if self.raw_days:
            cutoff = format_micros(now - self.raw_days * DAY_US)
            for table in _READINGS:
                statement = _reading_delete(table)
                self._refresh[statement] = _latest_refresh(table)
                tasks += [(statement, {"device": d, "cutoff": cutoff}, "readings") for d in devices]
        if self.rollup_days:
            cutoff = format_micros(now - self.rollup_days * DAY_US)
            for table in _ROLLUPS:
                statement = _rollup_delete(table)
                tasks += [(statement, {"device": d, "kind": kind, "cutoff": cutoff}, "rollups")
                          for d in devices for kind in ("light", "led", "button")]
            tasks.append((_FLEET_DELETE, {"cutoff": cutoff}, "rollups"))
        self._tasks = tasks
        self._pass_started = time.monotonic()
        self._deleted_in_pass = 0

    @property
    def pending(self) -> bool:
        """Whether a pass is under way (the writer then checks its queue often, purging in between)."""
        return bool(self._tasks)

    def delay(self, seconds: float) -> None:
        """Try again in `seconds` (after a failure)."""
        self._next = time.monotonic() + seconds
        self._stray_next = self._next

    def take_deleted_devices(self) -> list[int]:
        """The ids of the stray devices deleted since the last call (the writer forgets them)."""
        deleted, self._deleted_devices = self._deleted_devices, []
        return deleted

    def purge_strays(self, conn: Connection) -> int:
        """Delete one step of stray devices (STEP_ROWS at most); the number deleted (committed)."""
        cutoff = format_micros(self.now_us() - int(self.stray_hours * HOUR_US))
        try:
            conn.exec_driver_sql(dialect.DEVICE_LOCK[conn.dialect.name])  # no join of theirs decided meanwhile
            rows = conn.execute(_STRAYS, {"cutoff": cutoff}).all()
            ids = [int(row[0]) for row in rows]
            if ids:
                conn.execute(text(f"DELETE FROM device WHERE id IN ({', '.join(map(str, ids))})"))
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        self._deleted_devices += ids
        self.stats.devices += len(ids)
        self._stray_count += len(ids)
        self._strays_in_pass += [f"{row[2]} ({row[1]})" for row in rows[:SHOWN - len(self._strays_in_pass)]]
        if len(ids) < STEP_ROWS:  # this pass is over
            if self._stray_count:
                more = self._stray_count - len(self._strays_in_pass)
                logger.info("retention: deleted %d device(s) that never came online nor sent a reading, not heard "
                            "from for %g h (SENSORHUB_STRAY_DEVICE_HOURS): %s%s", self._stray_count,
                            self.stray_hours, ", ".join(self._strays_in_pass), f" and {more} more" if more else "")
            self._stray_count = 0
            self._strays_in_pass = []
            self._stray_next = time.monotonic() + self._stray_every
        else:
            self._stray_next = time.monotonic() + BUSY_INTERVAL
        return len(ids)

    def run(self, conn: Connection, busy: bool) -> int:
        """Purge for at most a small time budget if a round is due; return the rows deleted (committed)."""
        strays = 0
        if self.stray_hours > 0 and time.monotonic() >= self._stray_next:
            strays = self.purge_strays(conn)
        if not (self.raw_days or self.rollup_days) or time.monotonic() < self._next:
            return strays
        if not self._tasks:
            self._plan(conn)
        budget = BUSY_BUDGET if busy else IDLE_BUDGET
        deadline = time.monotonic() + budget
        deleted = 0
        while self._tasks and time.monotonic() < deadline:
            statement, values, what = self._tasks[-1]
            try:
                count = conn.execute(statement, values).rowcount
                if count and what == "readings":
                    conn.execute(self._refresh[statement], values)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            deleted += count
            if what == "readings":
                self.stats.readings += count
            else:
                self.stats.rollups += count
            if count < STEP_ROWS:
                self._tasks.pop()  # this device's table is done for this pass
        self._deleted_in_pass += deleted
        if self._tasks:
            self._next = time.monotonic() + (BUSY_INTERVAL if busy else 0.0)
        else:
            self.stats.passes += 1
            self.stats.last_pass_s = time.monotonic() - self._pass_started
            if self._deleted_in_pass:
                logger.info("retention: deleted %d rows in %.1f s (readings older than %s days, roll-ups older "
                            "than %s days)", self._deleted_in_pass, self.stats.last_pass_s,
                            self.raw_days or "∞", self.rollup_days or "∞")
            self._next = time.monotonic() + REST_INTERVAL
        return deleted + strays
