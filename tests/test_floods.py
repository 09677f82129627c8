"""Floods (issue 23, item 4) against the real broker, ingest client and web server: a session flooding readings
is capped while a board alongside loses nothing, random MAC joins create at most the bound a minute, and a device
that never came online is purged while one that sent readings stays.

The limits are given to the client through its environment (SENSORHUB_*), as an operator would.
"""

from __future__ import annotations

import queue
import random
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from sensorhub.broker import Broker
from sensorhub.config import Settings
from sensorhub.db.engine import make_engine
from sensorhub.db.schema import init_db
from sensorhub.mqttclient import stop_loop
from sensorhub.process import Child
from sensorhub.protocol import Topic, format_reading
from tests.devices import RawDevice
from tests.stack import running, sensorhub, web_server, web_url
from tests.support import settings_for, wait_for

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    """Broker, ingest client and web server on a database of their own."""

    settings: Settings
    client: Child
    db: Path

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        """Rows of `sql` on the database, read as the web server reads it."""
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            return conn.execute(sql, params).fetchall()

    def discarded(self, reason: str) -> float:
        """sensorhub_messages_discarded_total{reason} in the web server's /metrics (0: not counted yet)."""
        with urllib.request.urlopen(web_url(self.settings, "/metrics"), timeout=10) as answer:
            body = answer.read().decode()
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name == "sensorhub_messages_discarded_total" and sample.labels.get("reason") == reason:
                    return sample.value
        return 0.0

    def log(self, text: str) -> list[str]:
        """The client's lines containing `text`."""
        return [line for line in list(self.client.lines) if text in line]


@contextmanager
def stack(tmp_path: Path, **environ: str) -> Iterator[Stack]:
    settings = settings_for(tmp_path).replace(log_level="INFO")
    engine = make_engine(settings.database_url, create_dir=True)
    init_db(engine)
    engine.dispose()
    client = sensorhub("client", ["client"], settings)
    client.env.update(environ)
    with ExitStack() as stacked:
        stacked.enter_context(Broker(settings))
        stacked.enter_context(running(client))
        stacked.enter_context(web_server(settings, workers=1))
        yield Stack(settings, client, tmp_path / "db.sqlite3")


def light_values(stack: Stack, name: str) -> list[int]:
    return [int(str(row[0])) for row in stack.query(
        "SELECT value FROM light_reading JOIN device ON device.id = device_id WHERE device.name = ?", name)]


def led_values(stack: Stack, name: str) -> list[int]:
    return [int(str(row[0])) for row in stack.query(
        "SELECT value FROM led_reading JOIN device ON device.id = device_id WHERE device.name = ? ORDER BY at", name)]


def devices(stack: Stack) -> int:
    return int(str(stack.query("SELECT count(*) FROM device")[0][0]))


