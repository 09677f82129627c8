"""Home Assistant's MQTT discovery (SENSORHUB_HOMEASSISTANT): against our real broker and an in-process ingest
client, with a hand-driven board and a client logged in as the broker user `homeassistant`; then, at the end,
against a real Home Assistant (tests/hass.py installs it once, in a cached venv of its own, from PyPI)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine

from bench.ports import free_port
from sensorhub.broker import Broker, find_mosquitto, render_config
from sensorhub.commands import RenameRequest
from sensorhub.config import Settings
from sensorhub.credentials import HA_USER, find_mosquitto_passwd, homeassistant_password
from sensorhub.db.engine import make_engine
from sensorhub.db.schema import init_db
from sensorhub.errors import PayloadError
from sensorhub.ingest.homeassistant import Board, config_topic, configs, parse_led_set
from sensorhub.ingest.service import IngestClient
from sensorhub.ingest.sessions import Inbound
from sensorhub.mqttclient import stop_loop
from sensorhub.protocol import HA_MAX_PACKET, MAX_PACKET, Topic
from tests import hass
from tests.devices import RawDevice
from tests.support import settings_for, wait_for

MAC = "02:00:00:00:0A:01"
KEY = "sensorhub_02000000" + "0a01"


class HaClient:
    """An MQTT client logged in as Home Assistant's broker user, recording what it receives."""

    def __init__(self, settings: Settings, password: str | None = None, login: tuple[str, str] | None = None) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.acks: dict[int, Any] = {}
        self.granted: list[list[Any]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(*(login or (HA_USER, password or homeassistant_password(settings))))
        self.client.on_message = self._on_message
        self.client.on_publish = lambda _c, _u, mid, reason, _p: self.acks.__setitem__(mid, reason)
        self.client.on_subscribe = lambda _c, _u, _mid, reasons, _p: self.granted.append(reasons)
        self.client.connect("127.0.0.1", settings.mqtt_port)
        self.client.loop_start()
        wait_for(self.client.is_connected, 5, what="Home Assistant's client connected")

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((message.topic, bytes(message.payload)))

    def subscribe(self, *topics: str) -> list[Any]:
        """Subscribe and wait for the SUBACK; its reason codes."""
        count = len(self.granted)
        self.client.subscribe([(topic, 1) for topic in topics])
        wait_for(lambda: len(self.granted) > count, 5, what="SUBACK")
        return self.granted[count]

    def last(self, topic: str) -> bytes | None:
        """The last payload received on `topic`."""
        with self.lock:
            found = [payload for received, payload in self.messages if received == topic]
        return found[-1] if found else None

    def clear(self) -> None:
        """Forget what was received."""
        with self.lock:
            self.messages.clear()

    def publish(self, topic: str, payload: bytes | str) -> Any:
        """Publish at QoS 1 and wait for the PUBACK; its reason code."""
        info = self.client.publish(topic, payload, qos=1)
        wait_for(lambda: info.mid in self.acks, 5, what=f"PUBACK for {topic}")
        return self.acks[info.mid]

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        stop_loop(self.client)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Settings with Home Assistant's discovery on, on our broker (the broker fixture's too)."""
    return settings.replace(homeassistant=True)


@pytest.fixture
def ha_settings(settings: Settings) -> Settings:
    """The same settings, under the name the tests read better."""
    return settings


@pytest.fixture
def worker(ha_settings: Settings, broker: Broker, engine: Engine) -> Iterator[IngestClient]:
    """An in-process ingest client announcing the boards to Home Assistant, republishing within 0.1 s."""
    client = IngestClient(ha_settings)
    assert client.homeassistant is not None
    client.homeassistant.delay = (0.0, 0.1)
    client.start(wait_ready=10)
    yield client
    client.stop()


def port_open(port: int) -> bool:
    """Whether something listens on `port` of the loopback interface."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def joined(worker: IngestClient, board: RawDevice) -> int:
    """Join `board` and wait until the worker has it online; its device id."""
    board.join()
    ident = wait_for(lambda: worker.writer.sessions.by_session_name.get(board.name), 10).id
    wait_for(lambda: worker.writer.sessions.by_id[ident].online, 10, what="online")
    return int(ident)


