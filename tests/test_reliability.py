"""Faults an operator meets (docs/operations.md, "Reliability"): the processes and files behind sensorhub fail,
nothing is lost and nothing false is shown."""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from sqlalchemy import Engine, text

from sensorhub.broker import Broker
from sensorhub.config import Settings
from sensorhub.db.engine import make_engine
from sensorhub.db.schema import init_db
from sensorhub.ingest.service import IngestClient
from sensorhub.mqttclient import stop_loop
from sensorhub.protocol import Topic
from sensorhub.web import create_app
from tests.devices import RawDevice
from tests.stack import http_status, web_server, web_url
from tests.support import settings_for, wait_for

pytestmark = pytest.mark.integration


def test_a_killed_gunicorn_master_is_restarted_on_the_same_socket(settings: Settings, engine: Engine) -> None:
    with web_server(settings, workers=2) as web:
        assert web.process is not None
        watcher = psutil.Process(web.process.pid)
        master = watcher.children()[0]
        workers = wait_for(lambda: master.children() if len(master.children()) == 2 else [], 10,
                           what="two gunicorn workers")
        master.send_signal(signal.SIGKILL)
        wait_for(lambda: "was killed by SIGKILL; restarting it" in web.output(), 10, what="the restart")
        wait_for(lambda: [c for c in watcher.children() if c.pid != master.pid], 10, what="a new master")
        wait_for(lambda: http_status(web_url(settings, "/accueil")) == 200, 20, what="the pages again")
        assert not any(worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE for worker in workers)
        # The port never changed hands: the watcher kept the listening socket for the new master.
        with socket.socket() as probe, pytest.raises(OSError):
            probe.bind(("0.0.0.0", settings.web_port))
        everything = [watcher, *watcher.children(recursive=True)]
    assert web.process.returncode == 0
    assert not [p for p in everything if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


# -- the broker restarts ---------------------------------------------------------------------------------


def _online(engine: Engine, name: str) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(text("SELECT online FROM device WHERE name = :n"), {"n": name}).scalar())


def _count(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM led_reading JOIN device ON device.id = device_id "
                                     "WHERE device.name = :n"), {"n": name}).scalar_one())


@pytest.fixture
def client(settings: Settings, engine: Engine) -> Iterator[tuple[Broker, IngestClient]]:
    """A real broker and the ingest client (in-process, to read its counters), both ready."""
    broker = Broker(settings)
    broker.start()
    ingest = IngestClient(settings)
    try:
        ingest.start(wait_ready=10)
        yield broker, ingest
    finally:
        ingest.stop()
        broker.stop()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_after_a_broker_restart_a_board_joining_at_once_gets_its_name_and_loses_nothing(
        client: tuple[Broker, IngestClient], engine: Engine, settings: Settings, how: str) -> None:
    broker, _ingest = client
    assert broker.process is not None
    if how == "SIGKILL":
        # What the autosave (every 30 s) does for a broker that has run a while; then the crash.
        broker.process.send_signal(signal.SIGUSR1)
        # Complete once there: Mosquitto writes `<file>.new` and renames it.
        wait_for(lambda: any((Path(settings.state_dir) / "mosquitto").glob("*.db")), 5, what="the broker's save")
        broker.crash()
    else:
        broker.stop()  # a clean stop saves the sessions
    restarted = Broker(settings)
    restarted.start()
    try:
        board = RawDevice(settings.mqtt_port, "02:00:00:00:00:C1")
        # At once, before the client is back: the broker kept its session and queues the join for it.
        board.client = board._connect()
        board._subscribe(Topic.NAME_ASSIGN, 2)
        board.publish(Topic.JOIN, board.mac, qos=2)
        board.name, board.session = board.assignments.get(timeout=10)  # a single attempt, as a board makes
        board.start_session()
        stream = [board.reading(Topic.LED_STATUS, number % 2, qos=1) for number in range(500)]
        for info in stream:
            info.wait_for_publish(10)
        wait_for(lambda: _count(engine, board.name) == 500, 20,
                 what=f"the 500 QoS 1 readings (have {_count(engine, board.name)})")
        assert _online(engine, board.name)
        board.close()
    finally:
        restarted.stop()


def test_while_the_broker_is_down_every_device_is_offline_and_comes_back_as_it_rejoins(
        client: tuple[Broker, IngestClient], engine: Engine, settings: Settings) -> None:
    broker, ingest = client
    boards = [RawDevice(settings.mqtt_port, f"02:00:00:00:00:D{n}") for n in range(2)]
    for board in boards:
        board.join()
    wait_for(lambda: all(_online(engine, board.name) for board in boards), 5)
    broker.stop()
    for board in boards:
        board.crash()
    wait_for(lambda: not any(_online(engine, board.name) for board in boards), 10,
             what="the devices marked offline while the broker is down")
    restarted = Broker(settings)
    restarted.start()
    try:
        wait_for(ingest.mqtt.is_connected, 5, what="the client back")
        boards[0].join()
        wait_for(lambda: _online(engine, boards[0].name), 5, what="the board that rejoined")
        assert not _online(engine, boards[1].name), "a board that did not come back is shown online"
        boards[0].close()
    finally:
        restarted.stop()


