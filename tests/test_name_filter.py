"""The broker's name-assignment filter (mosquitto_reserve.c, `own_assignment`): a board that published its MAC join
hears its own line of state/nameAssign only; a client that never joins hears them all once its join grace is over
(docs/scaling.md)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import Engine, select

from bench.edges import filter_lines
from sensorhub import reserve
from sensorhub.broker import BASE_CONFIG, Broker, find_mosquitto, render_config
from sensorhub.config import Settings
from sensorhub.db.engine import make_engine
from sensorhub.db.models import Device
from sensorhub.db.schema import init_db
from sensorhub.ingest.service import IngestClient
from sensorhub.mqttclient import stop_loop
from sensorhub.protocol import Topic, format_name_assign, parse_name_assign
from sensorhub.simulator import Fleet
from tests.support import free_port, log_in_as_server, settings_for, wait_for

pytestmark = pytest.mark.integration

ASSIGN = str(Topic.NAME_ASSIGN)
JOIN = str(Topic.JOIN)
#: The module's broker waits 1 s, not mqtt/mosquitto.conf's 5, for a subscriber's join: the tests wait it out.
GRACE = 1.0


@pytest.fixture(scope="module")
def filter_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The module's settings: one broker for every test (each test uses MACs of its own)."""
    return settings_for(tmp_path_factory.mktemp("name-filter"))


@pytest.fixture(scope="module")
def filter_broker(filter_settings: Settings) -> Iterator[Broker]:
    """A real Mosquitto with the project's configuration (and so the filter), for the whole module."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.fail("no C compiler: the plugin cannot be built (sudo apt-get install gcc mosquitto-dev)")
    base = "".join(f"plugin_opt_join_grace {GRACE:g}\n" if line.startswith("plugin_opt_join_grace") else line
                   for line in BASE_CONFIG.read_text().splitlines(keepends=True))
    assert base != BASE_CONFIG.read_text()
    with Broker(filter_settings, base=base) as running:
        yield running


class Listener:
    """An MQTT client subscribed to state/nameAssign (a board waiting for its name, or a plain subscriber)."""

    def __init__(self, port: int, client_id: str = "") -> None:
        self.received: list[str] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self.client.on_message = lambda _c, _u, msg: self.received.append(msg.payload.decode())
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_args: subscribed.set()
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        wait_for(self.client.is_connected, 5, what="a connection")
        self.client.subscribe(ASSIGN, qos=2)  # as the firmware does, before its join
        assert subscribed.wait(5), "no SUBACK"

    def join(self, mac: str) -> None:
        """Publish a MAC join (QoS 0, as the firmware does), and wait until it left."""
        self.client.publish(JOIN, mac, qos=0).wait_for_publish(5)

    def close(self) -> None:
        """Disconnect cleanly."""
        self.client.disconnect()
        stop_loop(self.client)


class Server:
    """Publishes name assignments as the ingest client's broker user (the only one allowed to)."""

    def __init__(self, settings: Settings) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        log_in_as_server(self.client, settings)
        self.client.connect("127.0.0.1", settings.mqtt_port, keepalive=5)
        self.client.loop_start()
        wait_for(self.client.is_connected, 5, what="the server's connection")

    def assign(self, *macs: str) -> list[str]:
        """Publish one assignment per MAC (QoS 2, as the ingest client does); their payloads."""
        lines = []
        for number, mac in enumerate(macs, 1):
            line = format_name_assign(mac, f"capteur{number:02d}", f"1700000000.{number:06d}").decode()
            self.client.publish(ASSIGN, line, qos=2).wait_for_publish(5)
            lines.append(line)
        return lines

    def close(self) -> None:
        """Disconnect cleanly."""
        self.client.disconnect()
        stop_loop(self.client)


@pytest.fixture
def server(filter_settings: Settings, filter_broker: Broker) -> Iterator[Server]:
    """The publisher of assignments."""
    publisher = Server(filter_settings)
    yield publisher
    publisher.close()


def _past_grace() -> None:
    """Until the listeners subscribed so far are past their join grace: from then on, those that never joined hear
    every line."""
    time.sleep(GRACE + 0.2)