def test_configs_are_what_home_assistant_reads() -> None:
    """Per-entity discovery: one device (its MAC, its name) with a commandable light, a button, a light sensor."""
    found = {topic: json.loads(payload) for topic, payload in configs(Board(3, MAC, "salle B"))}
    assert set(found) == {f"homeassistant/{component}/{KEY}/config" for component in ("light", "binary_sensor",
                                                                                       "sensor")}
    light = found[config_topic("light", MAC)]
    assert light["~"] == "sensorhub/ha/3" and light["cmd_t"] == "~/led/set" and light["stat_t"] == "~/led"
    assert light["avty_t"] == "~/availability"
    assert light["dev"] == {"ids": [KEY], "name": "salle B", "mf": "sensorhub", "mdl": "ESP32",
                            "cns": [["mac", MAC.lower()]]}
    sensor = found[config_topic("sensor", MAC)]
    assert sensor["unit_of_meas"] == "%" and sensor["stat_cla"] == "measurement" and sensor["stat_t"] == "~/light"
    assert found[config_topic("binary_sensor", MAC)]["stat_t"] == "~/button"
    assert len({entity["uniq_id"] for entity in found.values()}) == 3
    assert parse_led_set("sensorhub/ha/3/led/set", b"ON") == (3, True)
    assert parse_led_set("sensorhub/ha/12/led/set", b"OFF") == (12, False)
    for topic, payload in (("sensorhub/ha/3/led/set", b"1"), ("sensorhub/ha/x/led/set", b"ON"),
                           ("sensorhub/ha/0/led/set", b"ON"), ("sensorhub/ha/3/led/sets", b"ON")):
        with pytest.raises(PayloadError):
            parse_led_set(topic, payload)


def test_the_packet_limit_is_raised_only_for_home_assistant_on_our_broker(tmp_path: Path) -> None:
    """200 bytes, as the protocol needs; HA_MAX_PACKET with Home Assistant on our broker; 200 again when Home
    Assistant has its own (SENSORHUB_HOMEASSISTANT_URL)."""
    plain = Settings()
    for settings, limit in ((plain, MAX_PACKET), (plain.replace(homeassistant=True), HA_MAX_PACKET),
                            (plain.replace(homeassistant=True, homeassistant_url="mqtt://ha.local:1883"), MAX_PACKET)):
        lines = render_config(settings, tmp_path / "b.log").splitlines()
        assert [line for line in lines if line.startswith("max_packet_size")] == [f"max_packet_size {limit}"]
    assert max(len(topic) + len(payload) for topic, payload in configs(Board(12345, MAC, "x" * 29))) < 600


def test_a_board_is_announced_with_its_states_after_each_commit_and_again_at_home_assistants_birth(
        ha_settings: Settings, worker: IngestClient) -> None:
    """A board joins: its configs and states reach Home Assistant's user; its birth brings everything again; a
    rename changes the device's name; leaving makes it unavailable; a deleted device's configs are emptied."""
    ha = HaClient(ha_settings)
    board = RawDevice(ha_settings.mqtt_port, MAC)
    assert worker.homeassistant is not None
    try:
        assert all(code.value < 0x80 for code in ha.subscribe("homeassistant/+/+/config", "sensorhub/ha/#"))
        ident = joined(worker, board)
        light = config_topic("light", MAC)
        wait_for(lambda: ha.last(light), 10, what="the light's config")
        assert json.loads(ha.last(light) or b"")["dev"]["name"] == board.name
        assert json.loads(ha.last(config_topic("sensor", MAC)) or b"")["unit_of_meas"] == "%"
        base = f"sensorhub/ha/{ident}"
        wait_for(lambda: ha.last(f"{base}/availability") == b"online", 10, what="online")
        board.reading(Topic.LED_STATUS, 1)
        board.reading(Topic.BUTTON_STATUS, 0)
        board.reading(Topic.PHOTORESISTOR_STATUS, 42)
        wait_for(lambda: (ha.last(f"{base}/led"), ha.last(f"{base}/button"), ha.last(f"{base}/light"))
                 == (b"ON", b"OFF", b"42"), 10, what="the three states")

        ha.clear()
        republished = worker.homeassistant.republished
        assert ha.publish("homeassistant/status", "online").value < 0x80
        wait_for(lambda: worker.homeassistant is not None and worker.homeassistant.republished > republished, 10,
                 what="the republish")
        wait_for(lambda: ha.last(f"{base}/light") == b"42", 5, what="the states again")
        assert ha.last(light) is not None and ha.last(f"{base}/led") == b"ON"
        assert ha.last(f"{base}/availability") == b"online"
        assert worker.drops.snapshot() == {}

        ha.clear()
        worker.writer.submit(Inbound(RenameRequest(ident, "salle B"), 0))
        wait_for(lambda: ha.last(light), 10, what="the config after the rename")
        assert json.loads(ha.last(light) or b"")["dev"]["name"] == "salle B"

        board.leave()
        wait_for(lambda: ha.last(f"{base}/availability") == b"offline", 10, what="offline")

        worker.homeassistant.deleted([ident])
        wait_for(lambda: ha.last(light) == b"", 10, what="the emptied config")
        assert ha.last(config_topic("sensor", MAC)) == b"" and ha.last(config_topic("binary_sensor", MAC)) == b""
    finally:
        board.close()
        ha.close()