def test_a_flooding_session_is_capped_while_a_board_alongside_loses_nothing(tmp_path: Path) -> None:
    """With the defaults (50 readings/s, a burst of 1000): a board sending 20,000 readings as fast as it can gets
    about the burst stored, and the rest counted in /metrics; a board sending 5 a second meanwhile loses none."""
    flood_count = 20_000
    with stack(tmp_path) as running_stack:
        flooder = RawDevice(running_stack.settings.mqtt_port, "02:F1:00:00:00:01")
        board = RawDevice(running_stack.settings.mqtt_port, "02:F1:00:00:00:02")
        flooder.join()
        board.join()
        assert flooder.client is not None
        payloads = [format_reading(flooder.name, flooder.session, n % 101) for n in range(flood_count)]
        started = time.monotonic()
        for number, payload in enumerate(payloads):
            flooder.client.publish(Topic.PHOTORESISTOR_STATUS, payload, qos=0)
            if number % 1000 == 0:  # the board's own pace, alongside
                board.reading(Topic.LED_STATUS, (number // 1000) % 2, qos=1)
        for number in range(20, 30):
            board.reading(Topic.LED_STATUS, number % 2, qos=1).wait_for_publish(5)
            time.sleep(0.2)  # kept: the board's own pace (5 a second) while the flood is limited is what is tested
        wait_for(lambda: len(light_values(running_stack, flooder.name))
                 + running_stack.discarded("rate-limited") >= flood_count, 60, interval=0.5,
                 what="every flooded reading stored or counted as rate-limited in /metrics")
        elapsed = time.monotonic() - started
        stored = len(light_values(running_stack, flooder.name))
        print(f"{stored:,} of {flood_count:,} flooded readings stored in {elapsed:.1f} s, "
              f"{running_stack.discarded('rate-limited'):,.0f} rate-limited")
        assert 1000 <= stored <= 1000 + 50 * (elapsed + 1), f"{stored} of {flood_count} stored in {elapsed:.1f} s"
        assert running_stack.discarded("rate-limited") == flood_count - stored
        wait_for(lambda: len(led_values(running_stack, board.name)) == 30, 10, what="the board's 30 readings")
        assert led_values(running_stack, board.name) == [n % 2 for n in range(30)]
        # One warning per 10 s, not one per reading.
        assert 1 <= len(running_stack.log("(rate-limited)")) <= 1 + int(elapsed / 10) + 1
        flooder.close()
        board.close()


def test_random_mac_joins_create_at_most_the_bound_a_minute(tmp_path: Path) -> None:
    """With the default bound (60 new devices a minute): 150 random MACs create 59 devices besides the board that
    joined first; the known board still gets a new session at once; one warning says what was refused."""
    with stack(tmp_path) as running_stack:
        port = running_stack.settings.mqtt_port
        known = RawDevice(port, "02:F2:00:00:00:01")
        known.join()
        flood = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        flood.connect("127.0.0.1", port)
        flood.loop_start()
        wait_for(flood.is_connected, 5)
        rng = random.Random(23)
        macs = {":".join(f"{rng.randrange(256):02X}" for _ in range(6)) for _ in range(150)}
        for info in [flood.publish(Topic.JOIN, mac, qos=2) for mac in sorted(macs)]:
            info.wait_for_publish(10)
        wait_for(lambda: devices(running_stack) - 1 + running_stack.discarded("new-device-limit") >= len(macs), 30,
                 interval=0.5, what="every join decided")
        print(f"{devices(running_stack)} devices after 1 + {len(macs)} new MACs, "
              f"{running_stack.discarded('new-device-limit'):.0f} refused")
        assert devices(running_stack) == 60
        assert running_stack.discarded("new-device-limit") == len(macs) - 59
        warnings = running_stack.log("(new-device-limit)")
        assert len(warnings) == 1 and "60 new devices in the last minute already" in warnings[0], warnings
        name = known.name
        known.join()  # a known board is never limited
        assert known.name == name
        newcomer = RawDevice(port, "02:F2:00:00:00:02")
        with pytest.raises(queue.Empty):  # no name for a 61st new device within the minute
            newcomer.request_session(timeout=3)
        newcomer.close()
        known.close()
        flood.disconnect()
        stop_loop(flood)


def test_a_device_that_never_came_online_is_purged_and_one_that_sent_readings_stays(tmp_path: Path) -> None:
    """SENSORHUB_STRAY_DEVICE_HOURS=0.001 (3.6 s): a MAC join and nothing after is deleted with one log line;
    a board that sent a reading stays, and so does one that came online without sending any."""
    with stack(tmp_path, SENSORHUB_STRAY_DEVICE_HOURS="0.001") as running_stack:
        port = running_stack.settings.mqtt_port
        stray = RawDevice(port, "02:F3:00:00:00:01")
        stray_name, _ = stray.request_session()
        stray.close()
        reporting = RawDevice(port, "02:F3:00:00:00:02")
        reporting.join()
        reporting.reading(Topic.PHOTORESISTOR_STATUS, 42).wait_for_publish(5)
        reporting.leave()
        silent = RawDevice(port, "02:F3:00:00:00:03")
        silent.join()
        wait_for(lambda: running_stack.query("SELECT online FROM device WHERE name = ?", silent.name) == [(1,)], 10)
        silent.leave()
        wait_for(lambda: light_values(running_stack, reporting.name) == [42], 10)
        wait_for(lambda: not running_stack.query("SELECT id FROM device WHERE name = ?", stray_name), 40,
                 interval=0.5, what=f"the stray {stray_name} purged")
        names = {str(row[0]) for row in running_stack.query("SELECT name FROM device")}
        assert names == {reporting.name, silent.name}
        lines = running_stack.log("never came online")
        assert len(lines) == 1 and "deleted 1 device(s)" in lines[0] and stray_name in lines[0], lines
        # Back with the same MAC, it is a new device to the client (which forgot it), with a new name.
        again, _ = stray.request_session()
        assert again != stray_name
        stray.join()
        wait_for(lambda: running_stack.query("SELECT online FROM device WHERE name = ?", stray.name) == [(1,)], 10)
        stray.close()
