"""Server-side time of /historique, /api/devices and /api/devices/<id> on a big database, and its query plans."""

from __future__ import annotations

import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event

from bench.scenarios import Figure, Sizes, percentile
from sensorhub.config import Settings
from sensorhub.db.engine import make_engine
from sensorhub.db.latest import refresh_sql
from sensorhub.db.schema import init_db
from sensorhub.timestamps import format_micros
from sensorhub.web import create_app
from tests.factories import device_row, insert_devices

#: Share of readings per kind (light readings come every few seconds; LED and button events are rarer).
MIX = {"light_reading": 0.8, "button_reading": 0.1, "led_reading": 0.1}


def build(path: Path, devices: int, readings: int, rng: random.Random) -> None:
    """A database with `devices` devices and `readings` readings spread over the last 30 days."""
    engine = make_engine(f"sqlite:///{path}", create_dir=True)
    init_db(engine)
    engine.dispose()
    now = time.time_ns() // 1000
    day = 86_400 * 1_000_000
    joined = now - 31 * day
    db = sqlite3.connect(path)
    db.execute("PRAGMA synchronous = OFF")
    insert_devices(db, [device_row(i, joined_us=joined, last_seen_us=now - rng.randrange(day), online=i % 3 == 0,
                                   session=f"{(now - day) // 1_000_000}.{i:06d}") for i in range(1, devices + 1)])
    per_device = readings // devices
    for table, share in MIX.items():
        count = max(1, int(per_device * share))
        step = 30 * day // count
        binary = table != "light_reading"
        for device in range(1, devices + 1):
            db.executemany(
                f"INSERT INTO {table} (device_id, at, value) VALUES (?, ?, ?)",
                [(device, format_micros(joined + 1 + k * step + rng.randrange(step)),
                  k % 2 if binary else rng.randrange(101)) for k in range(count)],
            )
        db.commit()
    db.execute(refresh_sql())  # the latest value columns, as the ingest client keeps them
    db.execute("ANALYZE")
    db.commit()
    db.close()


def web_latency(sizes: Sizes) -> Figure:
    """p99 server-side time of the three pages on a database of web_devices devices and web_readings readings."""
    rng = random.Random(5)
    with tempfile.TemporaryDirectory(prefix="sensorhub-bench-web-") as workdir:
        path = Path(workdir) / "db.sqlite3"
        started = time.monotonic()
        build(path, sizes.web_devices, sizes.web_readings, rng)
        built_in = time.monotonic() - started
        settings = Settings().replace(database_url=f"sqlite:///{path}", fifo=str(Path(workdir) / "fifo"),
                                      state_dir=str(Path(workdir) / "var"))
        app = create_app(settings)
        client = app.test_client()
        statements: set[str] = set()

        def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            statements.add(statement)

        event.listen(Engine, "before_cursor_execute", record)
        timings: dict[str, list[float]] = {}
        try:
            for label, make_path in (
                ("/historique", lambda: "/historique"),
                ("/api/devices", lambda: "/api/devices"),
                ("/api/devices/<id>", lambda: f"/api/devices/{rng.randint(1, sizes.web_devices)}"),
            ):
                for _ in range(3):  # warm the caches
                    client.get(make_path())
                runs = timings[label] = []
                for _ in range(sizes.web_requests):
                    target = make_path()
                    before = time.perf_counter()
                    answer = client.get(target)
                    runs.append((time.perf_counter() - before) * 1000)
                    if answer.status_code != 200:
                        raise RuntimeError(f"GET {target} answered {answer.status_code}")
        finally:
            event.remove(Engine, "before_cursor_execute", record)
        scans = full_scans(path, statements)
    worst = max(percentile(values, 0.99) for values in timings.values())
    shown = "; ".join(f"{label} p99 {percentile(values, 0.99):.0f} ms" for label, values in timings.items())
    return Figure(
        "web_p99_ms", f"pages with {sizes.web_devices:,} devices, {sizes.web_readings:,} readings (server side)",
        f"{shown}; full scans: {len(scans) or 'none'}", "p99 <= 100 ms, no full scans", worst <= 100 and not scans,
        {label: {"p50_ms": round(percentile(v, 0.5), 1), "p99_ms": round(percentile(v, 0.99), 1)}
         for label, v in timings.items()} | {"full_scans": scans, "database_built_s": round(built_in, 1)},
    )


def full_scans(path: Path, statements: set[str]) -> list[str]:
    """Statements whose plan reads a whole reading or roll-up table (SCAN without an index)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    found = []
    for statement in statements:
        if not statement.lstrip().upper().startswith("SELECT"):
            continue
        parameters = [1] * statement.count("?")
        plan = db.execute(f"EXPLAIN QUERY PLAN {statement}", parameters).fetchall()
        for row in plan:
            detail = str(row[-1])
            if detail.startswith("SCAN") and ("_reading" in detail or "rollup_" in detail) and "USING" not in detail:
                found.append(f"{detail} in: {statement[:120]}")
    db.close()
    return found