def test_home_assistants_led_commands_reach_a_board_only_online_in_its_session(
        ha_settings: Settings, worker: IngestClient) -> None:
    """A command on sensorhub/ha/<id>/led/set goes through the web page's checked path: sent to a board online
    in its current session, refused (counted) once it left, and an unknown device or payload is counted too."""
    ha = HaClient(ha_settings)
    board = RawDevice(ha_settings.mqtt_port, MAC)
    try:
        ident = joined(worker, board)
        assert ha.publish(f"sensorhub/ha/{ident}/led/set", "ON").value < 0x80
        wait_for(lambda: board.commands, 10, what="the LED command")
        assert board.commands == [f"{board.name};{board.session};1".encode()]
        ha.publish(f"sensorhub/ha/{ident}/led/set", "OFF")
        wait_for(lambda: len(board.commands) == 2, 10, what="the second LED command")
        assert board.commands[1] == f"{board.name};{board.session};0".encode()

        board.leave()
        wait_for(lambda: not worker.writer.sessions.by_id[ident].online, 10, what="offline")
        ha.publish(f"sensorhub/ha/{ident}/led/set", "ON")
        ha.publish(f"sensorhub/ha/{ident + 40}/led/set", "ON")
        ha.publish(f"sensorhub/ha/{ident}/led/set", "blink")
        wait_for(lambda: {"pipe-offline", "pipe-unknown-device", "ha-payload"} <= set(worker.drops.snapshot()), 10,
                 what="the three refusals counted")
        board.join()  # a new session: the refused command was not kept for it
        wait_for(lambda: worker.writer.sessions.by_id[ident].online, 10, what="online again")
        ha.publish(f"sensorhub/ha/{ident}/led/set", "ON")
        wait_for(lambda: len(board.commands) == 3, 10, what="the command in the new session")
        assert board.commands[2] == f"{board.name};{board.session};1".encode()
    finally:
        board.close()
        ha.close()


def test_the_homeassistant_user_reads_only_its_topics_and_publishes_only_commands_and_its_status(
        ha_settings: Settings, worker: IngestClient) -> None:
    """Home Assistant's broker user cannot publish on a board's channels nor read them (nor anything else)."""
    ha = HaClient(ha_settings)
    board = RawDevice(ha_settings.mqtt_port, MAC)
    try:
        ident = joined(worker, board)
        for topic in (Topic.LED_COMMAND, Topic.LED_STATUS, Topic.JOIN, Topic.NAME_ASSIGN, "sensorhub/commands",
                      f"sensorhub/ha/{ident}/led", "homeassistant/light/x/config", "sensorhub/live"):
            assert ha.publish(str(topic), f"{board.name};{board.session};1").is_failure, topic
        for topic in ("#", "led/status", "state/#", "sensorhub/#", "sensorhub/live", "$share/sensorhub/led/status"):
            assert all(code.is_failure for code in ha.subscribe(topic)), topic
        assert ha.publish(f"sensorhub/ha/{ident}/led/set", "ON").value < 0x80
        assert ha.publish("homeassistant/status", "offline").value < 0x80
        # Home Assistant's own filters are granted.
        granted = ha.subscribe("homeassistant/+/+/config", "homeassistant/+/+/+/config", "homeassistant/status",
                               f"sensorhub/ha/{ident}/led")
        assert all(code.value < 0x80 for code in granted)
        board.reading(Topic.LED_STATUS, 1)
        wait_for(lambda: ha.last(f"sensorhub/ha/{ident}/led") == b"ON", 10, what="the LED state")
        assert {topic for topic, _payload in ha.messages} <= {f"sensorhub/ha/{ident}/led", "homeassistant/status",
                                                              *(topic for topic, _p in configs(Board(ident, MAC, "")))}
        wait_for(lambda: board.commands, 10, what="the command Home Assistant may send")
        assert board.commands == [f"{board.name};{board.session};1".encode()]
    finally:
        board.close()
        ha.close()


