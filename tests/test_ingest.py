"""The ingest client against a real Mosquitto, a real SQLite file and a real FIFO."""

from __future__ import annotations

import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine, text

from sensorhub.broker import Broker
from sensorhub.commands import LedRequest, RenameRequest
from sensorhub.config import Settings
from sensorhub.db.engine import sqlite_path
from sensorhub.errors import ClientNotRunning
from sensorhub.ingest.service import WRITER_FAILED, IngestClient
from sensorhub.ingest.sessions import Decisions, Inbound, Sessions
from sensorhub.mqttclient import stop_loop
from sensorhub.pipe import send_command
from sensorhub.protocol import LIVE_PAYLOAD_MAX, LIVE_TOPIC, Reading, Topic
from tests.devices import RawDevice
from tests.stack import ingest_client, sensorhub, start
from tests.support import both_databases, wait_for

pytestmark = pytest.mark.integration



def row(engine: Engine, name: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        found = conn.execute(text("SELECT * FROM device WHERE name = :n OR session_name = :n"), {"n": name})
        mapping = found.mappings().first()
        return dict(mapping) if mapping else None


def count(engine: Engine, table: str, name: str | None = None) -> int:
    sql = f"SELECT count(*) FROM {table}"
    if name is not None:
        sql += " WHERE device_id = (SELECT id FROM device WHERE name = :n OR session_name = :n)"
    with engine.connect() as conn:
        return int(conn.execute(text(sql), {"n": name}).scalar_one())


def values(engine: Engine, table: str, name: str) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(text(
            f"SELECT value FROM {table} WHERE device_id = (SELECT id FROM device WHERE session_name = :n) ORDER BY id"
        ), {"n": name}).scalars())


def online(engine: Engine, name: str) -> bool:
    found = row(engine, name)
    return bool(found and found["online"])


@both_databases
def test_join_assigns_a_name_and_session_then_records_readings(
        ingest: IngestClient, engine: Engine, settings: Settings) -> None:
    device = RawDevice(settings.mqtt_port, "61:ec:ed:3b:25:b1")
    name, session = device.request_session()
    assert name == "capteur01" and len(session) <= 17 and ";" not in session
    first = row(engine, name)
    assert first is not None and first["mac"] == "61:EC:ED:3B:25:B1" and not first["online"]
    device.start_session()
    wait_for(lambda: online(engine, name), 5, what="online after the name;session join")
    device.reading(Topic.PHOTORESISTOR_STATUS, 58)
    device.reading(Topic.BUTTON_STATUS, 1)
    device.reading(Topic.LED_STATUS, 1, qos=1)
    wait_for(lambda: count(engine, "light_reading", name) and count(engine, "led_reading", name), 5)
    assert values(engine, "light_reading", name) == [58]
    assert values(engine, "button_reading", name) == [1]
    assert values(engine, "led_reading", name) == [1]
    seen = row(engine, name)
    assert seen is not None and seen["last_seen"] > first["last_seen"] >= first["joined_at"]
    # a second MAC join: same name, a new session, offline until the name;session join
    again, new_session = device.request_session()
    assert again == name and new_session != session
    later = row(engine, name)
    assert later is not None and later["session_id"] == new_session and not later["online"]
    assert later["joined_at"] == first["joined_at"]
    device.close()


@both_databases
def test_default_names_count_up_and_are_never_reused(
        ingest: IngestClient, engine: Engine, settings: Settings) -> None:
    names = [RawDevice(settings.mqtt_port, f"02:00:00:00:00:0{i}").request_session()[0] for i in range(1, 4)]
    assert names == ["capteur01", "capteur02", "capteur03"]
    send_command(settings.fifo, RenameRequest(3, "atelier"))
    wait_for(lambda: row(engine, "atelier"), 5)
    fourth = RawDevice(settings.mqtt_port, "02:00:00:00:00:04")
    assert fourth.request_session()[0] == "capteur04"


