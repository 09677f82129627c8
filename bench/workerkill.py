"""Two ingest workers, one SIGKILLed in the middle of a QoS 1 stream (issue 16's fault at its own scale): 100,000
readings (1,000 devices x values 0-99, each pair once) go to two `sensorhub client` workers sharing the stream;
worker 2 is killed with SIGKILL once a fifth is stored and started again 2 s later. The figures: pairs stored
(all of them, or some were lost), duplicates (what the killed worker had stored but not acknowledged, delivered
again), and how long the whole stream took."""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine, text

from bench.scenarios import Figure, Sizes
from bench.stack import scratch_settings
from sensorhub.broker import Broker
from sensorhub.config import Settings
from sensorhub.db.engine import make_engine
from sensorhub.db.schema import init_db
from sensorhub.db.seed import seed
from sensorhub.mqttclient import stop_loop
from sensorhub.protocol import Topic
from tests.stack import sensorhub, start

#: Readings the publisher may have sent that the broker has not acknowledged yet.
WINDOW = 5_000


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _publish_all(publisher: mqtt.Client, sessions: list[tuple[str, str]]) -> None:
    """Values 0-99 of every device at QoS 1, at most WINDOW unacknowledged by the broker at a time (paho's message
    ids are 16 bits: more would wrap)."""
    sent: list[mqtt.MQTTMessageInfo] = []
    for value in range(100):
        for name, session in sessions:
            if len(sent) >= WINDOW:
                sent[-WINDOW].wait_for_publish(300)
            sent.append(publisher.publish(Topic.PHOTORESISTOR_STATUS, f"{name};{session};{value}", qos=1))
    for info in sent[-WINDOW:]:
        info.wait_for_publish(300)


@dataclass
class Killed:
    """What one run stored of the stream, and what worker 2 said once restarted and stopped."""

    sent: int
    stored: int
    duplicates: int
    killed_at: int
    seconds: float
    restarted_output: str
    #: Duplicates whose first copy was stored before the kill and the second after it (the killed worker's
    #: committed but unacknowledged messages, bounded by the broker's in-flight window of 20); the rest have
    #: another cause. And how many times the publisher connected (a reconnection resends what it had in flight).
    across_kill: int = 0
    publisher_connects: int = 0


def kill_one_of_two(settings: Settings, engine: Engine, devices: int) -> Killed:
    """Seed `devices` devices, stream values 0-99 of each to two workers, kill -9 worker 2 once a fifth is stored,
    start it again 2 s later; wait until every reading is stored (the broker and workers of `settings`)."""
    total = devices * 100
    seed(engine, devices=devices, hours=1)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT session_name, session_id FROM device"))
        sessions = [(str(name), str(session)) for name, session in rows]
        base = int(conn.execute(text("SELECT coalesce(max(id), 0) FROM light_reading")).scalar_one())

    def stored() -> tuple[int, int]:
        """(rows, distinct device-value pairs) stored by this run."""
        with engine.connect() as conn:
            row = conn.execute(text("SELECT count(*), count(DISTINCT device_id * 1000 + value) "
                                    "FROM light_reading WHERE id > :base"), {"base": base}).one()
            return int(row[0]), int(row[1])

    broker = Broker(settings)
    broker.start()
    workers = {n: sensorhub(f"client{n}", ["client"], settings.replace(worker=n)) for n in (1, 2)}
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    publisher.max_inflight_messages_set(1000)
    connects = [0]
    publisher.on_connect = lambda *_args: connects.__setitem__(0, connects[0] + 1)
    try:
        for worker in workers.values():
            start(worker)
        publisher.connect("127.0.0.1", settings.mqtt_port)
        publisher.loop_start()
        started = time.monotonic()
        sending = threading.Thread(target=_publish_all, args=(publisher, sessions), daemon=True)
        sending.start()
        _wait(lambda: stored()[1] >= total // 5, 300, "a fifth stored")
        process = workers[2].process
        assert process is not None
        process.kill()  # its unacknowledged messages stay queued in its session at the broker
        process.wait()
        killed_at = stored()[1]
        with engine.connect() as conn:
            last_before_kill = int(conn.execute(text("SELECT max(id) FROM light_reading")).scalar_one())
        time.sleep(2)
        workers[2] = start(sensorhub("client2", ["client"], settings.replace(worker=2)))
        sending.join(300)
        _wait(lambda: stored()[1] >= total, 300, "every reading stored")
        elapsed = time.monotonic() - started
        time.sleep(1)  # what still arrives is a duplicate: count it too
        rows, distinct = stored()
        with engine.connect() as conn:
            across = int(conn.execute(text(
                "SELECT count(*) FROM (SELECT min(id) AS first, max(id) AS last FROM light_reading WHERE id > :base "
                "GROUP BY device_id, value HAVING count(*) > 1) AS twice WHERE first <= :kill AND last > :kill"),
                {"base": base, "kill": last_before_kill}).scalar_one())
    finally:
        publisher.disconnect()
        stop_loop(publisher)
        for worker in workers.values():
            worker.stop()
        broker.stop()
    return Killed(total, distinct, rows - distinct, killed_at, round(elapsed, 1), workers[2].output(), across,
                  connects[0])


def worker_kill(sizes: Sizes) -> Figure:
    """The scenario at the issue's scale (100,000 readings; 2,000 in a quick run), on SQLite."""
    with tempfile.TemporaryDirectory(prefix="sensorhub-bench-kill-") as tmp:
        settings = scratch_settings(Path(tmp))
        engine = make_engine(settings.database_url, create_dir=True)
        init_db(engine)
        try:
            run = kill_one_of_two(settings, engine, 1_000 if sizes.devices >= 100 else 20)
        finally:
            engine.dispose()
    data = {"sent": run.sent, "stored": run.stored, "lost": run.sent - run.stored, "duplicates": run.duplicates,
            "killed_at": run.killed_at, "seconds": run.seconds, "across_kill": run.across_kill,
            "publisher_connects": run.publisher_connects}
    return Figure("worker_kill", f"kill -9 of 1 of 2 workers, {run.sent:,} QoS 1 readings",
                  f"{run.stored:,} of {run.sent:,} stored, {run.duplicates} duplicate(s) ({run.across_kill} across "
                  f"the kill), killed at {run.killed_at:,}, {run.seconds:.1f} s", "0 lost", run.stored == run.sent,
                  data)