# -- a full disk -----------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (root only; skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 4 MiB tmpfs here ({done.stderr.strip() or done.returncode}): needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_loses_nothing_and_the_client_catches_up_once_space_is_freed(
        small_disk: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # 3,000 readings from one board at once, three times the default burst: the flood limit is not under test.
    settings = settings_for(tmp_path).replace(database_url=f"sqlite:///{small_disk / 'db.sqlite3'}",
                                              readings_per_second=0)
    engine = make_engine(settings.database_url, create_dir=True)
    init_db(engine)
    broker = Broker(settings)
    broker.start()
    ingest = IngestClient(settings)
    filler = small_disk / "filler"
    try:
        ingest.start(wait_ready=10)
        board = RawDevice(settings.mqtt_port, "02:00:00:00:00:E1")
        name, _ = board.join()
        wait_for(lambda: _online(engine, name), 5)
        engine.dispose()
        free = shutil.disk_usage(small_disk).free
        with filler.open("wb") as out:  # leave about 64 KiB
            out.write(b"\0" * max(0, free - 64 * 1024))
        total = 3000
        with caplog.at_level(logging.DEBUG, logger="sensorhub.ingest.writer"):
            stream = [board.reading(Topic.LED_STATUS, number % 2, qos=1) for number in range(total)]
            wait_for(lambda: "disk holding the database is full" in caplog.text, 20, what="the full-disk line")
        stored_while_full = _count(engine, name)
        assert stored_while_full < total
        assert "free in" in caplog.text  # the line says how much is free, and where
        filler.unlink()
        for info in stream:
            info.wait_for_publish(30)
        wait_for(lambda: _count(engine, name) == total, 60,
                 what=f"every reading once space is freed (have {_count(engine, name)})")
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
        wal = small_disk / "db.sqlite3-wal"
        wait_for(lambda: not wal.exists() or wal.stat().st_size == 0, 10,
                 what="the WAL truncated once the backlog is written")
        board.close()
    finally:
        ingest.stop()
        broker.stop()
        engine.dispose()


def test_api_stats_says_when_the_disk_is_low(small_disk: Path, tmp_path: Path) -> None:
    settings = settings_for(tmp_path).replace(database_url=f"sqlite:///{small_disk / 'db.sqlite3'}",
                                              low_space_mib=100)
    engine = make_engine(settings.database_url, create_dir=True)
    init_db(engine)
    engine.dispose()
    app = create_app(settings)
    body = app.test_client().get("/api/stats").get_json()
    assert body["disk_low"] is True and 0 < body["disk_free_bytes"] <= 4 * 1024 * 1024
    settings = settings.replace(low_space_mib=1)
    body = create_app(settings).test_client().get("/api/stats").get_json()
    assert body["disk_low"] is False


def test_two_workers_one_killed_mid_stream_lose_nothing_and_the_restarted_one_takes_its_share(
        settings: Settings, engine: Engine) -> None:
    """20,000 QoS 1 readings (200 devices x values 0-99, each pair once) to two `sensorhub client` workers; worker 2
    is SIGKILLed mid-stream and started again: every pair is stored; duplicates are counted and printed. The
    bench's `worker_kill` scenario, at the test's size."""
    from bench.workerkill import kill_one_of_two

    # 200 new boards at once: beyond the default bound of 60 new devices a minute per worker.
    run = kill_one_of_two(settings.replace(new_devices_per_minute=0), engine, devices=200)
    print(f"{run.sent:,} QoS 1 readings, worker 2 SIGKILLed after {run.killed_at:,}: {run.stored:,} stored, "
          f"{run.duplicates} duplicate(s), {run.across_kill} across the kill, publisher connected "
          f"{run.publisher_connects} time(s)")
    assert run.stored == run.sent == 20_000  # nothing lost
    # QoS 1 is at least once: the kill duplicates what the killed worker had committed and not acknowledged yet.
    # Not bounded by the broker's in-flight window of 20 (test below: Mosquitto 2.0.11 sends 20 more for each
    # acknowledgement, hundreds were in flight at the kill): up to 262 were measured across the kill
    # (docs/performance.md, "One of two workers killed"); bounded here at 5 %, which a runaway would exceed.
    assert run.across_kill <= run.sent // 20
    if run.publisher_connects == 1:  # a publisher that reconnects sends its own unacknowledged messages again
        assert run.duplicates == run.across_kill
    stopped = run.restarted_output.split("ingest client stopped")[-1].split("\n")[0]
    assert "ingest client stopped; stored" in run.restarted_output
    assert "'light': 0}" not in stopped  # it took its share