def test_without_the_setting_there_is_no_homeassistant_user(tmp_path: Path) -> None:
    """SENSORHUB_HOMEASSISTANT off: no secret file, and the broker refuses the user."""
    settings = settings_for(tmp_path)
    assert homeassistant_password(settings) is None
    broker = Broker(settings)
    broker.start()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    refused: list[Any] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: refused.append(reason)
    client.username_pw_set(HA_USER, "guess-guess-guess")
    client.connect("127.0.0.1", settings.mqtt_port)
    client.loop_start()
    try:
        wait_for(lambda: refused, 5, what="CONNACK")
        assert refused[0].is_failure
        assert not (tmp_path / "var" / "mqtt-homeassistant.secret").exists()
    finally:
        client.disconnect()
        stop_loop(client)
        broker.stop()


# -- against a real Home Assistant ---------------------------------------------------------------------------------

#: Installing Home Assistant (first run: ~13 min on a busy 2-core machine, all from PyPI) happens in the first test's
#: setup; once cached, starting it takes a few seconds.
REAL_HA_TIMEOUT = 1800


@dataclass
class RealHa:
    """A real Home Assistant whose MQTT integration logs in to our broker, with our ingest client running."""

    settings: Settings
    worker: IngestClient
    api: hass.Api
    install_seconds: float
    start_seconds: float
    entry_id: str


@pytest.fixture(scope="session")
def home_assistant_venv() -> float:
    """Home Assistant HA_VERSION installed in its cached venv (from PyPI when missing); the seconds it took."""
    return hass.install()


@pytest.fixture(scope="module")
def real_ha(home_assistant_venv: float, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealHa]:
    """Our broker, an ingest client and one Home Assistant (`hass -c <tmp>` on a free port) for the module."""
    directory = tmp_path_factory.mktemp("real-ha")
    settings = settings_for(directory).replace(homeassistant=True, log_level="INFO")
    engine = make_engine(settings.database_url, create_dir=True)
    init_db(engine)
    engine.dispose()
    broker = Broker(settings)
    broker.start()
    worker = IngestClient(settings)
    assert worker.homeassistant is not None
    worker.homeassistant.delay = (0.0, 0.2)
    worker.start(wait_ready=10)
    port = free_port()
    password = homeassistant_password(settings)
    assert password is not None
    token, entry_id = hass.write_config(directory / "ha", port, settings.mqtt_port, password)
    log = open(directory / "hass.log", "wb")  # noqa: SIM115 - open for the module's lifetime
    started = time.monotonic()
    process = hass.start(directory / "ha", log)
    api = hass.Api(port, token)
    try:
        wait_for(lambda: api.running() or process.poll() is not None, 120, interval=0.25, what="Home Assistant")
        assert process.poll() is None, f"Home Assistant exited ({process.returncode}): see {directory / 'hass.log'}"
        yield RealHa(settings, worker, api, home_assistant_venv, time.monotonic() - started, entry_id)
    finally:
        hass.stop(process)
        log.close()
        worker.stop()
        broker.stop()


def entities(api: hass.Api, device_id: int) -> dict[str, str]:
    """The states of the entities Home Assistant made from device `device_id`'s configs, by domain."""
    found = {}
    for entity_id, state in api.states().items():
        domain = entity_id.split(".")[0]
        if domain in ("light", "binary_sensor", "sensor") and entity_id.split(".")[1].startswith("capteur"):
            found[entity_id] = state["state"]
    return found