def test_stop_stores_the_commands_still_in_the_pipe(settings: Settings, engine: Engine, broker: Broker) -> None:
    """Renames the web server had answered 202 to, still in the pipe when the client is told to stop (its pipe
    reader busy with the first): the pipe hands them to the writer before the writer stops, and all are stored."""
    client = IngestClient(settings)
    client.start(wait_ready=10)
    stopper = threading.Thread(target=client.stop)
    busy, release = threading.Event(), threading.Event()
    try:
        for i in range(1, 4):
            RawDevice(settings.mqtt_port, f"02:00:00:00:00:C{i}").request_session()
        hand_over = client.pipe.on_command

        def slow(command: Any) -> None:
            busy.set()
            release.wait(5)
            hand_over(command)

        client.pipe.on_command = slow
        send_command(settings.fifo, RenameRequest(1, "atelier"))
        assert busy.wait(5)
        send_command(settings.fifo, RenameRequest(2, "cuisine"))
        send_command(settings.fifo, RenameRequest(3, "garage"))
        stopper.start()
        wait_for(client.pipe._stop.is_set, 5, what="the pipe reader told to stop")
    finally:
        release.set()
        if stopper.ident is not None:
            stopper.join(30)
        else:
            client.stop()
    assert [name for name in ("atelier", "cuisine", "garage") if row(engine, name) is None] == []


def test_out_of_band_readings_and_stale_leaves_are_discarded(
        ingest: IngestClient, engine: Engine, settings: Settings) -> None:
    device = RawDevice(settings.mqtt_port, "02:00:00:00:00:10")
    name, old_session = device.join()
    wait_for(lambda: online(engine, name), 5)
    device.request_session()
    device.start_session()
    wait_for(lambda: online(engine, name), 5)
    device.reading(Topic.PHOTORESISTOR_STATUS, 10, session=old_session)
    device.reading(Topic.LED_STATUS, 1, session=old_session)
    device.publish(Topic.LEAVE, f"{name};{old_session}", qos=2)  # e.g. a late Will of the old connection
    device.reading(Topic.PHOTORESISTOR_STATUS, 77)
    device.reading(Topic.PHOTORESISTOR_STATUS, 5, name="nobody")
    wait_for(lambda: count(engine, "light_reading", name), 5)
    expected = {"out-of-band": 3, "unknown-device": 1}
    wait_for(lambda: ingest.drops.snapshot() == expected, 5, what=f"the writer to discard {expected}")
    assert values(engine, "light_reading", name) == [77]
    assert count(engine, "led_reading") == 0
    assert online(engine, name), "a stale leave knocked the device offline"
    device.close()


def test_crashed_device_goes_offline_through_its_will(
        ingest: IngestClient, engine: Engine, settings: Settings) -> None:
    device = RawDevice(settings.mqtt_port, "02:00:00:00:00:20")
    name, _ = device.join()
    wait_for(lambda: online(engine, name), 5)
    device.crash()
    wait_for(lambda: not online(engine, name), 10, what="the Will to mark the device offline")


def test_explicit_leave_marks_offline(ingest: IngestClient, engine: Engine, settings: Settings) -> None:
    device = RawDevice(settings.mqtt_port, "02:00:00:00:00:21")
    name, _ = device.join()
    wait_for(lambda: online(engine, name), 5)
    device.leave()
    wait_for(lambda: not online(engine, name), 5)


def test_mqtt_311_device_with_qos0_joins(ingest: IngestClient, engine: Engine, settings: Settings) -> None:
    device = RawDevice(settings.mqtt_port, "02:00:00:00:00:31", protocol=mqtt.MQTTv311, join_qos=0)
    name, _ = device.join()
    wait_for(lambda: online(engine, name), 5)
    device.reading(Topic.PHOTORESISTOR_STATUS, 42)
    wait_for(lambda: values(engine, "light_reading", name) == [42], 5)
    device.close()


