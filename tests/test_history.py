"""Data over time on the real stack: readings published through Mosquitto come back exactly through the raw API,
the CSV and `sensorhub export`; the writer's roll-ups match values computed here; sessions are logged; retention
deletes exactly what is older than the limit; a backup taken during a stream is whole and consistent."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Connection, Engine, text

from sensorhub.broker import Broker
from sensorhub.config import Settings
from sensorhub.db.backup import backup
from sensorhub.db.latest import refresh_latest
from sensorhub.db.models import LedReading, LightReading
from sensorhub.db.rollups import rebuild
from sensorhub.errors import DatabaseError
from sensorhub.ingest import retention
from sensorhub.ingest.drops import Drops
from sensorhub.ingest.retention import Purger
from sensorhub.ingest.service import IngestClient
from sensorhub.ingest.sessions import Inbound
from sensorhub.ingest.writer import Writer
from sensorhub.protocol import Kind, MacJoin, Reading, SessionRef, Topic
from sensorhub.timestamps import format_micros, to_micros
from sensorhub.web import create_app
from tests.devices import RawDevice
from tests.factories import add_device, add_readings
from tests.stack import ROOT
from tests.support import both_databases, wait_for

pytestmark = pytest.mark.integration



def web(settings: Settings) -> FlaskClient:
    app = create_app(settings)
    app.config["TESTING"] = True
    return app.test_client()


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def stored(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def rollups(source: Engine | Connection) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    with source.connect() if isinstance(source, Engine) else contextlib.nullcontext(source) as conn:
        return {(table, *row[:3]): tuple(row[3:]) for table in ("rollup_minute", "rollup_hour")
                for row in conn.execute(text(
                    f"SELECT device_id, kind, start, count, low, high, total, on_us FROM {table}"))}


@both_databases
def test_published_readings_come_back_exactly_and_roll_up(ingest: IngestClient, engine: Engine,
                                                          settings: Settings, tmp_path: Path) -> None:
    device = RawDevice(settings.mqtt_port, "02:00:00:00:13:01")
    name, _session = device.join()
    light = [(n * 37) % 101 for n in range(120)]
    device.reading(Topic.LED_STATUS, 1, qos=1)
    for value in light[:60]:
        device.reading(Topic.PHOTORESISTOR_STATUS, value, qos=1)
    device.reading(Topic.BUTTON_STATUS, 1, qos=1)
    time.sleep(0.3)  # kept: a press that lasts (readings are stamped on arrival; on-times are checked below)
    device.reading(Topic.BUTTON_STATUS, 0, qos=1)
    for value in light[60:]:
        device.reading(Topic.PHOTORESISTOR_STATUS, value, qos=1)
    time.sleep(0.2)  # kept: the LED on for a while, so that its on-time below is not zero
    device.reading(Topic.LED_STATUS, 0, qos=1)
    wait_for(lambda: stored(engine, "light_reading") == 120 and stored(engine, "led_reading") == 2, 10,
             what="every reading stored")
    device.leave()
    wait_for(lambda: stored(engine, "button_reading") == 2, 5)
    with engine.connect() as conn:
        device_id = int(conn.execute(text("SELECT id FROM device WHERE session_name = :n"), {"n": name}).scalar_one())
    client = web(settings)
    span = {"from": iso(datetime.now(UTC) - timedelta(minutes=5)), "to": iso(datetime.now(UTC) + timedelta(minutes=1))}

    # The raw API: every value, in order.
    raw = client.get(f"/api/devices/{device_id}/readings", query_string={**span, "bucket": "raw"}).json
    assert raw is not None and [p["value"] for p in raw["points"]] == light
    led = client.get(f"/api/devices/{device_id}/readings", query_string={**span, "bucket": "raw", "kind": "led"}).json
    assert led is not None and [p["value"] for p in led["points"]] == [1, 0]

    # The CSV and `sensorhub export`: the same rows, to the microsecond.
    answer = client.get(f"/api/devices/{device_id}/readings.csv", query_string=span)
    rows = list(csv.DictReader(io.StringIO(answer.get_data(as_text=True))))
    assert [(r["at"], int(r["value"])) for r in rows] == [(p["at"], p["value"]) for p in raw["points"]]
    fleet = client.get("/api/export.csv", query_string=span).get_data(as_text=True)
    output = tmp_path / "export.csv"
    env = {**os.environ, **settings.environ()}
    ran = subprocess.run([sys.executable, "-m", "sensorhub", "export", "--from", span["from"], "--to", span["to"],
                          "-o", str(output)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert output.read_bytes().decode() == fleet and ran.stderr.strip().endswith(f"124 readings written to {output}")
    only = subprocess.run([sys.executable, "-m", "sensorhub", "export", "--from", span["from"], "--to", span["to"],
                           "--device", str(device_id), "--kind", "light"], env=env, cwd=ROOT, capture_output=True,
                          timeout=60)
    assert only.stdout.decode() == answer.get_data(as_text=True)

    # Aggregates: what the writer kept, bucket by bucket, against values computed here from the raw points.
    minutes: dict[str, list[int]] = defaultdict(list)
    for point in raw["points"]:
        minutes[point["at"][:17] + "00.000000+00:00"].append(point["value"])
    body = client.get(f"/api/devices/{device_id}/readings", query_string={**span, "bucket": "1m"}).json
    assert body is not None
    assert [(p["at"], p["count"], p["min"], p["avg"], p["max"]) for p in body["points"]] == [
        (at, len(v), min(v), round(sum(v) / len(v), 3), max(v)) for at, v in sorted(minutes.items())]
    on, off = (datetime.fromisoformat(p["at"]) for p in led["points"])
    hourly = client.get(f"/api/devices/{device_id}/readings", query_string={**span, "bucket": "1h", "kind": "led"}).json
    assert hourly is not None
    assert sum(p["on_seconds"] for p in hourly["points"]) == pytest.approx((off - on).total_seconds())
    # ... and exactly what a rebuild from the raw rows gives (in a transaction rolled back).
    with engine.connect() as conn:
        kept = rollups(conn)
        rebuild(conn)
        assert kept == rollups(conn)
        # The latest value columns the writer kept are what the readings say.
        latest = text("SELECT id, last_led, last_led_at, last_button, last_button_at, last_light, last_light_at "
                      "FROM device ORDER BY id")
        written = [tuple(row) for row in conn.execute(latest)]
        refresh_latest(conn)
        assert written == [tuple(row) for row in conn.execute(latest)] and written[0][1] is not None
        conn.rollback()

    # The session log: named, online, ended.
    with engine.connect() as conn:
        session = conn.execute(text("SELECT session_id, started_at, online_at, ended_at FROM device_session "
                                    "WHERE device_id = :d"), {"d": device_id}).one()
    assert session[0] == _session and session[1] <= session[2] <= session[3]
    device.close()


def _old_fleet(engine: Engine, now: datetime) -> tuple[list[int], list[datetime]]:
    """Two devices with a reading every 20 minutes over 10 days, roll-ups built."""
    devices = [add_device(engine, f"vieux{i}", 50 + i, joined=now - timedelta(days=11), online=False) for i in (1, 2)]
    moments: list[datetime] = []
    for device in devices:
        moments = add_readings(engine, LightReading, device, [n % 101 for n in range(720)], now - timedelta(days=10),
                               timedelta(minutes=20))
    with engine.begin() as conn:
        rebuild(conn)
    return devices, moments


@both_databases
def test_retention_removes_exactly_the_rows_older_than_the_limit_and_keeps_the_rollups(
        engine: Engine, settings: Settings) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    _devices, moments = _old_fleet(engine, now)
    before = rollups(engine)
    purger = Purger(3, 0, now_us=lambda: to_micros(now))
    purger.delay(0)
    cutoff = format_micros(to_micros(now - timedelta(days=3)))
    with engine.connect() as conn:
        deadline = time.monotonic() + 30
        while purger.stats.passes == 0 and time.monotonic() < deadline:
            purger.run(conn, busy=False)
    with engine.connect() as conn:
        left = [str(r[0]) for r in conn.execute(text("SELECT at FROM light_reading ORDER BY at"))]
    kept = [m for m in moments if format_micros(to_micros(m)) >= cutoff]
    assert left == sorted(format_micros(to_micros(m)) for m in kept * 2)
    assert purger.stats.readings == 2 * (len(moments) - len(kept))
    assert rollups(engine) == before  # the summary of the deleted rows stays

    purger = Purger(0, 5, now_us=lambda: to_micros(now))
    purger.delay(0)
    with engine.connect() as conn:
        while purger.stats.passes == 0:
            purger.run(conn, busy=False)
    limit = format_micros(to_micros(now - timedelta(days=5)))
    assert rollups(engine) == {key: value for key, value in before.items() if key[3] >= limit}
    with engine.connect() as conn:  # the fleet's readings per minute go with them
        fleet = [tuple(row) for row in conn.execute(text(
            "SELECT start, count FROM rollup_fleet_minute ORDER BY start"))]
        assert fleet and fleet[0][0] >= limit and fleet == [tuple(row) for row in conn.execute(text(
            "SELECT start, sum(count) FROM rollup_minute GROUP BY start ORDER BY start"))]


def test_the_file_stops_growing_once_retention_is_reached(engine: Engine, settings: Settings) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    devices, _moments = _old_fleet(engine, now)
    path = Path(settings.database_url.removeprefix("sqlite:///"))

    def checkpointed_size() -> int:
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return path.stat().st_size

    full = checkpointed_size()
    day = 0
    purger = Purger(3, 0, now_us=lambda: to_micros(now + timedelta(days=day)))
    sizes = []
    for day in range(1, 6):  # each day: a day of new readings, then the purge of a day of old ones
        for device in devices:
            add_readings(engine, LightReading, device, [50] * 72, now + timedelta(days=day - 1),
                         timedelta(minutes=20))
        purger._next = 0.0
        with engine.connect() as conn:
            passes = purger.stats.passes
            while purger.stats.passes == passes:
                purger.run(conn, busy=False)
        sizes.append(checkpointed_size())
    # A few pages more at first (new index pages), then freed pages are reused: the size stands still.
    assert len(set(sizes)) == 1 and sizes[0] <= full * 1.05, (full, sizes)


@both_databases
def test_the_writer_purges_between_batches_while_readings_arrive(
        settings: Settings, engine: Engine, broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention, "START_DELAY", 0.5)
    now = datetime.now(UTC)
    _old_fleet(engine, now)
    with_retention = settings.replace(retention_days=2)
    client = IngestClient(with_retention)
    client.start(wait_ready=10)
    try:
        device = RawDevice(settings.mqtt_port, "02:00:00:00:13:02")
        device.join()
        for value in range(50):
            device.reading(Topic.PHOTORESISTOR_STATUS, value, qos=1)
        cutoff = format_micros(to_micros(now - timedelta(days=2)))

        def old_rows() -> int:
            with engine.connect() as conn:
                return int(conn.execute(text("SELECT count(*) FROM light_reading WHERE at < :c"),
                                        {"c": cutoff}).scalar_one())

        wait_for(lambda: old_rows() == 0, 20, what="old readings purged")
        wait_for(lambda: stored(engine, "light_reading") == 2 * 144 + 50 or None, 10, what="new readings kept")
        device.close()
    finally:
        client.stop()
    assert client.writer.purger.stats.readings == 2 * (720 - 144)


def test_a_backup_during_a_stream_is_consistent_and_holds_what_was_committed(
        ingest: IngestClient, engine: Engine, settings: Settings, tmp_path: Path) -> None:
    devices = [RawDevice(settings.mqtt_port, f"02:00:00:00:13:{10 + i:02X}") for i in range(3)]
    for device in devices:
        device.join()
    stop = threading.Event()

    def stream() -> None:
        value = 0
        while not stop.is_set():
            for device in devices:
                device.reading(Topic.PHOTORESISTOR_STATUS, value % 101)
            value += 1
            time.sleep(0.001)  # kept: a stream's pace, while the backup runs

    streamer = threading.Thread(target=stream)
    streamer.start()
    try:
        wait_for(lambda: stored(engine, "light_reading") > 2000, 20, what="a stream going")
        with engine.connect() as conn:
            committed = {int(r[0]) for r in conn.execute(text("SELECT id FROM light_reading"))}
        target = tmp_path / "sauvegarde.sqlite3"
        result = backup(settings.database_url, target)
        during = stored(engine, "light_reading")
        wait_for(lambda: stored(engine, "light_reading") > during + 500, 20, what="the stream going on")
    finally:
        stop.set()
        streamer.join()
    assert result.size == target.stat().st_size and target.stat().st_mode & 0o077 == 0
    with sqlite3.connect(target) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        in_copy = {int(r[0]) for r in copy.execute("SELECT id FROM light_reading")}
        minute_total = copy.execute("SELECT sum(count) FROM rollup_minute WHERE kind = 'light'").fetchone()[0]
    assert committed <= in_copy
    assert minute_total == len(in_copy)  # the roll-ups were copied in the same snapshot as the readings
    with pytest.raises(DatabaseError, match="already exists"):
        backup(settings.database_url, target)
    for device in devices:
        device.close()


def test_the_backup_command_and_the_restore_recipe(settings: Settings, engine: Engine, tmp_path: Path) -> None:
    device = add_device(engine, "capteur01")
    add_readings(engine, LightReading, device, [1, 2, 3], datetime.now(UTC) - timedelta(minutes=5))
    env = {**os.environ, **settings.environ()}
    target = tmp_path / "copie.sqlite3"
    ran = subprocess.run([sys.executable, "-m", "sensorhub", "db", "backup", str(target)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith(f"backup written to {target} (") and "integrity ok" in ran.stdout
    again = subprocess.run([sys.executable, "-m", "sensorhub", "db", "backup", str(target)], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "already exists" in again.stderr
    # Restore as docs/operations.md says: the copy replaces the database (its -wal and -shm removed), then `db upgrade`.
    path = Path(settings.database_url.removeprefix("sqlite:///"))
    engine.dispose()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(target, path)
    ran = subprocess.run([sys.executable, "-m", "sensorhub", "db", "upgrade"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert stored(engine, "light_reading") == 3


@both_databases
def test_retention_that_purges_a_devices_newest_readings_leaves_its_latest_values_as_the_readings_say(
        engine: Engine, settings: Settings) -> None:
    """A kind whose readings are all purged has no latest value any more (NULL, shown as none); a kind with
    readings left keeps its newest; the columns always equal what the reading tables give."""
    now = datetime.now(UTC).replace(microsecond=0)
    gone = add_device(engine, "vieux1", 51, joined=now - timedelta(days=11), online=False, last_seen=now)
    kept = add_device(engine, "vieux2", 52, joined=now - timedelta(days=11), online=False, last_seen=now)
    # More old rows than one purge step deletes: the newest old one goes in a later step.
    add_readings(engine, LightReading, gone, [n % 101 for n in range(700)], now - timedelta(days=10),
                 timedelta(minutes=5))
    add_readings(engine, LedReading, gone, [1], now - timedelta(days=1))
    add_readings(engine, LightReading, kept, [5, 6, 7], now - timedelta(days=5), timedelta(days=1))
    latest = "SELECT id, last_led, last_light, last_light_at FROM device ORDER BY id"
    with engine.connect() as conn:
        assert [tuple(r)[:3] for r in conn.execute(text(latest))] == [(gone, 1, 699 % 101), (kept, None, 7)]
    purger = Purger(3, 0, now_us=lambda: to_micros(now))
    purger.delay(0)
    with engine.connect() as conn:
        deadline = time.monotonic() + 30
        while purger.stats.passes == 0 and time.monotonic() < deadline:
            purger.run(conn, busy=False)
        after = [tuple(r) for r in conn.execute(text(latest))]
        refresh_latest(conn)
        assert [tuple(r) for r in conn.execute(text(latest))] == after
        conn.rollback()
    assert purger.stats.readings == 700 + 1
    assert [row[:3] for row in after] == [(gone, 1, None), (kept, None, 7)]
    assert after[0][3] is None


@both_databases
def test_stray_devices_are_purged_and_forgotten_and_the_others_kept(engine: Engine, settings: Settings) -> None:
    """A device named by a MAC join 30 h ago and never heard from since goes; one that came online, one that sent a
    reading, one whose MAC joined again an hour ago, and a stray of 20 h stay."""
    now = datetime.now(UTC)
    hours_ago = [to_micros(now - timedelta(hours=h)) for h in (30, 20, 1)]
    published: list[bytes] = []
    purger = Purger(0, 0, now_us=lambda: to_micros(now), stray_hours=24)
    writer = Writer(engine, lambda _t, payload, _q: published.append(payload), lambda _m, _q: None, Drops(),
                    purger=purger)
    macs = [f"02:57:00:00:00:0{n}" for n in range(1, 6)]
    writer.open()
    writer.process([Inbound(MacJoin(mac), hours_ago[0] + n) for n, mac in enumerate(macs[:4])])
    names = {mac: (name, session) for mac, name, session in (p.decode().split(";") for p in published)}
    writer.process([Inbound(SessionRef(*names[macs[1]]), hours_ago[0] + 10),
                    Inbound(Reading(Kind.LIGHT, *names[macs[2]], 42), hours_ago[0] + 11),
                    Inbound(MacJoin(macs[4]), hours_ago[1]),
                    Inbound(MacJoin(macs[3]), hours_ago[2])])
    writer.close()
    stray_id = writer.sessions.by_mac[macs[0]].id
    purger.delay(0)
    writer.start()
    try:
        wait_for(lambda: purger.stats.devices, 10, what="the stray purged")
        wait_for(lambda: macs[0] not in writer.sessions.by_mac, 5, what="the stray forgotten by the writer")
    finally:
        writer.stop()
    with engine.connect() as conn:
        left = set(conn.execute(text("SELECT mac FROM device")).scalars())
        sessions = conn.execute(text("SELECT count(*) FROM device_session WHERE device_id = :id"),
                                {"id": stray_id}).scalar_one()
    assert left == set(macs[1:]) and sessions == 0
    assert purger.stats.devices == 1 and stray_id not in writer.sessions.by_id
