"""Each device's latest LED, button and light value, kept in the device row so that lists read no reading table.

The ingest client keeps the `last_<kind>` / `last_<kind>_at` columns up to date in the UPDATE of `last_seen` it
makes per batch (writer.py). Whatever else writes or deletes readings (the demo seed, the benches' and tests'
data builders, retention, migration 0005) calls `refresh_latest`, which recomputes them from the reading
tables: the newest reading by (at, id), as the pages showed it before the columns existed; NULL where a device
has no reading of that kind (none recorded, or all purged).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from sqlalchemy import Connection, text

from sensorhub.protocol import Kind

logger = logging.getLogger(__name__)

#: Per kind: its reading table and the device columns holding the latest value and its stored time stamp.
COLUMNS: dict[Kind, tuple[str, str, str]] = {
    kind: (f"{kind.value}_reading", f"last_{kind.value}", f"last_{kind.value}_at") for kind in Kind
}
#: Devices per statement when only some are refreshed (well under SQLite's parameter limit).
CHUNK = 500


def _newest(table: str, column: str) -> str:
    return (f"(SELECT r.{column} FROM {table} r WHERE r.device_id = device.id "
            "ORDER BY r.at DESC, r.id DESC LIMIT 1)")


def refresh_sql(kinds: Iterable[Kind] = tuple(Kind)) -> str:
    """The UPDATE recomputing the columns of `kinds` for every device (append a WHERE to narrow it)."""
    sets = []
    for kind in kinds:
        table, value, at = COLUMNS[kind]
        sets += [f"{value} = {_newest(table, 'value')}", f"{at} = {_newest(table, 'at')}"]
    return "UPDATE device SET " + ", ".join(sets)


def refresh_latest(conn: Connection, device_ids: Sequence[int] | None = None,
                   kinds: Iterable[Kind] = tuple(Kind)) -> None:
    """Recompute the latest value columns of `device_ids` (all devices if None) from the reading tables."""
    statement = refresh_sql(kinds)
    if device_ids is None:
        conn.execute(text(statement))
        return
    ordered = sorted(set(device_ids))  # id order, like the writer: two transactions lock rows in the same order
    for start in range(0, len(ordered), CHUNK):
        chunk = ordered[start:start + CHUNK]
        marks = ", ".join(f":d{i}" for i in range(len(chunk)))
        conn.execute(text(f"{statement} WHERE id IN ({marks})"), {f"d{i}": d for i, d in enumerate(chunk)})