@both_databases
def test_led_command_through_the_fifo_reaches_the_device_and_its_status_is_stored(
        ingest: IngestClient, engine: Engine, settings: Settings) -> None:
    device = RawDevice(settings.mqtt_port, "02:00:00:00:00:40")
    other = RawDevice(settings.mqtt_port, "02:00:00:00:00:41")
    name, session = device.join()
    other.join()
    wait_for(lambda: online(engine, name) and online(engine, other.name), 5)
    found = row(engine, name)
    assert found is not None
    send_command(settings.fifo, LedRequest(found["id"], session, True))
    wait_for(lambda: device.commands and other.commands, 5, what="led/command at both devices")
    assert device.commands == [f"{name};{session};1".encode()]
    assert other.commands == [f"{name};{session};1".encode()]  # everyone subscribes; the name tells who
    device.reading(Topic.LED_STATUS, 1)
    wait_for(lambda: values(engine, "led_reading", name) == [1], 5)
    # a command for a session that is over, or for an offline device, is not relayed
    send_command(settings.fifo, LedRequest(found["id"], "1.000000", False))
    device.leave()
    wait_for(lambda: not online(engine, name), 5)
    send_command(settings.fifo, LedRequest(found["id"], session, False))
    wait_for(lambda: ingest.drops.snapshot().get("pipe-offline") == 2, 5, what="both commands discarded")
    assert other.commands == [f"{name};{session};1".encode()]
    other.close()


@both_databases
def test_rename_takes_effect_at_the_next_join_without_breaking_the_session(
        ingest: IngestClient, engine: Engine, settings: Settings) -> None:
    device = RawDevice(settings.mqtt_port, "02:00:00:00:00:50")
    name, _session = device.join()
    wait_for(lambda: online(engine, name), 5)
    found = row(engine, name)
    assert found is not None
    send_command(settings.fifo, RenameRequest(found["id"], "salle B"))
    wait_for(lambda: row(engine, "salle B"), 5)
    renamed = row(engine, "salle B")
    assert renamed is not None and renamed["session_name"] == name and renamed["online"]
    device.reading(Topic.PHOTORESISTOR_STATUS, 33)  # still publishes under its session name
    wait_for(lambda: count(engine, "light_reading", "salle B") == 1, 5)
    assert device.request_session()[0] == "salle B"
    device.start_session()
    wait_for(lambda: online(engine, "salle B"), 5)
    final = row(engine, "salle B")
    assert final is not None and final["session_name"] == "salle B"
    device.close()


def test_rename_to_a_taken_name_is_refused(ingest: IngestClient, engine: Engine, settings: Settings) -> None:
    first = RawDevice(settings.mqtt_port, "02:00:00:00:00:60")
    second = RawDevice(settings.mqtt_port, "02:00:00:00:00:61")
    first.request_session()
    second.request_session()
    send_command(settings.fifo, RenameRequest(2, "capteur01"))
    wait_for(lambda: ingest.drops.snapshot().get("pipe-name-taken"), 5)
    found = row(engine, "capteur02")
    assert found is not None and found["name"] == "capteur02"


def test_garbage_flood_leaves_the_client_running_and_correct(
        ingest: IngestClient, engine: Engine, settings: Settings) -> None:
    rng = random.Random(1234)
    flood = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    flood.max_queued_messages_set(0)
    # The broker's Receive Maximum (20, in its CONNACK), which paho does not apply by itself: beyond it the broker
    # refuses QoS 2 messages ("quota exceeded"), as many as the machine's load makes it, and they are never counted.
    flood.max_inflight_messages_set(20)
    refused: list[str] = []
    flood.on_publish = lambda _c, _u, _mid, reason, _p: refused.append(str(reason)) if reason.is_failure else None
    flood.connect("127.0.0.1", settings.mqtt_port)
    flood.loop_start()
    wait_for(flood.is_connected, 5)
    pieces = [b"capteur01", b"1743946777.603371", b"101", b"-1", b"1", b"0", b"", b";", b"\xff\xfe", b"\x00",
              "é".encode(), b"61:EC:ED:3B:25:B1", b"zz:zz", b" ", b"9" * 40]
    topics = [str(t) for t in (Topic.JOIN, Topic.LEAVE, Topic.LED_STATUS, Topic.BUTTON_STATUS,
                               Topic.PHOTORESISTOR_STATUS)]
    sent = 0
    for _ in range(5000):
        if rng.random() < 0.5:
            payload = rng.randbytes(rng.randint(0, 150))
        else:
            payload = b";".join(rng.choice(pieces) for _ in range(rng.randint(1, 5)))
        if payload.count(b":") == 5 and len(payload) == 17:
            continue  # a well-formed MAC would (rightly) create a device
        flood.publish(rng.choice(topics), payload, qos=rng.choice([0, 1, 2]))
        sent += 1
    wait_for(lambda: sum(ingest.drops.snapshot().values()) >= sent * 0.9, 30, what="the flood to be counted")
    assert refused == [], "the broker refused some of the flood"
    stop_loop(flood)
    flood.disconnect()
    device = RawDevice(settings.mqtt_port, "02:00:00:00:00:70")
    name, _ = device.join()
    wait_for(lambda: online(engine, name), 5)
    device.reading(Topic.PHOTORESISTOR_STATUS, 64)
    wait_for(lambda: values(engine, "light_reading", name) == [64], 5)
    assert count(engine, "device") == 1, "garbage created devices"
    device.close()