@pytest.mark.timeout(REAL_HA_TIMEOUT)
def test_a_real_home_assistant_shows_a_board_and_switches_its_led(real_ha: RealHa) -> None:
    """The board's three entities appear in Home Assistant with their states; light.turn_on reaches the board as
    led/command in its session; the board leaving makes the entities unavailable."""
    print(f"Home Assistant {hass.HA_VERSION}: install {real_ha.install_seconds:.1f} s (0: cached), "
          f"start {real_ha.start_seconds:.1f} s")
    board = RawDevice(real_ha.settings.mqtt_port, "02:00:00:00:0D:01")
    try:
        ident = joined(real_ha.worker, board)
        board.reading(Topic.LED_STATUS, 0)
        board.reading(Topic.BUTTON_STATUS, 1)
        board.reading(Topic.PHOTORESISTOR_STATUS, 42)
        prefix = board.name
        expected = {f"light.{prefix}_led": "off", f"binary_sensor.{prefix}_bouton": "on",
                    f"sensor.{prefix}_lumiere": "42"}
        wait_for(lambda: entities(real_ha.api, ident) == expected, 30, interval=0.25,
                 what=f"the entities {expected} in Home Assistant")
        sensor = real_ha.api.states()[f"sensor.{prefix}_lumiere"]["attributes"]
        assert sensor["unit_of_measurement"] == "%" and sensor["state_class"] == "measurement"

        real_ha.api.call("POST", "/api/services/light/turn_on", {"entity_id": f"light.{prefix}_led"})
        wait_for(lambda: board.commands, 10, what="the LED command from Home Assistant")
        assert board.commands == [f"{board.name};{board.session};1".encode()]
        board.reading(Topic.LED_STATUS, 1)
        wait_for(lambda: entities(real_ha.api, ident)[f"light.{prefix}_led"] == "on", 10, interval=0.25,
                 what="the LED on in Home Assistant")

        board.leave()
        wait_for(lambda: set(entities(real_ha.api, ident).values()) == {"unavailable"}, 10, interval=0.25,
                 what="the entities unavailable")
    finally:
        board.close()


@pytest.mark.timeout(REAL_HA_TIMEOUT)
def test_a_real_home_assistant_reloading_its_mqtt_integration_gets_everything_again(real_ha: RealHa) -> None:
    """Nothing is retained: Home Assistant's MQTT integration reloaded (it connects again and says `online`) gets
    the configs and states again, and its commands still reach the board; a rename renames the device there."""
    board = RawDevice(real_ha.settings.mqtt_port, "02:00:00:00:0D:02")
    assert real_ha.worker.homeassistant is not None
    try:
        ident = joined(real_ha.worker, board)
        board.reading(Topic.PHOTORESISTOR_STATUS, 7)
        light = f"sensor.{board.name}_lumiere"
        wait_for(lambda: entities(real_ha.api, ident).get(light) == "7", 30, interval=0.25, what="the light level")
        wait_for(lambda: real_ha.worker.homeassistant is not None and real_ha.worker.homeassistant._timer is None, 10,
                 what="no republish pending")
        before = real_ha.worker.homeassistant.republished
        real_ha.api.call("POST", "/api/services/homeassistant/reload_config_entry", {"entry_id": real_ha.entry_id})
        wait_for(lambda: real_ha.worker.homeassistant is not None and real_ha.worker.homeassistant.republished > before,
                 30, what="the republish after Home Assistant's birth")
        wait_for(lambda: entities(real_ha.api, ident).get(light) == "7", 30, interval=0.25,
                 what="the light level after the reload")

        real_ha.api.call("POST", "/api/services/light/turn_off", {"entity_id": f"light.{board.name}_led"})
        wait_for(lambda: board.commands, 10, what="the LED command after the reload")
        assert board.commands == [f"{board.name};{board.session};0".encode()]

        real_ha.worker.writer.submit(Inbound(RenameRequest(ident, "salle B"), 0))
        wait_for(lambda: real_ha.api.states()[light]["attributes"]["friendly_name"] == "salle B Lumière", 10,
                 interval=0.25, what="the device renamed in Home Assistant")
    finally:
        board.close()


