"""Roll-up tables on disk: the upsert the writer runs in its transaction, and a bulk rebuild from the readings.

The upsert is plain `INSERT … ON CONFLICT … DO UPDATE`, which SQLite and PostgreSQL both accept; it adds each
minute's readings of the whole fleet to `rollup_fleet_minute` in the same transaction, so that the overview's
chart reads one row a minute and a worker rather than every device's. The rebuild (migration 0004, `sensorhub db
seed`, the benchmark's builder) aggregates counts in SQL and computes the LED and button on-time with the same
pure code as the writer (`sensorhub.buckets`), then sums the fleet's minutes again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence

from sqlalchemy import Connection, text

from sensorhub.buckets import STATEFUL, Bucket, Key, Last, Row, roll

logger = logging.getLogger(__name__)

TABLES = {"1m": "rollup_minute", "1h": "rollup_hour"}
#: Readings per minute of the whole fleet, kept by `upsert` with `rollup_minute` (the overview's traffic chart).
FLEET = "rollup_fleet_minute"
KINDS = ("led", "button", "light")

def _upsert_sql(table: str, marker: str) -> str:
    values = ", ".join([marker] * 8)
    return (
        f"INSERT INTO {table} AS r (device_id, kind, start, count, low, high, total, on_us) VALUES ({values}) "
        "ON CONFLICT (device_id, kind, start) DO UPDATE SET "
        "count = r.count + excluded.count, "
        "low = CASE WHEN r.low IS NULL OR excluded.low < r.low THEN excluded.low ELSE r.low END, "
        "high = CASE WHEN r.high IS NULL OR excluded.high > r.high THEN excluded.high ELSE r.high END, "
        "total = r.total + excluded.total, "
        "on_us = r.on_us + excluded.on_us"
    )


#: The upsert per table and DB-API parameter style (`?` for sqlite3, `%s` for PostgreSQL's drivers): passed
#: straight to the driver, it costs a third of what SQLAlchemy's parameter processing would for each row.
_UPSERT = {(size, style): _upsert_sql(table, "?" if style == "qmark" else "%s")
           for size, table in TABLES.items() for style in ("qmark", "format")}


#: The fleet's readings per minute (`rollup_fleet_minute`), per parameter style.
_FLEET_UPSERT = {style: f"INSERT INTO {FLEET} AS f (start, worker, count) VALUES ({', '.join([marker] * 3)}) "
                        "ON CONFLICT (start, worker) DO UPDATE SET count = f.count + excluded.count"
                 for style, marker in (("qmark", "?"), ("format", "%s"))}


def upsert(conn: Connection, buckets: Mapping[str, Mapping[Key, Bucket]], worker: int = 0) -> int:
    """Add bucket changes to the roll-up tables, and their readings per minute to the fleet's (as `worker`); return
    how many device roll-up rows were written."""
    style = "qmark" if conn.dialect.paramstyle == "qmark" else "format"
    written = 0
    for size, changes in buckets.items():
        if not changes:
            continue
        conn.exec_driver_sql(_UPSERT[(size, style)], [
            (key[0], key[1], key[2], b.count, b.low, b.high, b.total, b.on_us) for key, b in changes.items()
        ])
        written += len(changes)
    fleet: dict[str, int] = {}
    for key, bucket in buckets.get("1m", {}).items():
        if bucket.count:
            fleet[key[2]] = fleet.get(key[2], 0) + bucket.count
    if fleet:  # in time order: two transactions of one worker's rows lock them in the same order
        conn.exec_driver_sql(_FLEET_UPSERT[style], [(start, worker, count) for start, count in sorted(fleet.items())])
    return written


def rebuild_fleet(conn: Connection) -> None:
    """Recompute the fleet's readings per minute from every device's 1-minute roll-ups (not committed)."""
    conn.execute(text(f"DELETE FROM {FLEET}"))
    conn.execute(text(f"INSERT INTO {FLEET} (start, worker, count) SELECT start, 0, sum(count) FROM rollup_minute "
                      "GROUP BY start HAVING sum(count) > 0"))


def _where_devices(device_ids: Sequence[int] | None, column: str = "device_id") -> str:
    if device_ids is None:
        return ""
    return f" WHERE {column} IN ({', '.join(str(int(i)) for i in device_ids) or 'NULL'})"


def rebuild(conn: Connection, device_ids: Sequence[int] | None = None, chunk: int = 50_000, *,
            fleet: bool = True) -> None:
    """Recompute the roll-ups of `device_ids` (None: every device) from their readings, then (with `fleet`) the
    fleet's readings per minute (not committed)."""
    where = _where_devices(device_ids)
    for table in TABLES.values():
        conn.execute(text(f"DELETE FROM {table}{where}"))
    for kind in KINDS:
        conn.execute(text(
            f"INSERT INTO rollup_minute (device_id, kind, start, count, low, high, total, on_us) "
            f"SELECT device_id, '{kind}', substr(at, 1, 17) || '00.000000', count(*), min(value), max(value), "
            f"sum(value), 0 FROM {kind}_reading{where} GROUP BY device_id, substr(at, 1, 17)"
        ))
    # Time on: the LED and button readings of each device in order, through the writer's arithmetic; the
    # end of every recorded session stops the count as a leave does.
    ends: dict[int, list[tuple[int, str]]] = {}
    for device_id, ended in conn.execute(text(
            f"SELECT device_id, ended_at FROM device_session WHERE ended_at IS NOT NULL"
            f"{where.replace(' WHERE ', ' AND ')} ORDER BY device_id, ended_at")):
        ends.setdefault(int(device_id), []).append((int(device_id), str(ended)))
    devices = [int(row[0]) for row in conn.execute(text(f"SELECT id FROM device{_where_devices(device_ids, 'id')}"))]
    for device_id in devices:
        for kind in STATEFUL:
            states: dict[tuple[int, str], Last] = {}
            pending = list(ends.get(device_id, ()))
            for rows, more in _chunks(conn, kind, device_id, chunk):
                upto = rows[-1][1]
                now = [end for end in pending if end[1] <= upto or not more]
                pending = pending[len(now):]
                rolled = roll({kind: rows}, states, now)
                # Counts are already in the table (SQL above): keep only the on-time.
                on_time = {key: Bucket(on_us=bucket.on_us) for key, bucket in rolled.buckets["1m"].items()
                           if bucket.on_us}
                upsert(conn, {"1m": on_time})
                states = rolled.states
    conn.execute(text(
        "INSERT INTO rollup_hour (device_id, kind, start, count, low, high, total, on_us) "
        "SELECT device_id, kind, substr(start, 1, 14) || '00:00.000000', sum(count), min(low), max(high), "
        f"sum(total), sum(on_us) FROM rollup_minute{where} GROUP BY device_id, kind, substr(start, 1, 14)"
    ))
    if fleet:
        rebuild_fleet(conn)
    logger.info("roll-ups rebuilt for %s", "every device" if device_ids is None else f"{len(device_ids)} device(s)")


def _chunks(conn: Connection, kind: str, device_id: int, size: int) -> Iterator[tuple[list[Row], bool]]:
    """One device's readings of one kind in time order, `size` at a time, each with whether more follow."""
    after: tuple[str, int] = ("", 0)
    while True:
        found = conn.execute(text(
            f"SELECT at, id, value FROM {kind}_reading WHERE device_id = :device AND (at > :at OR "
            f"(at = :at AND id > :id)) ORDER BY at, id LIMIT :size"),
            {"device": device_id, "at": after[0], "id": after[1], "size": size + 1}).all()
        if not found:
            return
        more = len(found) > size
        found = found[:size]
        yield [(device_id, str(r[0]), int(r[2])) for r in found], more
        if not more:
            return
        after = (str(found[-1][0]), int(found[-1][1]))


def flatten(buckets: Mapping[str, Mapping[Key, Bucket]]) -> Iterable[tuple[str, Key, Bucket]]:
    """Every (size, key, bucket) of a change set (tests)."""
    for size, changes in buckets.items():
        for key, bucket in changes.items():
            yield size, key, bucket