@both_databases
def test_restart_resumes_sessions_from_the_database(settings: Settings, engine: Engine, broker: Broker) -> None:
    client = IngestClient(settings)
    client.start(wait_ready=10)
    device = RawDevice(settings.mqtt_port, "02:00:00:00:00:80")
    name, _ = device.join()
    wait_for(lambda: online(engine, name), 5)
    client.stop()
    device.reading(Topic.LED_STATUS, 1, qos=1)  # published while the client is down: queued by the broker
    restarted = IngestClient(settings)
    restarted.start(wait_ready=10)
    try:
        device.reading(Topic.PHOTORESISTOR_STATUS, 12)
        wait_for(lambda: values(engine, "light_reading", name) == [12], 5)
        wait_for(lambda: values(engine, "led_reading", name) == [1], 5, what="the reading sent while down")
        assert online(engine, name)
        device.reading(Topic.PHOTORESISTOR_STATUS, 13, name="stranger")
        wait_for(lambda: restarted.drops.snapshot().get("unknown-device"), 5)
    finally:
        restarted.stop()
        device.close()


def test_devices_not_heard_after_a_broker_restart_go_offline(settings: Settings, engine: Engine) -> None:
    first_broker = Broker(settings)
    first_broker.start()
    client = IngestClient(settings)
    client.start(wait_ready=10)
    try:
        silent = RawDevice(settings.mqtt_port, "02:00:00:00:00:90")
        talker = RawDevice(settings.mqtt_port, "02:00:00:00:00:91")
        silent.join()
        talker.join()
        wait_for(lambda: online(engine, silent.name) and online(engine, talker.name), 5)
        first_broker.crash()  # it sends no Will, and forgets every session
        for device in (silent, talker):
            device.crash()
        second_broker = Broker(settings)
        second_broker.start()
        try:
            wait_for(client.mqtt.is_connected, 20, what="the client to reconnect to the new broker")
            time.sleep(0.5)  # kept: its SUBACKs back before the talker returns (nothing public tells after a reconnect)
            talker.reconnect(keepalive=2)  # comes back and keeps publishing in its session, without a new join
            started = time.monotonic()
            while time.monotonic() - started < 3 * settings.keepalive + 2:
                talker.reading(Topic.PHOTORESISTOR_STATUS, 50)
                time.sleep(0.5)  # kept: a board publishing at its pace through three keepalives is what is tested
            wait_for(lambda: not online(engine, silent.name), 5, what="the silent device to be marked offline")
            assert online(engine, talker.name), "a device that keeps publishing was marked offline"
            assert count(engine, "light_reading", talker.name) > 0
            talker.close()
        finally:
            second_broker.stop()
    finally:
        client.stop()
        first_broker.stop()


def hold_writes(engine: Engine) -> Any:
    """Another connection that keeps the ingest client from writing readings until it rolls back."""
    if engine.dialect.name == "postgresql":
        import psycopg

        url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        blocker = psycopg.connect(url)
        blocker.execute("LOCK TABLE led_reading IN SHARE MODE")  # INSERT and COPY wait for it
        return blocker
    path = sqlite_path(str(engine.url))
    assert path is not None
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    return connection