def _settle(*listeners: Listener, expected: int) -> None:
    """Until the plain subscriber(s) got every line, then a little longer for anything that should not come."""
    wait_for(lambda: all(len(listener.received) >= expected for listener in listeners), 5,
             what=f"{expected} assignments at the plain subscriber")
    time.sleep(0.3)


def test_two_waiting_boards_each_receive_their_own_assignment_only(filter_settings: Settings,
                                                                  server: Server) -> None:
    port = filter_settings.mqtt_port
    plain = Listener(port)
    _past_grace()
    first, second = Listener(port), Listener(port)
    first.join("02:00:00:00:01:01")
    second.join("02:00:00:00:01:0a")  # lower case: the ingest client accepts it, and answers in upper case
    time.sleep(0.2)
    lines = server.assign("02:00:00:00:01:01", "02:00:00:00:01:0A", "02:00:00:00:01:03")
    _settle(plain, expected=3)
    assert first.received == [lines[0]]
    assert second.received == [lines[1]]
    assert plain.received == lines  # never joined: hears every line, as before
    for listener in (first, second, plain):
        listener.close()


def test_a_board_joining_again_with_a_new_mac_gets_the_new_one(filter_settings: Settings, server: Server) -> None:
    port = filter_settings.mqtt_port
    plain = Listener(port)
    _past_grace()
    board = Listener(port, client_id="board-rejoin")
    board.join("02:00:00:00:02:01")
    board.close()
    board = Listener(port, client_id="board-rejoin")  # a new connection starts unfiltered
    board.join("02:00:00:00:02:02")
    time.sleep(0.2)
    lines = server.assign("02:00:00:00:02:01", "02:00:00:00:02:02")
    _settle(plain, expected=2)
    assert board.received == [lines[1]]
    for listener in (board, plain):
        listener.close()


def test_a_client_joining_for_several_boards_hears_every_line(filter_settings: Settings, server: Server) -> None:
    """A bridge forwards its edge's boards' joins: from its second MAC on, it is not filtered."""
    port = filter_settings.mqtt_port
    bridge, plain = Listener(port), Listener(port)
    _past_grace()
    bridge.join("02:00:00:00:03:01")
    bridge.join("02:00:00:00:03:02")
    bridge.join("02:00:00:00:03:01")
    time.sleep(0.2)
    lines = server.assign("02:00:00:00:03:01", "02:00:00:00:03:02", "02:00:00:00:03:03")
    _settle(plain, bridge, expected=3)
    assert bridge.received == lines
    for listener in (bridge, plain):
        listener.close()


def test_what_a_board_joined_with_is_forgotten_when_it_disconnects(filter_settings: Settings,
                                                                   server: Server) -> None:
    """Each board joins and leaves, then a client connects that never joins: the broker gives it the memory the
    board had as often as not (the same `struct mosquitto *`, the filter's key), and it is not filtered."""
    port = filter_settings.mqtt_port
    plain = []
    for number in range(30):
        board = Listener(port)
        board.join(f"02:00:00:00:04:{number:02X}")
        board.close()
        time.sleep(0.05)  # the broker frees a client's memory in its next turn
        plain.append(Listener(port))  # kept connected: the next board gets memory of its own
    _past_grace()
    lines = server.assign("02:00:00:00:04:FF")
    _settle(*plain, expected=1)
    assert [listener.received for listener in plain] == [lines] * len(plain)
    for listener in plain:
        listener.close()


def test_a_subscriber_hears_nothing_until_it_joins_or_its_grace_is_over(filter_settings: Settings,
                                                                        server: Server) -> None:
    """A board subscribes, waits for its SUBACK, then joins: what is published meanwhile is not for it."""
    port = filter_settings.mqtt_port
    listener, board = Listener(port), Listener(port)
    early = server.assign("02:00:00:00:07:01")
    board.join("02:00:00:00:07:02")
    _past_grace()
    late = server.assign("02:00:00:00:07:03", "02:00:00:00:07:02")
    _settle(listener, expected=2)
    assert listener.received == late  # nothing of what came within its grace, everything after
    assert board.received == [late[1]]
    assert early and early[0] not in board.received
    for client in (listener, board):
        client.close()


@pytest.fixture
def filter_engine(filter_settings: Settings, filter_broker: Broker) -> Iterator[Engine]:
    """The module's database, with sensorhub's schema."""
    engine = make_engine(filter_settings.database_url, create_dir=True)
    init_db(engine)
    yield engine
    engine.dispose()


