"""The virtual ESP32s against a real Mosquitto and a scripted server: joins, readings, LED, button, leave, Will."""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sensorhub.broker import Broker
from sensorhub.config import Settings
from sensorhub.mqttclient import stop_loop
from sensorhub.protocol import (
    Kind,
    MacJoin,
    format_led_command,
    format_name_assign,
    format_reading,
    format_session_ref,
    new_session_id,
    parse_join,
    parse_reading,
)
from sensorhub.simulator import DeviceNotReady, Fleet, VirtualDevice, default_seed, mac_address
from tests.support import log_in_as_server, wait_for

pytestmark = pytest.mark.integration

MAC_RE = re.compile(r"[0-9A-F]{2}(:[0-9A-F]{2}){5}")


@dataclass(frozen=True)
class Seen:
    """One message as the scripted server received it."""

    at: float
    topic: str
    payload: bytes
    qos: int

    @property
    def sender(self) -> str:
        """The first field: a MAC address (MAC join, nameAssign) or a device name."""
        return self.payload.decode().split(";")[0]


def _no_delay(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
    # Without it, Nagle's algorithm adds ~40 ms to each answer, and 200 joins take seconds longer.
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class ScriptedServer:
    """The server side reduced to a script: answers MAC joins with MAC;name;session, records all of `#`."""

    def __init__(self, settings: Settings, answer: bool = True) -> None:
        self.port = settings.mqtt_port
        self.answer = answer
        self.names: dict[str, str] = {}
        self._session: str | None = None
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="scripted-server",
                                  protocol=mqtt.MQTTv5)
        log_in_as_server(self.client, settings)
        self.client.on_connect = lambda client, *_: client.subscribe("#", qos=2)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.on_socket_open = _no_delay
        self.client.reconnect_delay_set(0.05, 0.2)  # type: ignore[arg-type]  # paho annotates int, sleeps float

    def start(self) -> None:
        self.client.connect("127.0.0.1", self.port, keepalive=5)
        self.client.loop_start()
        assert self.subscribed.wait(5), "the scripted server could not subscribe"

    def stop(self) -> None:
        self.client.disconnect()
        stop_loop(self.client)

    def _on_message(self, client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        seen = Seen(time.monotonic(), message.topic, bytes(message.payload), message.qos)
        with self._lock:
            self._seen.append(seen)
        if message.topic == "state/join" and self.answer:
            join = parse_join(seen.payload)
            if isinstance(join, MacJoin):
                name = self.names.setdefault(join.mac, f"capteur{len(self.names) + 1:02d}")
                self._session = new_session_id(self._session)
                self._publish("state/nameAssign", format_name_assign(join.mac, name, self._session), 2)

    def _publish(self, topic: str, payload: bytes, qos: int) -> mqtt.MQTTMessageInfo:
        """Publish, and record it as seen: the server's broker user may send on its topics, not read them."""
        with self._lock:
            self._seen.append(Seen(time.monotonic(), topic, payload, qos))
        return self.client.publish(topic, payload, qos=qos)

    def seen(self, topic: str | None = None, device: VirtualDevice | None = None) -> list[Seen]:
        """Messages received so far, on `topic` and from or about `device` if given."""
        with self._lock:
            seen = list(self._seen)
        if topic is not None:
            seen = [s for s in seen if s.topic == topic]
        if device is not None:
            seen = [s for s in seen if s.sender in (device.mac, device.name)]
        return seen

    def wait_seen(self, topic: str, payload: bytes, count: int = 1, timeout: float = 5.0) -> list[Seen]:
        """Wait until `payload` arrived `count` times on `topic`; return those messages."""
        def found() -> list[Seen]:
            matches = [s for s in self.seen(topic) if s.payload == payload]
            return matches if len(matches) >= count else []
        return wait_for(found, timeout, what=f"{count} x {payload!r} on {topic}")

    def send_led(self, name: str, session: str, on: bool) -> None:
        self._publish("led/command", format_led_command(name, session, on), 1).wait_for_publish(5)


@pytest.fixture
def server(broker: Broker, settings: Settings) -> Iterator[ScriptedServer]:
    scripted = ScriptedServer(settings)
    scripted.start()
    yield scripted
    scripted.stop()


@pytest.fixture
def fleets(broker: Broker) -> Iterator[Callable[..., Fleet]]:
    """Start fleets (quiet button by default); every one is stopped after the test, before the broker."""
    started: list[Fleet] = []

    def start(settings: Settings, **options: Any) -> Fleet:
        options.setdefault("seed", 1)
        options.setdefault("button_every", None)
        fleet = Fleet(settings, **options)
        started.append(fleet)
        fleet.start()
        return fleet

    yield start
    for fleet in started:
        fleet.stop()


def readings(server: ScriptedServer, device: VirtualDevice, kind: Kind) -> list[tuple[float, int]]:
    """(arrival time, value) of the device's readings of `kind` in its current session, checked valid."""
    topic = {Kind.LIGHT: "photoresistor/status", Kind.BUTTON: "button/status", Kind.LED: "led/status"}[kind]
    found = []
    for seen in server.seen(topic, device):
        reading = parse_reading(kind, seen.payload)
        assert (reading.name, reading.session) == (device.name, device.session)
        found.append((seen.at, reading.value))
    return found


_sentinels = itertools.count(1)


def sentinel(server: ScriptedServer, settings: Settings) -> None:
    """Publish a message the scripted server reads (QoS 1, from a connection of its own) and wait until it has it:
    anything the broker had routed to the server before (its one subscription, delivered in order) has arrived."""
    payload = f"sentinel;{next(_sentinels)}".encode()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", settings.mqtt_port, keepalive=5)
    client.loop_start()
    try:
        client.publish("photoresistor/status", payload, qos=1).wait_for_publish(5)
        server.wait_seen("photoresistor/status", payload)
    finally:
        client.disconnect()
        stop_loop(client)


def connections(settings: Settings, client_id: str) -> list[str]:
    """The broker log's connection events of one client: ('connected', 'p5'), ('disconnected', ...), ..."""
    log = Path(settings.broker_log).read_text()
    pattern = rf"New client connected from \S+ as {client_id} \((p\d)|Client {client_id} (disconnected|closed its)"
    return [match[0] or match[1] for match in re.findall(pattern, log)]


def test_macs_are_stable_per_seed_and_differ_across_seeds(settings: Settings) -> None:
    first = [d.mac for d in Fleet(settings, count=50, seed=7).devices]
    again = [d.mac for d in Fleet(settings, count=50, seed=7).devices]
    other = [d.mac for d in Fleet(settings, count=50, seed=8).devices]
    assert first == again == [mac_address(7, i) for i in range(50)]
    assert not set(first) & set(other)
    assert len(set(first)) == 50
    for mac in first:
        assert MAC_RE.fullmatch(mac)
        assert int(mac[:2], 16) & 0b11 == 0b10  # locally administered, unicast
    device = Fleet(settings, count=1, seed=7).devices[0]
    assert device.client_id == "sim-" + device.mac.replace(":", "")
    # No seed: derived from the host name, so the same on every run on this machine.
    assert Fleet(settings, count=3).seed == Fleet(settings, count=3).seed == default_seed()


# Mosquitto's log names MQTT 5 "p5" and MQTT 3.1.1 "p2" (its own numbering, not the protocol level).
@pytest.mark.parametrize(("version", "join_qos", "protocol"), [("5", 2, "p5"), ("3.1.1", 0, "p2")])
def test_join_sequence(settings: Settings, server: ScriptedServer, fleets: Callable[..., Fleet],
                       version: str, join_qos: int, protocol: str) -> None:
    fleet = fleets(settings, count=1, interval=60, mqtt_version=version)
    fleet.wait_joined(5)
    device = fleet.devices[0]
    ref = format_session_ref(device.name or "", device.session or "")
    server.wait_seen("state/join", ref)
    exchange = [(s.topic, s.payload, s.qos) for s in server.seen(device=device) if s.topic.startswith("state/")]
    # One MAC join only: the server answers at once, so a device not yet subscribed would have missed it.
    assert exchange == [
        ("state/join", device.mac.encode(), join_qos),
        ("state/nameAssign", format_name_assign(device.mac, server.names[device.mac], device.session or ""), 2),
        ("state/join", ref, join_qos),
    ]
    assert device.name == server.names[device.mac] and device.joined
    assert device.sent["state/join"] == 2
    # Connected, disconnected cleanly, connected again (with the Will, see the crash test), in the right protocol.
    assert connections(settings, device.client_id) == [protocol, "disconnected", protocol]


def test_light_readings_arrive_at_the_interval(settings: Settings, server: ScriptedServer,
                                              fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(settings, count=2, interval=0.25)
    fleet.wait_joined(5)
    for device in fleet.devices:
        def enough(device: VirtualDevice = device) -> bool:
            return len(readings(server, device, Kind.LIGHT)) >= 7
        wait_for(enough, 5, what="7 light readings")
        found = readings(server, device, Kind.LIGHT)
        gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(found)]
        assert 0.18 < median(gaps) < 0.35, gaps
        values = [value for _, value in found]
        assert all(0 <= v <= 100 for v in values)
        assert max(abs(b - a) for a, b in itertools.pairwise(values)) <= 15, values  # slowly varying
        assert {s.qos for s in server.seen("photoresistor/status", device)} == {0}
    first = fleet.devices[0]
    fleet.set_light(0, 77)
    server.wait_seen("photoresistor/status", format_reading(first.name or "", first.session or "", 77))
    with pytest.raises(ValueError):
        fleet.set_light(0, 101)


def test_led_commands_for_the_device_are_obeyed_and_confirmed(settings: Settings, server: ScriptedServer,
                                                             fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(settings, count=2, interval=60)
    fleet.wait_joined(5)
    first, second = fleet.devices
    name, session = first.name or "", first.session or ""
    server.send_led(name, session, True)
    server.wait_seen("led/status", format_reading(name, session, 1))
    assert first.led
    server.send_led(name, session, True)  # no change: confirmed all the same
    server.wait_seen("led/status", format_reading(name, session, 1), count=2)
    server.send_led(name, "1700000000.000001", False)  # an old session's command
    server.send_led(second.name or "", session, False)  # another device's name
    server.send_led(name, session, False)
    server.wait_seen("led/status", format_reading(name, session, 0), count=2)  # the first 0 is the initial report
    # Commands arrive in order: the two ignored ones were handled before the last one was confirmed.
    # the LED state reported when the session started, then one confirmation per command obeyed
    assert [value for _, value in readings(server, first, Kind.LED)] == [0, 1, 1, 0]
    assert {s.qos for s in server.seen("led/status")} == {1}
    assert (first.led, first.commands_received) == (False, 3)
    assert (second.led, second.commands_received) == (False, 0)
    assert [value for _, value in readings(server, second, Kind.LED)] == [0]


def test_press_button_publishes_push_then_release(settings: Settings, server: ScriptedServer,
                                                  fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(settings, count=1, interval=60)
    fleet.wait_joined(5)
    device = fleet.devices[0]
    fleet.press_button(0)
    assert not device.button and device.sent["button/status"] == 2
    wait_for(lambda: len(readings(server, device, Kind.BUTTON)) == 2, 5, what="push and release")
    (pushed, one), (released, zero) = readings(server, device, Kind.BUTTON)
    assert (one, zero) == (1, 0)
    assert 0.15 < released - pushed < 0.6


def test_button_is_pressed_now_and_then(settings: Settings, server: ScriptedServer,
                                        fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(settings, count=1, interval=60, button_every=(0.2, 0.3))
    fleet.wait_joined(5)
    device = fleet.devices[0]
    wait_for(lambda: len(readings(server, device, Kind.BUTTON)) >= 4, 5, what="two random presses")
    values = [value for _, value in readings(server, device, Kind.BUTTON)]
    assert values[:4] == [1, 0, 1, 0]


@pytest.mark.parametrize("version", ["5", "3.1.1"])
def test_crash_makes_the_broker_publish_the_will(settings: Settings, server: ScriptedServer,
                                                 fleets: Callable[..., Fleet], version: str) -> None:
    fleet = fleets(settings, count=2, interval=60, mqtt_version=version)
    fleet.wait_joined(5)
    crashed, other = fleet.devices
    ref = format_session_ref(crashed.name or "", crashed.session or "")
    fleet.crash(0)
    (will,) = server.wait_seen("state/leave", ref)
    assert will.qos == 2
    assert crashed.sent["state/leave"] == 0  # so the broker published it: the Will
    assert crashed.stopped and not crashed.joined and other.joined
    assert connections(settings, crashed.client_id)[-1] == "closed its"  # no DISCONNECT
    # Stays stopped, no new join: its loop has ended (`stopped` is set as it returns; a device never runs twice),
    # and the Will came after all it had published, so the joins seen are every join it made.
    assert len(server.seen("state/join", crashed)) == crashed.sent["state/join"] == 2


def test_leave_publishes_state_leave_then_disconnects(settings: Settings, server: ScriptedServer,
                                                      fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(settings, count=2, interval=0.2)
    fleet.wait_joined(5)
    leaving, other = fleet.devices
    ref = format_session_ref(leaving.name or "", leaving.session or "")
    fleet.leave(0)
    (leave,) = server.wait_seen("state/leave", ref)
    assert leave.qos == 2 and leaving.sent["state/leave"] == 1
    wait_for(lambda: connections(settings, leaving.client_id)[-1] == "disconnected", 5,  # a DISCONNECT: no Will
             what="the broker to read its DISCONNECT")
    sentinel(server, settings)  # routed after the broker read its last packet: all it sent has reached the server
    assert len(server.seen("state/leave", leaving)) == 1
    assert [s for s in server.seen(device=leaving) if s.at > leave.at] == []  # nothing after the leave
    assert leaving.stopped and other.joined
    with pytest.raises(DeviceNotReady):
        fleet.press_button(0)


def test_stop_makes_every_device_leave_and_ends_the_thread(settings: Settings, server: ScriptedServer) -> None:
    threads = set(threading.enumerate())
    fleet = Fleet(settings, count=3, interval=0.2, seed=1, button_every=(0.1, 0.2))
    fleet.start()
    fleet.wait_joined(5)
    assert set(threading.enumerate()) > threads
    refs = [format_session_ref(d.name or "", d.session or "") for d in fleet.devices]
    fleet.leave(1)
    fleet.stop()
    for ref in refs:
        server.wait_seen("state/leave", ref)
    assert len(server.seen("state/leave")) == 3
    assert all(d.stopped and not d.joined and not d.button for d in fleet.devices)
    assert set(threading.enumerate()) == threads
    fleet.stop()  # idempotent
    with pytest.raises(RuntimeError):
        fleet.press_button(0)


def test_devices_join_again_after_a_broker_restart(settings: Settings, broker: Broker, server: ScriptedServer,
                                                   fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(settings, count=2, interval=60, name_timeout=3)
    fleet.wait_joined(5)
    before = {d.mac: d.session for d in fleet.devices}
    broker.stop()
    wait_for(lambda: not any(d.joined for d in fleet.devices), 5, what="the devices to notice")
    restarted = Broker(settings)
    restarted.start()
    try:
        wait_for(lambda: all(d.joined and d.sessions == 2 for d in fleet.devices), 15, what="a second session")
        for device in fleet.devices:
            assert device.session != before[device.mac]
            server.wait_seen("state/join", format_session_ref(device.name or "", device.session or ""))
            mac_joins = [s for s in server.seen("state/join", device) if s.payload == device.mac.encode()]
            assert len(mac_joins) == 2  # the whole join again, from the MAC
    finally:
        fleet.stop()
        restarted.stop()


def test_two_hundred_devices_join_within_seconds(settings: Settings, server: ScriptedServer,
                                                 fleets: Callable[..., Fleet]) -> None:
    assert settings.broker_max_connections == -1
    fleet = fleets(settings, count=200, interval=30)
    fleet.wait_joined(30)  # how fast: `make bench` (devices_2000), not a test
    refs = {format_session_ref(d.name or "", d.session or "") for d in fleet.devices}
    assert len(refs) == 200
    wait_for(lambda: refs <= {s.payload for s in server.seen("state/join")}, 5, what="200 session joins")
    assert len({s.payload for s in server.seen("state/join") if b";" not in s.payload}) == 200
    fleet.stop()
    wait_for(lambda: refs <= {s.payload for s in server.seen("state/leave")}, 5, what="200 leaves")


def test_wait_joined_names_the_stragglers(settings: Settings, broker: Broker, fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(settings, count=2, name_timeout=30)  # nobody answers the MAC joins
    with pytest.raises(TimeoutError) as caught:
        fleet.wait_joined(0.5)
    message = str(caught.value)
    assert "2 of 2" in message and all(d.mac in message for d in fleet.devices)


def _simulate(settings: Settings, stderr: Path, *args: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "sensorhub", "simulate", *args]
    env = {**os.environ, **settings.environ(), "SENSORHUB_LOG_LEVEL": "INFO"}
    return subprocess.Popen(command, env=env, stderr=stderr.open("wb"), stdout=subprocess.DEVNULL)


def test_cli_simulate_joins_and_leaves_on_ctrl_c(settings: Settings, server: ScriptedServer,
                                                 tmp_path: Path) -> None:
    log = tmp_path / "simulate.log"
    process = _simulate(settings, log, "--devices", "2", "--interval", "0.3", "--seed", "5")
    try:
        macs = [mac_address(5, 0), mac_address(5, 1)]
        wait_for(lambda: all(f"{mac} -> {server.names.get(mac)}" in log.read_text() for mac in macs), 10,
                 what="both joins logged")
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
    finally:
        process.kill()
    # The leaves were acknowledged before the simulator exited, not necessarily delivered to the server yet.
    sentinel(server, settings)
    leaves = server.seen("state/leave")
    assert sorted(s.sender for s in leaves) == sorted(server.names[mac] for mac in macs)


def test_cli_simulate_retries_while_the_broker_is_unreachable(settings: Settings, tmp_path: Path) -> None:
    log = tmp_path / "simulate.log"
    process = _simulate(settings, log, "--devices", "1")
    try:
        unreachable = f"cannot connect to the MQTT broker at 127.0.0.1:{settings.mqtt_port}"
        wait_for(lambda: log.read_text().count(unreachable) >= 2, 10, what="a failure and a retry logged")
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        process.kill()
    assert "Traceback" not in log.read_text()