@both_databases
def test_sigkill_while_a_device_publishes_qos1_loses_nothing(settings: Settings, engine: Engine,
                                                            broker: Broker) -> None:
    # 3,000 readings from one board at once, three times the default burst: the flood limit is not under test.
    settings = settings.replace(readings_per_second=0)
    first = start(sensorhub("client", ["client"], settings))
    device = RawDevice(settings.mqtt_port, "02:00:00:00:00:A0")
    name, _ = device.join()
    wait_for(lambda: online(engine, name), 5)
    half = 1500
    assert first.process is not None
    # A slow disk: another connection holds the write lock, so the client receives but cannot commit.
    blocker = hold_writes(engine)
    try:
        infos = [device.reading(Topic.LED_STATUS, number % 2, qos=1) for number in range(half)]
        for info in infos:
            info.wait_for_publish(30)
        # Kept: delivered to the client, waiting in its queue; nothing outside its process says when the broker's
        # window of 20 has arrived (its metrics file is written once a second). The test holds whatever came by then.
        time.sleep(0.5)
        first.process.send_signal(signal.SIGKILL)
        first.stop()
    finally:
        blocker.rollback()
        blocker.close()
    infos = [device.reading(Topic.LED_STATUS, number % 2, qos=1) for number in range(half)]  # while it is down
    for info in infos:
        info.wait_for_publish(30)
    try:
        with ingest_client(settings) as restarted:
            wait_for(lambda: count(engine, "led_reading", name) >= 2 * half, 30,
                     what=f"all {2 * half} QoS 1 readings (have {count(engine, 'led_reading', name)})")
            # A sentinel from the same board: the broker redelivers what it had sent the killed client first, when
            # the new one connects, and sends a client its messages in order (one queue per client in Mosquitto,
            # whatever the topic): once the sentinel is stored, every duplicate that will come has been.
            device.reading(Topic.PHOTORESISTOR_STATUS, 42, qos=1).wait_for_publish(5)
            wait_for(lambda: values(engine, "light_reading", name) == [42], 10, what="the sentinel stored")
            # Stored twice at most: what was committed but not yet acknowledged, within the broker's in-flight
            # window for the client (20, docs/operations.md, "Reliability").
            assert count(engine, "led_reading", name) <= 2 * half + 20
    finally:
        device.close()
    assert restarted.process is not None and restarted.process.returncode == 0


class Crash(BaseException):
    """What no writer can survive (it is not an Exception): the thread ends."""