def test_the_firmware_path_end_to_end_through_the_real_ingest_client(filter_settings: Settings,
                                                                     filter_engine: Engine) -> None:
    """Boards waiting at once each hear their own name from the real ingest client; the simulator's boards (the seed
    firmware's protocol) name themselves and go online."""
    port = filter_settings.mqtt_port
    ingest = IngestClient(filter_settings)
    ingest.start(wait_ready=10)
    try:
        plain = Listener(port)
        _past_grace()
        boards = {mac: Listener(port) for mac in ("02:00:00:00:05:01", "02:00:00:00:05:02", "02:00:00:00:05:03")}
        for mac, board in boards.items():
            board.join(mac)
        _settle(plain, expected=3)
        heard = {parse_name_assign(line.encode()).mac for line in plain.received}
        assert heard == set(boards)
        for mac, board in boards.items():
            assert [parse_name_assign(line.encode()).mac for line in board.received] == [mac]
        fleet = Fleet(filter_settings, count=5, interval=30, button_every=None)
        fleet.start()
        try:
            fleet.wait_joined(20)
            macs = [device.mac for device in fleet.devices]

            def online() -> int:
                with filter_engine.connect() as conn:
                    return len(conn.execute(select(Device.id).where(Device.mac.in_(macs),
                                                                    Device.online.is_(True))).all())
            wait_for(lambda: online() == 5, 10, what="the simulator's 5 boards online")
        finally:
            fleet.stop()
        for listener in (plain, *boards.values()):
            listener.close()
    finally:
        ingest.stop()


def test_every_device_listener_loads_the_filter_and_the_web_one_does_not(tmp_path: Path) -> None:
    text = render_config(Settings().replace(tls_cert="c.pem", tls_key="k.pem"), tmp_path / "b.log",
                         passwd=tmp_path / "passwd", tls=(tmp_path / "c.pem", tmp_path / "k.pem"),
                         plugin=tmp_path / "mosquitto_dynamic_security.so", reserved_ids=tmp_path / reserve.NAME)
    blocks = {block.split("\n", 1)[0]: block for block in text.split("\nlistener ")[1:]}
    device = [port for port, block in blocks.items() if all(line in block for line in reserve.FILTER_LINES)]
    assert sorted(device) == sorted(port for port, block in blocks.items() if "protocol websockets" not in block)
    assert len(device) == 2  # the TCP listener and its TLS twin
    for block in blocks.values():  # the filter comes before the dynamic security plugin, which decides the rest
        if reserve.OWN_ASSIGNMENT in block:
            assert block.index(reserve.OWN_ASSIGNMENT) < block.index("mosquitto_dynamic_security.so")
    without = render_config(Settings(), tmp_path / "b.log", plugin=None)  # no C compiler: no plugin, no options
    assert "plugin_opt_" not in "\n".join(line for line in without.splitlines() if not line.startswith("#"))


def test_an_edge_broker_filters_its_boards_with_nothing_else_to_decide(tmp_path: Path) -> None:
    """bench/edges.py's lines: a broker without other access control lets everything else through."""
    built = reserve.build(tmp_path)
    assert built is not None
    port = free_port()
    conf = tmp_path / "edge.conf"
    conf.write_text("\n".join([*filter_lines(built), f"listener {port} 127.0.0.1", "allow_anonymous true",
                               f"log_dest file {tmp_path / 'edge.log'}"]) + "\n")
    edge = subprocess.Popen([find_mosquitto(), "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (tmp_path / "edge.log").exists() and "running" in (tmp_path / "edge.log").read_text(), 5,
                 what="the edge broker")
        board, sender = Listener(port), Listener(port)
        board.join("02:00:00:00:06:01")
        time.sleep(0.2)
        for mac in ("02:00:00:00:06:02", "02:00:00:00:06:01"):  # its own last: in order, at QoS 2
            sender.client.publish(ASSIGN, f"{mac};capteur;1700000000.1", qos=2).wait_for_publish(5)
        wait_for(lambda: board.received, 5, what="the board's own assignment")
        time.sleep(0.3)
        assert board.received == ["02:00:00:00:06:01;capteur;1700000000.1"]
        for listener in (board, sender):
            listener.close()
    finally:
        edge.terminate()
        edge.wait(10)
