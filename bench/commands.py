"""LED commands from the web server to a board: the time from handing a command over to the board receiving its
`led/command`, through the named pipe and through the broker's server-only topic (SENSORHUB_COMMANDS=broker),
with two ingest workers on shared subscriptions; and, measured in the same run as the reference, a client that
publishes `led/command` itself (one broker hop, what no path can beat)."""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.scenarios import Figure, Sizes, percentile
from bench.stack import scratch_settings
from sensorhub.broker import Broker
from sensorhub.commands import LedRequest
from sensorhub.credentials import CLIENT_USER, client_password
from sensorhub.db.engine import make_engine
from sensorhub.db.schema import init_db
from sensorhub.ingest.service import IngestClient
from sensorhub.mqttclient import stop_loop
from sensorhub.pipe import send_command
from sensorhub.protocol import Topic, format_led_command, format_session_ref, parse_name_assign
from sensorhub.web.relay import BrokerRelay


class Board:
    """One board through the whole join, stamping each LED command it receives."""

    def __init__(self, port: int, mac: str) -> None:
        self.mac = mac
        self.port = port
        self.name = self.session = ""
        self.received: list[float] = []
        self.arrived = threading.Condition()
        self.named = threading.Event()
        self.client = self._connect(None)
        self.client.subscribe(Topic.NAME_ASSIGN, 2)
        time.sleep(0.2)
        self.client.publish(Topic.JOIN, mac, qos=2)
        if not self.named.wait(10):
            raise RuntimeError("the board was not named")
        self.client.disconnect()
        stop_loop(self.client)
        self.client = self._connect(format_session_ref(self.name, self.session))
        self.client.subscribe(Topic.LED_COMMAND, 1)
        time.sleep(0.2)
        self.client.publish(Topic.JOIN, format_session_ref(self.name, self.session), qos=2)

    def _connect(self, will: bytes | None) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{self.mac.replace(':', '')}")
        if will is not None:
            client.will_set(Topic.LEAVE, will, qos=2)
        client.on_message = self._on_message
        client.connect("127.0.0.1", self.port, keepalive=5)
        client.loop_start()
        return client

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        if message.topic == Topic.NAME_ASSIGN:
            assign = parse_name_assign(message.payload)
            if assign.mac == self.mac:
                self.name, self.session = assign.name, assign.session
                self.named.set()
        elif message.topic == Topic.LED_COMMAND:
            with self.arrived:
                self.received.append(time.perf_counter())
                self.arrived.notify_all()

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        stop_loop(self.client)


def _timed(board: Board, send: Callable[[int], None], count: int) -> list[float]:
    """Milliseconds from each send to its arrival at the board, one command at a time."""
    delays = []
    for n in range(count):
        with board.arrived:
            seen = len(board.received)
        started = time.perf_counter()
        send(n)
        with board.arrived:
            if not board.arrived.wait_for(lambda: len(board.received) > seen, 5):  # noqa: B023
                raise RuntimeError(f"command {n} never reached the board")
            delays.append((board.received[seen] - started) * 1000)
        time.sleep(0.005)
    return delays


def led_commands(sizes: Sizes) -> Figure:
    """Pipe, broker and a direct publish: p50/p99 from hand-over to the board, with two workers."""
    count = 300 if sizes.devices >= 100 else 30
    with tempfile.TemporaryDirectory(prefix="sensorhub-bench-commands-") as tmp:
        directory = Path(tmp)
        settings = scratch_settings(directory)
        engine = make_engine(settings.database_url, create_dir=True)
        init_db(engine)
        broker = Broker(settings)
        broker.start()
        workers = [IngestClient(settings.replace(worker=number)) for number in (1, 2)]
        board = direct = relay = None
        try:
            for worker in workers:
                worker.start(wait_ready=10)
            board = Board(settings.mqtt_port, "02:00:00:00:00:C1")
            with engine.connect() as conn:
                deadline = time.monotonic() + 10
                while not conn.exec_driver_sql("SELECT online FROM device").scalar():
                    if time.monotonic() > deadline:
                        raise RuntimeError("the board never came online")
                    time.sleep(0.05)
                    conn.rollback()
                device_id = int(conn.exec_driver_sql("SELECT id FROM device").scalar_one())
            name, session = board.name, board.session
            relay = BrokerRelay(settings.replace(commands="broker"))
            direct = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
            direct.username_pw_set(CLIENT_USER, client_password(settings))
            direct.connect("127.0.0.1", settings.mqtt_port)
            direct.loop_start()
            time.sleep(0.3)

            def by_pipe(n: int) -> None:
                send_command(settings.fifo_path, LedRequest(device_id, session, n % 2 == 0))

            def by_broker(n: int) -> None:
                assert relay is not None
                relay.send(LedRequest(device_id, session, n % 2 == 0))

            def by_hand(n: int) -> None:
                assert direct is not None
                direct.publish(Topic.LED_COMMAND, format_led_command(name, session, n % 2 == 0), qos=1)

            results = {label: _timed(board, send, count)
                       for label, send in (("direct", by_hand), ("pipe", by_pipe), ("broker", by_broker))}
        finally:
            for closing in (board, relay):
                if closing is not None:
                    closing.close()
            if direct is not None:
                direct.disconnect()
                stop_loop(direct)
            for worker in workers:
                worker.stop()
            broker.stop()
            engine.dispose()
    data = {label: {"p50_ms": round(statistics.median(values), 2), "p99_ms": round(percentile(values, 0.99), 2),
                    "count": len(values)} for label, values in results.items()}
    reference = data["direct"]["p50_ms"] or 0.01
    value = "; ".join(f"{label} p50 {d['p50_ms']:.1f} ms, p99 {d['p99_ms']:.1f} ms"
                      + ("" if label == "direct" else f" ({d['p50_ms'] / reference:.1f}x the direct p50)")
                      for label, d in data.items())
    ok = all(d["p99_ms"] <= 100 for label, d in data.items() if label != "direct")
    return Figure("commands", f"LED command to the board, {count} each, 2 workers", value, "p99 <= 100 ms", ok, data)