def test_home_assistants_own_broker_gets_the_boards_and_brings_its_commands(
        tmp_path: Path, settings: Settings, broker: Broker, engine: Engine) -> None:
    """SENSORHUB_HOMEASSISTANT_URL: a second connection publishes configs and states on Home Assistant's broker
    (here a plain Mosquitto with a login) and carries its birth and commands back; our broker has no
    `homeassistant` user then."""
    port = free_port()
    passwd = tmp_path / "ha-passwd"
    passwd.write_text("ha-user:ha-password-123\n")
    subprocess.run([find_mosquitto_passwd(), "-U", str(passwd)], check=True)
    conf = tmp_path / "ha-broker.conf"
    root = "user root\n" if os.geteuid() == 0 else ""  # as root, mosquitto would drop to a user not reaching tmp_path
    conf.write_text(f"{root}listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n")
    theirs = subprocess.Popen([find_mosquitto(), "-c", str(conf)], stderr=subprocess.DEVNULL)
    wait_for(lambda: port_open(port), 10, what="Home Assistant's broker")
    own = settings.replace(homeassistant_url=f"mqtt://127.0.0.1:{port}", homeassistant_user="ha-user",
                           homeassistant_password="ha-password-123")
    assert homeassistant_password(own) is None
    client = IngestClient(own)
    assert client.homeassistant is not None and client.ha_broker is not None
    client.homeassistant.delay = (0.0, 0.1)
    client.start(wait_ready=10)
    ha = HaClient(settings.replace(mqtt_port=port), login=("ha-user", "ha-password-123"))
    board = RawDevice(settings.mqtt_port, MAC)
    try:
        ha.subscribe("homeassistant/+/+/config", "sensorhub/ha/#")
        ident = joined(client, board)
        wait_for(lambda: ha.last(config_topic("light", MAC)), 10, what="the config on Home Assistant's broker")
        board.reading(Topic.PHOTORESISTOR_STATUS, 55)
        wait_for(lambda: ha.last(f"sensorhub/ha/{ident}/light") == b"55", 10, what="the state there")
        ha.clear()
        ha.publish("homeassistant/status", "online")
        wait_for(lambda: ha.last(config_topic("sensor", MAC)), 10, what="the configs again after the birth")
        ha.publish(f"sensorhub/ha/{ident}/led/set", "ON")
        wait_for(lambda: board.commands, 10, what="the command from Home Assistant's broker")
        assert board.commands == [f"{board.name};{board.session};1".encode()]
    finally:
        board.close()
        ha.close()
        client.stop()
        theirs.terminate()
        theirs.wait(10)


def test_a_broker_started_without_the_setting_keeps_the_ingest_client_connected(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The client has SENSORHUB_HOMEASSISTANT=1 but the broker does not (200-byte packets): the configs are not
    sent (the broker would disconnect the client for each), it says why once, and the boards are served as ever."""
    plain = settings_for(tmp_path)
    engine = make_engine(plain.database_url, create_dir=True)
    init_db(engine)
    engine.dispose()
    broker = Broker(plain)
    broker.start()
    client = IngestClient(plain.replace(homeassistant=True))
    assert client.homeassistant is not None
    client.homeassistant.delay = (0.0, 0.1)
    client.start(wait_ready=10)
    board = RawDevice(plain.mqtt_port, MAC)
    try:
        joined(client, board)
        board.reading(Topic.PHOTORESISTOR_STATUS, 12)
        wait_for(lambda: client.writer.stats.stored["light"] == 1, 10, what="the reading stored")
        wait_for(lambda: "the broker takes packets of at most 200 bytes" in caplog.text, 10, what="the error")
        assert caplog.text.count("the broker takes packets of at most") == 1
        assert client._connections == 1 and client.mqtt.is_connected()
    finally:
        board.close()
        client.stop()
        broker.stop()


def test_two_workers_share_home_assistants_commands_and_birth(ha_settings: Settings, broker: Broker,
                                                              engine: Engine) -> None:
    """Several workers: each command is taken by one of them (shared subscription), which sends it in the board's
    current session even when the other worker took the board's join; a birth is answered by one of them."""
    workers = [IngestClient(ha_settings.replace(worker=number)) for number in (1, 2)]
    for worker in workers:
        assert worker.homeassistant is not None
        worker.homeassistant.delay = (0.0, 0.1)
        worker.start(wait_ready=10)
    ha = HaClient(ha_settings)
    board = RawDevice(ha_settings.mqtt_port, MAC)
    try:
        ha.subscribe("homeassistant/+/+/config")
        board.join()
        ident = wait_for(lambda: next((w.writer.sessions.by_session_name[board.name].id for w in workers
                                       if board.name in w.writer.sessions.by_session_name), None), 10)
        wait_for(lambda: any(w.writer.sessions.by_id.get(ident) and w.writer.sessions.by_id[ident].online
                             for w in workers), 10, what="online")
        for number in range(6):
            ha.publish(f"sensorhub/ha/{ident}/led/set", "ON" if number % 2 else "OFF")
            wait_for(lambda count=number + 1: len(board.commands) == count, 10, what=f"command {number + 1}")
        assert board.commands == [f"{board.name};{board.session};{number % 2}".encode() for number in range(6)]
        ha.clear()
        before = [w.homeassistant.republished for w in workers if w.homeassistant is not None]
        ha.publish("homeassistant/status", "online")
        wait_for(lambda: ha.last(config_topic("light", MAC)), 10, what="the configs after the birth")
        after = [w.homeassistant.republished for w in workers if w.homeassistant is not None]
        assert sum(after) - sum(before) >= 1
    finally:
        board.close()
        ha.close()
        for worker in workers:
            worker.stop()
