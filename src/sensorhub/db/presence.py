"""Presence in the database, where every ingest worker sees it: conditional updates of `device.online`.

With several workers, a board's join may reach one worker and its leave another, and each worker's engine only
knows what it saw. So no worker writes `online` from what it believes: each change says what it needs to be
true of the row, and the database takes it or not.

- A join or a leave applies in the device's current session only, and only if it is later than the presence
  decision already recorded (`presence_at`): of a join and a leave that two workers apply in either order, the
  later message wins. A message whose value the row already has still moves `presence_at` on, so that an older
  message applied after it changes nothing.
- A device heard from again after an outage comes back only if it is still `lost` in that session.
- A sweep takes offline every online device whose `last_seen` (moved on by every worker's readings) is older
  than the time given: nobody heard from it since.

Each function returns what the database took, so that the session log, the counters and the log lines say what
happened rather than what one worker thought.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from sqlalchemy import Connection

from sensorhub.db import dialect

_CHANGE = (
    "UPDATE device SET online = ?, lost = FALSE, presence_at = ? "
    "WHERE id = ? AND session_id = ? AND coalesce(presence_at, '') < ? AND online <> ?"
)
_STAMP = (
    "UPDATE device SET lost = FALSE, presence_at = ? "
    "WHERE id = ? AND session_id = ? AND coalesce(presence_at, '') < ?"
)
_BACK = (
    "UPDATE device SET online = TRUE, lost = FALSE, "
    "presence_at = CASE WHEN coalesce(presence_at, '') < ? THEN ? ELSE presence_at END "
    "WHERE id = ? AND session_id = ? AND lost"
)
_SWEEP = (
    "UPDATE device SET online = FALSE, lost = ?, presence_at = ? "
    "WHERE online AND last_seen < ? AND coalesce(presence_at, '') < ? RETURNING id, session_id, name"
)
#: The devices lost in an outage, by the partial index ix_device_lost (usually none).
LOST = "SELECT id, session_id FROM device WHERE lost"


class Applied(Enum):
    """What the database did with one presence change."""

    CHANGED = "changed"  # the row took the new value
    CURRENT = "current"  # the row already had it (its presence_at moved on)
    STALE = "stale"  # a later decision, or another session, is in the row: this worker's view is behind


def set_presence(conn: Connection, device_id: int, session_id: str, online: bool, at: str) -> Applied:
    """Apply a join (`online`) or a leave to the row of `device_id`, in `session_id`, decided at `at`."""
    if _run(conn, _CHANGE, (online, at, device_id, session_id, at, online)):
        return Applied.CHANGED
    if _run(conn, _STAMP, (at, device_id, session_id, at)):
        return Applied.CURRENT
    return Applied.STALE


def bring_back(conn: Connection, device_id: int, session_id: str, at: str) -> Applied:
    """A lost device heard from in `session_id` at `at`: online again, unless something decided otherwise."""
    return Applied.CHANGED if _run(conn, _BACK, (at, at, device_id, session_id)) else Applied.STALE


def sweep(conn: Connection, since: str, lost: bool) -> list[tuple[int, str, str]]:
    """Take offline every online device not heard from since `since`; (id, session, name) of each."""
    sql = dialect.placeholders(_SWEEP, conn.dialect.paramstyle)
    return [(int(row[0]), str(row[1]), str(row[2]))
            for row in conn.exec_driver_sql(sql, (lost, since, since, since))]


def lost_devices(conn: Connection) -> list[tuple[int, str]]:
    """(id, session) of every device lost in an outage."""
    return [(int(row[0]), str(row[1])) for row in conn.exec_driver_sql(LOST)]


def _run(conn: Connection, sql: str, params: Sequence[object]) -> bool:
    """Whether the UPDATE changed a row."""
    return bool(conn.exec_driver_sql(dialect.placeholders(sql, conn.dialect.paramstyle), tuple(params)).rowcount)
