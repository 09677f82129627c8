"""Alerts end to end: real `sensorhub client` processes on a real broker and database, a board driven by hand."""

from __future__ import annotations

import time

from sqlalchemy import Engine, text

from sensorhub.alerting import Metric, Rule, check_rule
from sensorhub.broker import Broker
from sensorhub.config import Settings
from sensorhub.db import alerts as db
from sensorhub.protocol import Topic
from tests.devices import RawDevice
from tests.stack import ingest_client, sensorhub, start
from tests.support import both_databases, wait_for


def add(engine: Engine, **fields: object) -> int:
    base: dict[str, object] = {"id": 0, "name": "dark", "metric": Metric.LIGHT, "operator": "<", "trigger": 10.0,
                               "clear": 20.0}
    with engine.begin() as conn:
        return db.add_rule(conn, check_rule(Rule(**{**base, **fields})), time.time_ns() // 1000)  # type: ignore[arg-type]


def rows(engine: Engine, query: str) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(query))]


@both_databases
def test_a_for_duration_started_before_a_client_restart_fires_once_after_it(settings: Settings, engine: Engine,
                                                                            broker: Broker) -> None:
    add(engine, for_seconds=4.0)
    device = RawDevice(settings.mqtt_port, "AA:BB:CC:00:25:01")
    try:
        with ingest_client(settings):
            device.join()
            device.reading(Topic.PHOTORESISTOR_STATUS, 5, qos=1).wait_for_publish(5)
            wait_for(lambda: rows(engine, "SELECT state FROM alert") == [("pending",)], what="a pending alert")
        # The client is stopped for part of the duration; the board stays dark.
        time.sleep(1.0)
        with ingest_client(settings):
            fired = wait_for(lambda: rows(engine, "SELECT since, fired_at FROM alert WHERE state = 'firing'"),
                             timeout=15, what="the alert fired")
            time.sleep(1.0)  # a second clock period or two: nothing fires twice
            assert len(rows(engine, "SELECT id FROM alert")) == 1
    finally:
        device.close()
    since, fired_at = fired[0]
    assert str(fired_at) > str(since)


@both_databases
def test_two_workers_taking_a_boards_readings_in_turn_fire_and_clear_one_alert(settings: Settings, engine: Engine,
                                                                              broker: Broker) -> None:
    add(engine)
    workers = [start(sensorhub(f"client{n}", ["client"], settings.replace(worker=n))) for n in (1, 2)]
    device = RawDevice(settings.mqtt_port, "AA:BB:CC:00:25:02")
    try:
        device.join()
        for _ in range(20):
            device.reading(Topic.PHOTORESISTOR_STATUS, 3, qos=1).wait_for_publish(5)
        wait_for(lambda: rows(engine, "SELECT count(*) FROM light_reading") == [(20,)], what="20 readings stored")
        assert rows(engine, "SELECT state, value FROM alert") == [("firing", 3.0)]
        for _ in range(20):
            device.reading(Topic.PHOTORESISTOR_STATUS, 50, qos=1).wait_for_publish(5)
        wait_for(lambda: rows(engine, "SELECT count(*) FROM light_reading") == [(40,)], what="40 readings stored")
        assert rows(engine, "SELECT state, value, last_value FROM alert") == [("resolved", 3.0, 50.0)]
    finally:
        device.close()
        for worker in workers:
            worker.stop()
