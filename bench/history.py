"""Data over time: the readings API and the CSV export on a month of a large fleet, what roll-ups cost the
writer, and retention purging a million old rows while readings arrive.

The big database is built in bulk, straight into SQLite (not through MQTT): readings with executemany, then the
roll-ups with the same bulk rebuild as migration 0004 (`sensorhub.db.rollups.rebuild`).
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import Engine, event

from bench.scenarios import Figure, Load, Sizes, latency, percentile
from bench.stack import Stack
from bench.web import full_scans
from sensorhub.config import Settings
from sensorhub.db.engine import make_engine
from sensorhub.db.latest import refresh_latest
from sensorhub.db.rollups import rebuild
from sensorhub.db.schema import init_db
from sensorhub.ingest.bookkeeping import History
from sensorhub.ingest.retention import Purger
from sensorhub.protocol import Kind
from sensorhub.timestamps import format_micros
from sensorhub.web import create_app
from tests.factories import device_row, insert_devices, mac_of

ROOT = Path(__file__).resolve().parents[1]
DAY_US = 86_400 * 1_000_000


@dataclass(frozen=True)
class HistorySizes:
    """How big the history scenarios are."""

    devices: int = 1_000
    readings: int = 5_000_000  # over 30 days
    requests: int = 200
    export_rows: int = 1_000_000
    rollup_batches: int = 200
    batch: int = 1_000
    purge_rows: int = 1_000_000


HISTORY_FULL = HistorySizes()
HISTORY_QUICK = HistorySizes(devices=20, readings=10_000, requests=10, export_rows=2_000, rollup_batches=5,
                             purge_rows=10_000)


def build_month(path: Path, devices: int, readings: int, rng: random.Random) -> None:
    """`devices` devices with `readings` readings over the last 30 days, straight into SQLite (no roll-ups yet).

    80 % light readings at random moments; 10 % LED readings, switched on for 5 minutes at a time; 10 % button
    readings, pressed for 0.3 s at a time (what boards send: the LED and the button change now and then).
    """
    engine = make_engine(f"sqlite:///{path}", create_dir=True)
    init_db(engine)
    engine.dispose()
    now = time.time_ns() // 1000
    start = now - 30 * DAY_US
    db = sqlite3.connect(path)
    db.execute("PRAGMA synchronous = OFF")
    insert_devices(db, [device_row(i, joined_us=start - DAY_US, last_seen_us=now) for i in range(1, devices + 1)])
    per_device = readings // devices
    light_count, pairs = int(per_device * 0.8), max(1, int(per_device * 0.05))
    for device in range(1, devices + 1):
        light = sorted(rng.randrange(start, now) for _ in range(light_count))
        db.executemany("INSERT INTO light_reading (device_id, at, value) VALUES (?, ?, ?)",
                       [(device, format_micros(at), rng.randrange(101)) for at in light])
        for table, held in (("led_reading", 300_000_000), ("button_reading", 300_000)):
            slot = (now - start) // pairs
            rows = []
            for k in range(pairs):
                on = start + k * slot + rng.randrange(max(1, slot - held - 1))
                rows += [(device, format_micros(on), 1), (device, format_micros(on + held), 0)]
            db.executemany(f"INSERT INTO {table} (device_id, at, value) VALUES (?, ?, ?)", rows)
        if device % 50 == 0:
            db.commit()
    db.commit()
    db.close()


class BigDatabase:
    """The month-long database, built once and shared by the API and export scenarios."""

    def __init__(self, sizes: HistorySizes) -> None:
        self.sizes = sizes
        self._tmp = tempfile.TemporaryDirectory(prefix="sensorhub-bench-history-")
        self.path = Path(self._tmp.name) / "db.sqlite3"
        self.built_s = 0.0
        self.rollups_s = 0.0

    def __enter__(self) -> BigDatabase:
        started = time.monotonic()
        build_month(self.path, self.sizes.devices, self.sizes.readings, random.Random(13))
        self.built_s = time.monotonic() - started
        engine = make_engine(f"sqlite:///{self.path}")
        started = time.monotonic()
        with engine.begin() as conn:
            rebuild(conn)
            refresh_latest(conn)
        self.rollups_s = time.monotonic() - started
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
        engine.dispose()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._tmp.cleanup()

    def settings(self) -> Settings:
        """Settings pointing at this database."""
        return Settings().replace(database_url=f"sqlite:///{self.path}", fifo=str(self.path.parent / "fifo"),
                                  state_dir=str(self.path.parent / "var"))

    def count(self) -> int:
        """Readings in the database."""
        with sqlite3.connect(self.path) as db:
            return sum(int(db.execute(f"SELECT count(*) FROM {t}_reading").fetchone()[0])
                       for t in ("light", "led", "button"))


def history_api(big: BigDatabase) -> Figure:
    """p99 server-side time of the readings API: one device over 30 days (auto), and raw over 24 hours."""
    sizes = big.sizes
    rng = random.Random(17)
    app = create_app(big.settings())
    client = app.test_client()
    statements: set[str] = set()

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.add(statement)

    now = time.time()
    month = {"from": _iso(now - 30 * 86_400), "to": _iso(now)}
    day = {"from": _iso(now - 86_400), "to": _iso(now)}
    cases = {
        "30 days, auto": lambda: (f"/api/devices/{rng.randint(1, sizes.devices)}/readings", month),
        "30 days LED, auto": lambda: (f"/api/devices/{rng.randint(1, sizes.devices)}/readings",
                                      {**month, "kind": "led"}),
        "24 h, raw": lambda: (f"/api/devices/{rng.randint(1, sizes.devices)}/readings", {**day, "bucket": "raw"}),
    }
    timings: dict[str, list[float]] = {}
    buckets: dict[str, set[str]] = {}
    points: dict[str, int] = {}
    event.listen(Engine, "before_cursor_execute", record)
    try:
        for label, make in cases.items():
            for _ in range(3):
                path, query = make()
                client.get(path, query_string=query)
            runs = timings[label] = []
            for _ in range(sizes.requests):
                path, query = make()
                before = time.perf_counter()
                answer = client.get(path, query_string=query)
                runs.append((time.perf_counter() - before) * 1000)
                body = answer.get_json()
                if answer.status_code != 200:
                    raise RuntimeError(f"GET {path} answered {answer.status_code}: {body}")
                buckets.setdefault(label, set()).add(body["bucket"])
                points[label] = max(points.get(label, 0), len(body["points"]))
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    scans = full_scans(big.path, statements) + purge_scans(big.path)
    month_p99 = percentile(timings["30 days, auto"], 0.99)
    day_p99 = percentile(timings["24 h, raw"], 0.99)
    shown = "; ".join(f"{label} p99 {percentile(v, 0.99):.1f} ms ({'/'.join(sorted(buckets[label]))}, "
                      f"<= {points[label]} points)" for label, v in timings.items())
    return Figure(
        "history_api_p99_ms", f"readings API, {sizes.devices:,} devices x 30 days, {big.count():,} readings",
        f"{shown}; full scans: {len(scans) or 'none'}", "p99 <= 50 ms (30 days auto; 24 h raw), no full scans",
        month_p99 <= 50 and day_p99 <= 50 and not scans,
        {label: {"p50_ms": round(percentile(v, 0.5), 2), "p99_ms": round(percentile(v, 0.99), 2),
                 "buckets": sorted(buckets[label]), "max_points": points[label]} for label, v in timings.items()}
        | {"full_scans": scans, "readings": big.count(), "database_built_s": round(big.built_s, 1),
           "rollups_built_s": round(big.rollups_s, 1), "db_mib": round(big.path.stat().st_size / 2**20)},
    )


def purge_scans(path: Path) -> list[str]:
    """Retention's DELETE statements whose plan scans a table instead of searching an index."""
    purger = Purger(1, 1, now_us=lambda: time.time_ns() // 1000)
    purger.delay(0)
    engine = make_engine(f"sqlite:///{path}", read_only=True)
    try:
        with engine.connect() as conn:
            purger._plan(conn)
    finally:
        engine.dispose()
    found = []
    seen: set[str] = set()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for statement, values, _what in purger._tasks:
            if statement.text in seen:
                continue
            seen.add(statement.text)
            for row in db.execute(f"EXPLAIN QUERY PLAN {statement.text}", values):
                detail = str(row[-1])
                if detail.startswith("SCAN") and "USING" not in detail:
                    found.append(f"{detail} in: {statement.text[:100]}")
    finally:
        db.close()
    return found


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _export(big: BigDatabase, start: float, end: float, output: Path) -> tuple[float, int, int]:
    """Run `sensorhub export` over [start, end): (seconds, peak RSS in bytes, rows written)."""
    env = {**big.settings().environ(), "PATH": "/usr/bin:/bin"}
    started = time.monotonic()
    process = psutil.Popen([sys.executable, "-m", "sensorhub", "export", "--from", _iso(start), "--to", _iso(end),
                            "-o", str(output)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    peak = 0
    while process.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, process.memory_info().rss)
        time.sleep(0.01)
    seconds = time.monotonic() - started
    if process.returncode != 0:
        raise RuntimeError(f"sensorhub export failed: {process.stderr.read().decode()[-500:]}")  # type: ignore[union-attr]
    with output.open("rb") as written:
        rows = sum(chunk.count(b"\n") for chunk in iter(lambda: written.read(1 << 20), b"")) - 1
    return seconds, peak, rows


def history_export(big: BigDatabase) -> Figure:
    """`sensorhub export` of about export_rows rows: rows per second and peak memory (against a fifth as many)."""
    sizes = big.sizes
    now = time.time()
    span = 30 * 86_400 * sizes.export_rows / big.count()
    with tempfile.TemporaryDirectory(prefix="sensorhub-bench-export-") as workdir:
        _small_s, small_peak, small_rows = _export(big, now - span / 5, now, Path(workdir) / "small.csv")
        seconds, peak, rows = _export(big, now - span, now, Path(workdir) / "export.csv")
        size = (Path(workdir) / "export.csv").stat().st_size
    rate = rows / seconds
    return Figure(
        "export_rows_per_s", f"sensorhub export of {rows:,} rows (whole command, process start included)",
        f"{rate:,.0f} rows/s ({seconds:.1f} s, {size / 2**20:.0f} MiB); peak RSS {peak / 2**20:.0f} MiB "
        f"(a fifth as many rows: {small_peak / 2**20:.0f} MiB)",
        ">= 200,000 rows/s, flat memory", rate >= 200_000 and peak <= small_peak * 1.2 + 8 * 2**20,
        {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rate), "peak_mib": round(peak / 2**20, 1),
         "small_rows": small_rows, "small_peak_mib": round(small_peak / 2**20, 1), "bytes": size},
    )


def rollup_cost(sizes: HistorySizes) -> Figure:
    """What keeping the roll-ups adds to the writer's transaction: the same batches with and without them."""
    with tempfile.TemporaryDirectory(prefix="sensorhub-bench-rollups-") as workdir:
        per_reading = {}
        for enabled in (False, True, False, True):
            path = Path(workdir) / f"db-{enabled}-{time.monotonic_ns()}.sqlite3"
            engine = make_engine(f"sqlite:///{path}", create_dir=True)
            init_db(engine)
            per_reading.setdefault(enabled, []).append(_writer_batches(engine, sizes, History(enabled)))
            engine.dispose()
    without, with_rollups = min(per_reading[False]), min(per_reading[True])
    cost = with_rollups - without
    return Figure(
        "rollup_cost_us", f"writer transaction per reading, batches of {sizes.batch:,} from 100 devices",
        f"{without:.2f} µs without roll-ups, {with_rollups:.2f} µs with (+{cost:.2f} µs, "
        f"+{cost / without:.0%}); ceiling {1e6 / with_rollups:,.0f} readings/s",
        "ingest >= 10,000/s with roll-ups (see sustained_qos0)", 1e6 / with_rollups >= 10_000,
        {"without_us": round(without, 3), "with_us": round(with_rollups, 3), "cost_us": round(cost, 3)},
    )


def _writer_batches(engine: Engine, sizes: HistorySizes, history: History) -> float:
    """µs per reading of the writer's insert + roll-up upsert + commit, for light readings from 100 devices."""
    now = time.time_ns() // 1000
    with engine.begin() as conn:
        insert_devices(conn, [device_row(i, joined_us=now - DAY_US, name=f"capteur{i:03d}", session="1.000001")
                              for i in range(1, 101)])
    rng = random.Random(3)
    elapsed = 0.0
    moment = now - DAY_US // 2
    with engine.connect() as conn:
        for _ in range(sizes.rollup_batches):
            rows = []
            for n in range(sizes.batch):
                moment += 1_000  # 1,000 readings/s of stored time: a minute spans several batches
                rows.append((1 + n % 100, format_micros(moment), rng.randrange(101)))
            started = time.perf_counter()
            conn.exec_driver_sql("INSERT INTO light_reading (device_id, at, value) VALUES (?, ?, ?)", rows)
            history.stage(conn, {Kind.LIGHT: rows}, [])
            conn.commit()
            history.committed()
            elapsed += time.perf_counter() - started
    return elapsed / (sizes.rollup_batches * sizes.batch) * 1e6


def retention(sizes: Sizes, history_sizes: HistorySizes) -> Figure:
    """Purge purge_rows old readings while the latency scenario publishes at its rate: publish -> commit p99."""
    stack = Stack(components=("broker", "client"))  # the latency scenario's stack: no web server, idle there
    stack.settings = stack.settings.replace(retention_days=1)
    _old_readings(stack.dir / "db.sqlite3", history_sizes.purge_rows)
    with stack, Load(stack, sizes.devices) as load:
        before = _old_count(stack)
        started = time.monotonic()
        emptied: list[float] = []
        stop = threading.Event()

        def watch() -> None:  # when the last old row went
            while not stop.wait(0.1):
                if not _old_count(stack, any_left=True):
                    emptied.append(time.monotonic() - started)
                    return

        watcher = threading.Thread(target=watch)
        watcher.start()
        measured = replace(sizes, latency_seconds=40) if sizes.latency_seconds >= 20 else sizes
        try:
            figure = latency(stack, load, measured)
            during = before - _old_count(stack)
            watcher.join(300)
        finally:
            stop.set()
            watcher.join()
        done_in = emptied[0] if emptied else float("nan")
    p99 = figure.data["p99_ms"]
    return Figure(
        "retention_p99_ms",
        f"purging {history_sizes.purge_rows:,} old readings while {sizes.latency_rate:,}/s arrive",
        f"{figure.value}; {during:,} purged during the {measured.latency_seconds:g} s measured, all "
        f"{before:,} in {done_in:.0f} s",
        "publish -> commit p99 <= 150 ms", figure.ok and p99 <= 150,
        {**figure.data, "old_rows": before, "purged_during": during, "all_purged_s": round(done_in, 1)},
    )


def _old_readings(path: Path, count: int) -> None:
    """`count` light readings 2 to 9 days old, on 100 devices that have left (roll-ups built)."""
    engine = make_engine(f"sqlite:///{path}", create_dir=True)
    init_db(engine)
    engine.dispose()
    now = time.time_ns() // 1000
    db = sqlite3.connect(path)
    db.execute("PRAGMA synchronous = OFF")
    insert_devices(db, [device_row(i, joined_us=now - 10 * DAY_US, last_seen_us=now - DAY_US, online=False,
                                   name=f"ancien{i:03d}", mac=mac_of(i, first=0x06), session="1.000001")
                        for i in range(1, 101)])
    per_device = count // 100
    step = 7 * DAY_US // per_device
    for device in range(1, 101):
        db.executemany("INSERT INTO light_reading (device_id, at, value) VALUES (?, ?, ?)",
                       [(device, format_micros(now - 9 * DAY_US + k * step + device), k % 101)
                        for k in range(per_device)])
    db.commit()
    db.close()
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        rebuild(conn)
        refresh_latest(conn)
    engine.dispose()


def _old_count(stack: Stack, *, any_left: bool = False) -> int:
    """Readings older than a day (or, cheaply through the index, how many devices still have some)."""
    cutoff = format_micros(time.time_ns() // 1000 - DAY_US)
    query = ("SELECT count(*) FROM device d WHERE EXISTS (SELECT 1 FROM light_reading r WHERE r.device_id = d.id "
             "AND r.at < ?)") if any_left else "SELECT count(*) FROM light_reading WHERE at < ?"
    with contextlib.closing(sqlite3.connect(f"file:{stack.dir / 'db.sqlite3'}?mode=ro", uri=True)) as db:
        return int(db.execute(query, (cutoff,)).fetchone()[0])


def run_history(sizes: Sizes, history_sizes: HistorySizes, only: set[str], attempt: Any) -> None:
    """The history scenarios selected in `only` (`attempt(key, measure)` runs and reports each)."""
    if only & {"history", "export"}:
        with BigDatabase(history_sizes) as big:
            if "history" in only:
                attempt("history", lambda: history_api(big))
            if "export" in only:
                attempt("export", lambda: history_export(big))
    if "rollups" in only:
        attempt("rollups", lambda: rollup_cost(history_sizes))
    if "retention" in only:
        attempt("retention", lambda: retention(sizes, history_sizes))

