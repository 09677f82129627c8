"""The broker restarts: how long until the ingest client is back, until a board joining at once has its name,
and whether anything a board publishes right after its join is lost; with the client's reconnection delays
of before (1 s doubling to 10 s) and now (0.1 s doubling to 0.5 s), in the same run; a quick run (the smoke
run) with now's alone: the same code with other delays proves nothing more there, and a restart costs a second of
CPU."""

from __future__ import annotations

import queue
import signal
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.scenarios import Figure, Sizes
from bench.stack import scratch_settings
from sensorhub.broker import Broker
from sensorhub.db.engine import make_engine
from sensorhub.db.schema import init_db
from sensorhub.ingest import service
from sensorhub.ingest.service import IngestClient
from sensorhub.mqttclient import stop_loop
from sensorhub.protocol import Topic, format_reading, format_session_ref, parse_name_assign

BEFORE = (1.0, 10.0)
NOW = (service.RECONNECT_MIN, service.RECONNECT_MAX)


def _wait(predicate: object, timeout: float) -> float | None:
    """Seconds until `predicate()` is true, or None after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.002)
    return None


def _board(port: int, mac: str, answers: queue.Queue[tuple[str, str]]) -> mqtt.Client:
    board = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{mac.replace(':', '')}")

    def on_message(_client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        assign = parse_name_assign(message.payload)
        if assign.mac == mac:
            answers.put((assign.name, assign.session))

    board.on_message = on_message
    board.connect("127.0.0.1", port, keepalive=5)
    board.loop_start()
    board.subscribe(Topic.NAME_ASSIGN, 2)
    return board


def one_restart(delays: tuple[float, float], how: signal.Signals, readings: int) -> dict[str, float | int | None]:
    """Restart the broker once under a running client; a board joins as soon as the broker is back."""
    with tempfile.TemporaryDirectory(prefix="sensorhub-bench-restart-") as tmp:
        directory = Path(tmp)
        settings = scratch_settings(directory)
        engine = make_engine(settings.database_url, create_dir=True)
        init_db(engine)
        service.RECONNECT_MIN, service.RECONNECT_MAX = delays
        broker = Broker(settings)
        broker.start()
        client = IngestClient(settings)
        client.start(wait_ready=10)
        board = None
        try:
            assert broker.process is not None
            if how is signal.SIGKILL:
                broker.process.send_signal(signal.SIGUSR1)  # what the autosave does every 30 s
                time.sleep(0.5)
            broker.crash(how)
            broker = Broker(settings)
            broker.start()
            back = time.monotonic()
            answers: queue.Queue[tuple[str, str]] = queue.Queue()
            mac = "02:00:00:00:00:B1"
            board = _board(settings.mqtt_port, mac, answers)
            board.publish(Topic.JOIN, mac, qos=2)
            reconnected = None if _wait(client.mqtt.is_connected, 30) is None else time.monotonic() - back
            try:
                name, session = answers.get(timeout=20)
                named = time.monotonic() - back
            except queue.Empty:
                return {"reconnect_s": reconnected, "name_s": None, "stored": 0, "sent": 0}
            board.publish(Topic.JOIN, format_session_ref(name, session), qos=2)
            infos = [board.publish(Topic.LED_STATUS, format_reading(name, session, n % 2), qos=1)
                     for n in range(readings)]
            for info in infos:
                info.wait_for_publish(30)

            def stored() -> int:
                with engine.connect() as conn:
                    return int(conn.exec_driver_sql("SELECT count(*) FROM led_reading").scalar_one())

            _wait(lambda: stored() >= readings, 20)
            return {"reconnect_s": reconnected, "name_s": named, "stored": stored(), "sent": readings}
        finally:
            if board is not None:
                board.disconnect()
                stop_loop(board)
            client.stop()
            broker.stop()
            engine.dispose()
            service.RECONNECT_MIN, service.RECONNECT_MAX = NOW


def broker_restart(sizes: Sizes) -> Figure:
    """Before and after, SIGTERM and SIGKILL: reconnection, a board's name, readings lost."""
    readings = 1600 if sizes.devices >= 100 else 200
    results = {}
    parts = []
    for label, delays in (("before", BEFORE), ("now", NOW)) if sizes.devices >= 100 else (("now", NOW),):
        for how in (signal.SIGTERM, signal.SIGKILL):
            result = one_restart(delays, how, readings)
            results[f"{label}_{how.name}"] = result
            name = "no answer" if result["name_s"] is None else f"name in {result['name_s']:.2f} s"
            parts.append(f"{label} {how.name}: client back in {result['reconnect_s'] or float('nan'):.2f} s, "
                         f"{name}, {int(result['sent'] or 0) - int(result['stored'] or 0)} of {result['sent']} lost")
    now = [results["now_SIGTERM"], results["now_SIGKILL"]]
    ok = all(r["name_s"] is not None and r["name_s"] <= 2 and r["stored"] == r["sent"] for r in now)
    return Figure("broker_restart", "broker restart: a board joining at once", "; ".join(parts),
                  "name within 2 s, 0 lost", ok, results)