def test_the_broker_window_of_20_unacknowledged_messages_holds_only_until_the_first_acknowledgement(
        broker: Broker, settings: Settings) -> None:
    """A connection made as the ingest client makes it (MQTT 5, no Receive Maximum, acknowledging by hand once
    committed) gets 20 QoS 1 messages and no more until it acknowledges one (Mosquitto's max_inflight_messages);
    but one acknowledgement of the oldest lets 20 more out, not one: Mosquitto 2.0.11's db__message_delete_outgoing
    fills the window counting only the messages in flight before the acknowledged one. With acknowledgements
    flowing, a worker has hundreds of messages in flight (up to 1,148 in the worker-kill test's runs, 119 to 582
    at the kill): the window does not bound what a killed worker duplicates (docs/performance.md). Should a
    Mosquitto release fix this, the last wait fails: the window bounds them again and the docs should say so."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from sensorhub.credentials import CLIENT_USER, client_password

    received: list[int] = []  # the QoS 1 messages, by id
    sentinels: list[bytes] = []  # the QoS 0 ones
    subscribed = threading.Event()

    def on_message(_client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        if message.qos:
            received.append(message.mid)
        else:
            sentinels.append(message.payload)

    worker = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="window-probe", protocol=mqtt.MQTTv5,
                         manual_ack=True)
    worker.username_pw_set(CLIENT_USER, client_password(settings))
    worker.on_message = on_message
    worker.on_subscribe = lambda *_: subscribed.set()
    worker.connect("127.0.0.1", settings.mqtt_port)
    worker.loop_start()
    board = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    board.connect("127.0.0.1", settings.mqtt_port)
    board.loop_start()
    try:
        wait_for(worker.is_connected, 5, what="the probe connected")
        subscription = worker.subscribe(str(Topic.PHOTORESISTOR_STATUS), qos=1)
        assert subscription[0] == mqtt.MQTT_ERR_SUCCESS
        assert subscribed.wait(5), "no SUBACK"
        sent = [board.publish(str(Topic.PHOTORESISTOR_STATUS), f"capteur01;1.000000;{value}", qos=1)
                for value in range(100)]
        for info in sent:
            info.wait_for_publish(5)  # the broker has all 100
        # A QoS 0 sentinel, sent at once (no window for QoS 0): had the broker sent more than 20 without an
        # acknowledgement, they would have come before it.
        board.publish(str(Topic.PHOTORESISTOR_STATUS), b"capteur01;1.000000;0", qos=0).wait_for_publish(5)
        wait_for(lambda: sentinels, 5, what="the QoS 0 sentinel")
        assert len(received) == 20
        worker.ack(received[0], 1)
        wait_for(lambda: len(received) >= 21, 5, what=f"one more once one is acknowledged ({received})")
        wait_for(lambda: len(received) >= 40, 5, what=f"20 more for that one acknowledgement ({len(received)})")
    finally:
        for client in (worker, board):
            client.disconnect()
            stop_loop(client)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_workers_that_cannot_reach_the_database_say_so_and_acknowledge_nothing(
        settings: Settings, engine: Engine, broker: Broker) -> None:
    """Two `sensorhub client` workers lose PostgreSQL: each says so, acknowledges nothing; SIGKILLed meanwhile
    and started again once the database is back, they store every reading sent during the outage."""
    from sqlalchemy import create_engine

    from tests.stack import sensorhub, start

    database = engine.url.database
    admin = create_engine(engine.url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    workers = {n: start(sensorhub(f"client{n}", ["client"], settings.replace(worker=n))) for n in (1, 2)}
    device = RawDevice(settings.mqtt_port, "AA:BB:CC:00:16:02")
    try:
        name, _session = device.join()
        wait_for(lambda: _online(engine, name), what="online")
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
                         {"d": database})
        for value in range(100):
            device.reading(Topic.LED_STATUS, value % 2, qos=1).wait_for_publish(5)
        for worker in workers.values():
            wait_for(lambda w=worker: "cannot write to the database" in w.output(), 20, what="the worker saying so")
            worker.process.kill()  # type: ignore[union-attr]  # what it holds unacknowledged is still with the broker
            worker.process.wait()  # type: ignore[union-attr]
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        workers = {n: start(sensorhub(f"client{n}", ["client"], settings.replace(worker=n))) for n in (1, 2)}
        wait_for(lambda: _count(engine, name) >= 100, 30, what="every reading stored")
        # Kept: a duplicate is redelivered to whichever worker held it, and a shared subscription gives no ordered
        # path to each worker that a sentinel could follow.
        time.sleep(0.5)
        assert _count(engine, name) == 100
    finally:
        device.close()
        for worker in workers.values():
            worker.stop()
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        admin.dispose()