@pytest.fixture
def writer_dies_on(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """Light values on which the session engine raises Crash, ending the writer thread."""
    values: set[int] = set()
    apply = Sessions.apply

    def dying(self: Sessions, batch: Sequence[Inbound]) -> Decisions:
        if any(isinstance(item.message, Reading) and item.message.value in values for item in batch):
            raise Crash("injected")
        return apply(self, batch)

    monkeypatch.setattr(Sessions, "apply", dying)
    return values


#: How long the database stays locked: 5 keepalives of the tests' settings (the broker drops a client silent for 1.5).
OUTAGE_S = 10.0


def test_a_long_database_outage_keeps_the_broker_connection_and_loses_no_acknowledged_reading(
        settings: Settings, engine: Engine, broker: Broker) -> None:
    """The database stays locked while a board floods QoS 0 readings beyond the writer's room and sends 60 QoS 1
    ones: paho's network thread never waits for room (ingest/inbox.py), so it goes on answering the broker's
    keepalive and the client is never dropped; the QoS 0 readings without room are counted, every QoS 1 one is
    stored once the lock goes. (Before, paho waited in `submit` and the broker dropped the client.)"""
    client = IngestClient(settings, queue_max=50)
    client.start(wait_ready=10)
    board = RawDevice(settings.mqtt_port, "02:00:00:00:00:D1")
    log = Path(settings.broker_log)
    try:
        name, _ = board.join()
        wait_for(lambda: online(engine, name), 5)
        offset = log.stat().st_size
        path = sqlite_path(str(engine.url))
        assert path is not None
        locker = sqlite3.connect(path, timeout=5, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            for value in range(300):
                board.reading(Topic.PHOTORESISTOR_STATUS, value % 101, qos=0)
            sent = [board.reading(Topic.LED_STATUS, value % 2, qos=1) for value in range(60)]
            for info in sent:
                info.wait_for_publish(10)  # the broker has them all
            time.sleep(OUTAGE_S)  # kept: riding out a real outage of 5 keepalives is what is tested
            dropped = [line for line in log.read_text(errors="replace")[offset:].splitlines()
                       if "sensorhub-ingest" in line and ("timeout" in line or "disconnect" in line.lower())]
            assert dropped == [], f"the broker dropped the ingest client: {dropped}"
            assert client.mqtt.is_connected()
            assert client.drops.snapshot().get("queue-full", 0) > 0, "no QoS 0 reading was shed: the room was enough"
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        wait_for(lambda: len(values(engine, "led_reading", name)) == 60, 30, what="every QoS 1 reading stored")
    finally:
        client.stop()
        board.close()


def test_a_dead_writer_makes_the_client_leave_without_acknowledging_and_nothing_is_lost(
        settings: Settings, engine: Engine, broker: Broker, writer_dies_on: set[int],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    statuses: list[int] = []
    client = IngestClient(settings, on_fatal=statuses.append)
    client.start(wait_ready=10)
    device = RawDevice(settings.mqtt_port, "02:00:00:00:00:C0")
    try:
        name, _ = device.join()
        wait_for(lambda: online(engine, name), 5)
        writer_dies_on.add(50)
        for info in [device.reading(Topic.PHOTORESISTOR_STATUS, value, qos=1) for value in range(100)]:
            info.wait_for_publish(10)  # the broker has them all
        wait_for(lambda: statuses, 10, what="the client to give up on its writer")
    finally:
        client.stop()
    assert statuses == [WRITER_FAILED] and client.writer.failed.is_set()
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL and "exiting" in r.message]
    assert line.startswith("the database writer thread died") and "exiting with status 3" in line
    assert len(values(engine, "light_reading", name)) < 100
    monkeypatch.undo()
    restarted = IngestClient(settings)
    restarted.start(wait_ready=10)
    try:
        wait_for(lambda: set(values(engine, "light_reading", name)) == set(range(100)), 15,
                 what="every reading, the unacknowledged ones delivered again by the broker")
    finally:
        restarted.stop()
        device.close()


DYING_CLIENT = """
from sensorhub.ingest.sessions import Sessions

class Crash(BaseException):
    pass

apply = Sessions.apply

def dying(self, batch):
    if any(getattr(item.message, "value", None) == 50 for item in batch):
        raise Crash("injected")
    return apply(self, batch)

Sessions.apply = dying
from sensorhub.cli import main
main(["client"])
"""


def test_a_client_whose_writer_dies_exits_with_status_3_and_one_line_then_loses_nothing(
        settings: Settings, engine: Engine, broker: Broker) -> None:
    dying = start(sensorhub("client", [], settings, python=("-c", DYING_CLIENT)))
    device = RawDevice(settings.mqtt_port, "02:00:00:00:00:C1")
    try:
        name, _ = device.join()
        wait_for(lambda: online(engine, name), 5)
        for info in [device.reading(Topic.PHOTORESISTOR_STATUS, value, qos=1) for value in range(100)]:
            info.wait_for_publish(10)
        assert dying.process is not None and dying.process.wait(20) == WRITER_FAILED
        dying.stop()
        [line] = [line for line in dying.lines if " CRITICAL " in line]
        assert line == [line for line in dying.lines if line.strip()][-1], "the reason is not the last line"
        assert "the database writer thread died" in line and "exiting with status 3" in line
        with ingest_client(settings):
            wait_for(lambda: set(values(engine, "light_reading", name)) == set(range(100)), 15,
                     what="every reading after the restart")
    finally:
        device.close()


def test_sigterm_stops_cleanly_and_closes_the_pipe(settings: Settings, engine: Engine, broker: Broker) -> None:
    with ingest_client(settings) as client:
        device = RawDevice(settings.mqtt_port, "02:00:00:00:00:B0")
        name, _ = device.join()
        wait_for(lambda: online(engine, name), 5)
        assert client.stop(15) == 0  # SIGTERM
    assert "ingest client stopped" in client.output()
    with pytest.raises(ClientNotRunning):
        send_command(settings.fifo, LedRequest(1, "1", True))
    device.close()


def test_stop_commits_and_acknowledges_what_it_received_and_a_restart_stores_the_rest_once(
        settings: Settings, engine: Engine, broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped with readings received but not yet committed (the database is locked until the writer is
    told to stop): they are committed and acknowledged before the client leaves the broker."""
    client = IngestClient(settings)
    received: list[Inbound] = []  # readings handed to the writer
    submit = client.writer.submit

    def counting(item: Inbound) -> bool:
        if isinstance(item.message, Reading):
            received.append(item)
        return submit(item)

    path = sqlite_path(settings.database_url)
    assert path is not None
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer_stop = client.writer.stop

    def unlock_then_stop(timeout: float = 30.0) -> None:
        blocker.rollback()  # the database can be written again only now
        writer_stop(timeout)

    monkeypatch.setattr(client.writer, "submit", counting)
    monkeypatch.setattr(client.writer, "stop", unlock_then_stop)
    client.start(wait_ready=10)
    device = RawDevice(settings.mqtt_port, "02:00:00:00:00:B1")
    try:
        name, _ = device.join()
        wait_for(lambda: online(engine, name), 5)
        blocker.execute("BEGIN IMMEDIATE")  # the client receives but cannot commit
        for info in [device.reading(Topic.PHOTORESISTOR_STATUS, n % 101, qos=1) for n in range(500)]:
            info.wait_for_publish(10)
        wait_for(lambda: len(received) >= 12, 10, what="readings received and waiting for the database")
        client.stop()
        assert count(engine, "light_reading", name) == len(received), "what it received was not all committed"
        with ingest_client(settings):
            wait_for(lambda: count(engine, "light_reading", name) >= 500, 15, what="every reading")
        assert count(engine, "light_reading", name) == 500, "committed but not acknowledged before it left"
    finally:
        blocker.close()
        device.close()


def test_client_started_before_the_broker_keeps_trying_says_so_once_and_connects(
        settings: Settings, engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    client = IngestClient(settings)
    client.start()
    stopped = False
    try:
        wait_for(lambda: client.connect_failures >= 2, 10, what="a second attempt to reach the broker")
        assert not client.ready.is_set()
        with Broker(settings):
            assert client.ready.wait(15), "the client did not connect once the broker came up"
            client.stop()  # before the broker goes away again, which would be worth a line of its own
            stopped = True
    finally:
        if not stopped:
            client.stop()
    said = [r.getMessage() for r in caplog.records if "cannot reach the broker" in r.getMessage()]
    assert said == [f"cannot reach the broker at 127.0.0.1:{settings.mqtt_port}; retrying (is it running? "
                    "`make broker`)"]


def test_missing_database_is_one_clear_line(settings: Settings, tmp_path: Path) -> None:
    env = {**os.environ, **settings.environ(), "SENSORHUB_DATABASE_URL": f"sqlite:///{tmp_path / 'none.sqlite3'}"}
    result = subprocess.run([sys.executable, "-m", "sensorhub", "client"], env=env, capture_output=True, text=True,
                            timeout=20, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("sensorhub: error: no database at")


def test_fifo_command_reaches_the_right_simulated_device_and_its_status_is_stored(
        ingest: IngestClient, engine: Engine, settings: Settings) -> None:
    from sensorhub.simulator import Fleet

    fleet = Fleet(settings, count=2, interval=60, button_every=None, seed=99)
    fleet.start()
    try:
        fleet.wait_joined(10)
        target, bystander = fleet.devices
        wait_for(lambda: online(engine, target.name) and online(engine, bystander.name), 5)
        found = row(engine, target.name)
        assert found is not None
        send_command(settings.fifo, LedRequest(found["id"], target.session, True))
        wait_for(lambda: target.led, 5, what="the simulated LED to switch on")
        wait_for(lambda: values(engine, "led_reading", target.name) == [0, 1], 5,
                 what="the initial report and the confirmation stored")
        assert bystander.led is False and bystander.commands_received == 0
        assert values(engine, "led_reading", bystander.name) == [0]
    finally:
        fleet.stop()


def test_the_live_feed_carries_what_was_stored_and_nothing_else(
        ingest: IngestClient, engine: Engine, settings: Settings) -> None:
    """The /capteurs page's readings: each stored one, in order, by device id, many a message; not a reading
    the writer refused (the page no longer checks sessions)."""
    page = mqtt.Client(CallbackAPIVersion.VERSION2, transport="websockets", protocol=mqtt.MQTTv5)
    payloads: list[bytes] = []
    subscribed = threading.Event()
    page.on_message = lambda _c, _u, message: payloads.append(message.payload)
    page.on_subscribe = lambda *_args: subscribed.set()
    page.connect("127.0.0.1", settings.mqtt_ws_port)
    page.loop_start()
    page.subscribe(LIVE_TOPIC, 0)
    assert subscribed.wait(5)
    device = RawDevice(settings.mqtt_port, "AA:BB:CC:00:17:01")
    try:
        name, _session = device.join()
        wait_for(lambda: online(engine, name), what="online")
        found = row(engine, name)
        assert found is not None
        device.reading(Topic.PHOTORESISTOR_STATUS, 7, qos=1, session="1743946777.603371").wait_for_publish(5)
        device.reading(Topic.LED_STATUS, 1).wait_for_publish(5)
        for value in range(100):
            device.reading(Topic.PHOTORESISTOR_STATUS, value, qos=1)
        device.reading(Topic.BUTTON_STATUS, 1, qos=1).wait_for_publish(5)

        def lines() -> list[str]:
            return [line for payload in list(payloads) for line in payload.decode().split("\n")]

        wait_for(lambda: f"{found['id']};b;1" in lines(), what="the button in the live feed")
        assert count(engine, "light_reading", name) == 100  # the out-of-band reading was not stored...
    finally:
        device.close()
        stop_loop(page)
        page.disconnect()
    # ...nor shown. Each kind in its order (a batch's readings go kind by kind: no kind depends on another).
    by_kind = {code: [line for line in lines() if line.split(";")[1] == code] for code in "lbp"}
    assert by_kind == {"l": [f"{found['id']};l;1"], "b": [f"{found['id']};b;1"],
                       "p": [f"{found['id']};p;{value}" for value in range(100)]}
    assert len(lines()) == 102
    assert all(len(payload) <= LIVE_PAYLOAD_MAX for payload in payloads)
    assert len(payloads) < 102  # several readings in some messages


@both_databases
def test_two_workers_share_the_readings_through_shared_subscriptions(
        settings: Settings, engine: Engine, broker: Broker) -> None:
    """Two workers (their own sessions, `$share/sensorhub/…`, allowed by the ACL) store each reading once."""
    workers = [IngestClient(settings.replace(worker=number)) for number in (1, 2)]
    for worker in workers:
        worker.start(wait_ready=10)
    assert [worker.pipe.holding.is_set() for worker in workers] == [True, False]  # one reader of the pipe at a time
    device = RawDevice(settings.mqtt_port, "AA:BB:CC:00:16:01")
    try:
        name, _session = device.join()
        wait_for(lambda: online(engine, name), what="online")
        for value in range(200):
            device.reading(Topic.PHOTORESISTOR_STATUS, value % 101, qos=1)
        wait_for(lambda: count(engine, "light_reading", name) >= 200, what="200 readings")
    finally:
        device.close()
        for worker in workers:
            worker.stop()
    # Read once the writers stopped: a writer counts a batch after its commit, and the full run once read [96, 100]
    # between the two.
    shares = [worker.writer.stats.stored["light"] for worker in workers]
    assert count(engine, "light_reading", name) == 200
    assert sum(shares) == 200 and min(shares) > 0, shares
