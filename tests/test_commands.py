"""LED commands and renames through the broker's server-only topic (SENSORHUB_COMMANDS=broker): a web server that
shares no file with the ingest workers, against a real Mosquitto with the project's ACL, two workers on MQTT 5
shared subscriptions and a real database."""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from flask.testing import FlaskClient
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy import Engine, text

from sensorhub.broker import Broker
from sensorhub.commands import (
    COMMAND_EXPIRY,
    COMMAND_TOPIC,
    REPLY_PREFIX,
    LedRequest,
    Outcome,
    RenameRequest,
    format_command,
)
from sensorhub.config import Settings
from sensorhub.credentials import WEB_MQTT_SECRET, WEB_USER, web_mqtt_password
from sensorhub.errors import BrokerRelayError, ClientNotRunning
from sensorhub.ingest.service import IngestClient, subscriptions
from sensorhub.mqttclient import stop_loop
from sensorhub.protocol import Topic
from sensorhub.web import create_app
from sensorhub.web.relay import BrokerRelay
from tests.devices import RawDevice
from tests.stack import web_server, web_url
from tests.support import both_databases, finishes, free_port, log_in_as_server, wait_for
from tests.visitor import Browser

pytestmark = pytest.mark.integration


def mine(board: RawDevice) -> list[bytes]:
    """The LED commands `board` received that are meant for it."""
    return [command for command in board.commands if command.startswith(f"{board.name};".encode())]


def web_machine(settings: Settings, tmp_path: Path, secret: str | None = None) -> Settings:
    """The web server's settings on "another machine": its own state directory (holding a copy of the broker
    machine's mqtt-web.secret, or `secret`) and a pipe path nobody reads."""
    state = tmp_path / "web-machine"
    state.mkdir(mode=0o700)
    target = state / WEB_MQTT_SECRET
    if secret is None:
        shutil.copy(Path(settings.state_dir) / WEB_MQTT_SECRET, target)
    else:
        target.write_text(secret + "\n")
    target.chmod(0o600)
    return settings.replace(state_dir=str(state), fifo=str(state / "nobody-reads-this"), commands="broker")


def api_client(settings: Settings) -> FlaskClient:
    """A test client of the web app with its CSRF token in the default headers."""
    app = create_app(settings)
    app.config["TESTING"] = True
    client = app.test_client()
    page = client.get("/accueil").get_data(as_text=True)
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', page)
    assert match, "no csrf-token meta tag"
    client.environ_base["HTTP_X_CSRFTOKEN"] = match.group(1)
    return client


@pytest.fixture
def workers(settings: Settings, broker: Broker, engine: Engine) -> Iterator[list[IngestClient]]:
    """Two ingest workers sharing the readings and the commands ($share/sensorhub/…)."""
    started = [IngestClient(settings.replace(worker=number)) for number in (1, 2)]
    try:
        for worker in started:
            worker.start(wait_ready=10)
        yield started
    finally:
        for worker in started:
            worker.stop()


@dataclass
class WebSite:
    """The web server of `settings` (gunicorn in a subprocess)."""

    settings: Settings

    def url(self, path: str) -> str:
        """Absolute URL of `path` on it."""
        return web_url(self.settings, path)


@both_databases
def test_a_web_server_on_another_machine_switches_leds_and_renames_through_the_broker(
        settings: Settings, tmp_path: Path, workers: list[IngestClient], engine: Engine) -> None:
    """Eight boards join through two workers; the web server (gunicorn, two processes), with no pipe, switches
    each one's LED and renames one: whichever worker takes a command, the board gets it (a worker that did not
    see the join asks the database whether the board is online in that session)."""
    boards = [RawDevice(settings.mqtt_port, f"02:00:00:00:0C:{n:02X}") for n in range(8)]
    elsewhere = web_machine(settings, tmp_path)
    try:
        for board in boards:
            board.join()
        with web_server(elsewhere, workers=2):
            visitor = Browser(WebSite(elsewhere))
            for board in boards:
                ident = wait_for(lambda: device_online(engine, board.name), 10, what="online")  # noqa: B023
                status, body = visitor.post_json(f"/api/devices/{ident}/led", {"on": True})
                assert status == 202, body
            for board in boards:  # each board hears every LED command and keeps its own (the firmware's filter)
                wait_for(lambda: mine(board), 10, what=f"{board.name}'s LED command")  # noqa: B023
                assert mine(board) == [f"{board.name};{board.session};1".encode()]
            assert not elsewhere.fifo_path.exists()  # nothing went through a pipe
            status, body = visitor.post_json(f"/api/devices/{device_online(engine, boards[0].name)}/name",
                                             {"name": "salle B"})
            assert (status, body["name"]) == (200, "salle B"), body
        assert [worker.drops.snapshot() for worker in workers] == [{}, {}]
    finally:
        for board in boards:
            board.close()


def test_a_led_command_for_a_board_that_left_is_refused_by_the_worker(
        settings: Settings, tmp_path: Path, broker: Broker, engine: Engine) -> None:
    """The worker checks the board is online in the command's session, whoever sent the command."""
    worker = IngestClient(settings)
    worker.start(wait_ready=10)
    board = RawDevice(settings.mqtt_port, "02:00:00:00:0C:80")
    try:
        board.join()
        ident = wait_for(lambda: worker.writer.sessions.by_session_name.get(board.name), 10).id
        wait_for(lambda: worker.writer.sessions.by_id[ident].online, 10, what="online")
        relay = BrokerRelay(web_machine(settings, tmp_path))
        # A session the board is not in: the worker answers so.
        assert relay.send(LedRequest(ident, "1.000000", True)) is Outcome.OFFLINE
        assert worker.drops.snapshot().get("pipe-offline") == 1
        assert relay.send(LedRequest(ident, board.session, False)) is Outcome.SENT
        wait_for(lambda: board.commands, 10, what="the LED command")
        assert board.commands == [f"{board.name};{board.session};0".encode()]
        relay.close()
    finally:
        board.close()
        worker.stop()


def test_commands_are_refused_clearly_without_a_worker_a_password_or_a_broker(
        settings: Settings, tmp_path: Path, broker: Broker) -> None:
    """No worker ever subscribed: "client not running"; a web secret that is not the broker's: which file;
    no broker: where it was looked for. Each is a 503 from the API, naming the cause."""
    relay = BrokerRelay(web_machine(settings, tmp_path))
    with pytest.raises(ClientNotRunning, match=COMMAND_TOPIC):
        relay.send(RenameRequest(1, "salle B"))
    relay.close()
    wrong = tmp_path / "other"
    wrong.mkdir()
    relay = BrokerRelay(web_machine(settings, wrong, secret="not-the-broker-machine-s"))
    with pytest.raises(BrokerRelayError, match=f"refused the web server's password.*{WEB_MQTT_SECRET}"):
        relay.send(RenameRequest(1, "salle B"))
    relay.close()
    nowhere = settings.replace(mqtt_port=free_port())
    (tmp_path / "none").mkdir()
    relay = BrokerRelay(web_machine(nowhere, tmp_path / "none"))
    with pytest.raises(BrokerRelayError, match=f"cannot reach the broker at 127.0.0.1:{nowhere.mqtt_port}"):
        finishes(lambda: relay.send(LedRequest(1, "1.000000", True)), what="the relay")  # refused: known at once
    relay.close()


def publisher(settings: Settings, login: tuple[str, str] | None) -> tuple[mqtt.Client, dict[int, Any]]:
    """A connected MQTT 5 client (anonymous, or `login`) recording each PUBACK's reason code."""
    acks: dict[int, Any] = {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if login is not None:
        client.username_pw_set(*login)
    client.on_publish = lambda _c, _u, mid, reason, _p: acks.__setitem__(mid, reason)
    client.connect("127.0.0.1", settings.mqtt_port)
    client.loop_start()
    wait_for(client.is_connected, 5, what="connected")
    return client, acks


def test_only_the_web_server_may_publish_commands_and_it_may_publish_nothing_else(
        settings: Settings, broker: Broker, engine: Engine) -> None:
    """An anonymous client (a board, or anyone on the LAN) cannot inject a command; the web server's broker user
    cannot reach a board directly, nor read what the boards send."""
    worker = IngestClient(settings)
    worker.start(wait_ready=10)
    board = RawDevice(settings.mqtt_port, "02:00:00:00:0C:81")
    anonymous, anonymous_acks = publisher(settings, None)
    web, web_acks = publisher(settings, (WEB_USER, web_mqtt_password(settings)))
    overheard: list[str] = []
    web.on_message = lambda _c, _u, message: overheard.append(message.topic)
    try:
        board.join()
        ident = wait_for(lambda: worker.writer.sessions.by_session_name.get(board.name), 10).id
        wait_for(lambda: worker.writer.sessions.by_id[ident].online, 10, what="online")
        web.subscribe([(str(topic), 1) for topic in Topic])
        forged = format_command(LedRequest(ident, board.session, True))
        info = anonymous.publish(COMMAND_TOPIC, forged, qos=1)
        direct = web.publish(Topic.LED_COMMAND, f"{board.name};{board.session};1", qos=1)
        wait_for(lambda: info.mid in anonymous_acks and direct.mid in web_acks, 5, what="both PUBACKs")
        assert anonymous_acks[info.mid].is_failure and web_acks[direct.mid].is_failure  # "Not authorized"
        board.reading(Topic.PHOTORESISTOR_STATUS, 512)
        # The worker's own LED command after the forged one: once it arrived, the forged one would have too.
        mine = web.publish(COMMAND_TOPIC, format_command(LedRequest(ident, board.session, False)), qos=1)
        mine.wait_for_publish(5)
        wait_for(lambda: board.commands, 10, what="the web server's own command")
        assert board.commands == [f"{board.name};{board.session};0".encode()]
        assert overheard == []
    finally:
        for client in (anonymous, web):
            client.disconnect()
            stop_loop(client)
        board.close()
        worker.stop()


def test_the_pipe_moves_to_another_worker_when_its_holder_stops(
        settings: Settings, broker: Broker, engine: Engine) -> None:
    """Two workers on one machine: the web server's default path (the pipe) keeps working when the worker
    holding it stops, and the commands still reach a board whose join the other worker took."""
    first, second = (IngestClient(settings.replace(worker=number)) for number in (1, 2))
    first.start(wait_ready=10)
    second.start(wait_ready=10)
    board = RawDevice(settings.mqtt_port, "02:00:00:00:0C:82")
    stopped = False
    try:
        assert first.pipe.holding.is_set() and not second.pipe.holding.is_set()
        board.join()
        ident = wait_for(lambda: device_online(engine, board.name), 10, what="online")
        client = api_client(settings)
        assert client.post(f"/api/devices/{ident}/led", json={"on": True}).status_code == 202
        wait_for(lambda: board.commands, 10, what="the first LED command")
        first.stop()
        stopped = True
        wait_for(lambda: second.pipe.holding.is_set(), 5, what="the second worker taking the pipe over")
        response = client.post(f"/api/devices/{ident}/led", json={"on": False})
        assert response.status_code == 202, response.get_json()
        wait_for(lambda: len(board.commands) == 2, 10, what="the second LED command")
        assert board.commands[1] == f"{board.name};{board.session};0".encode()
    finally:
        board.close()
        if not stopped:
            first.stop()
        second.stop()


def device_online(engine: Engine, name: str) -> int | None:
    """The id of the device whose session name is `name` once it is online, else None."""
    with engine.connect() as conn:
        row = conn.execute(text("SELECT id, online FROM device WHERE session_name = :n"), {"n": name}).one_or_none()
    return int(row[0]) if row is not None and row[1] else None


def test_a_command_travels_as_the_documented_line_with_its_expiry(settings: Settings, broker: Broker) -> None:
    """What the ingest client's user receives on the command topic: the pipe's JSON line, QoS 1, a message
    expiry of 1 s (a command nobody took by then is dropped by the broker: the web server stops waiting after
    3 s), and where to answer: the web server process's reply topic, and Correlation Data that the answer
    carries back with the outcome."""
    received: list[mqtt.MQTTMessage] = []
    subscribed = threading.Event()
    reader = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    log_in_as_server(reader, settings)

    def answer(_client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        received.append(message)
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.CorrelationData = message.properties.CorrelationData  # type: ignore[union-attr]
        outcome = Outcome.SENT if b'"led"' in message.payload else Outcome.TAKEN
        reader.publish(message.properties.ResponseTopic, outcome.value, 1, properties=properties)  # type: ignore[union-attr]

    reader.on_message = answer
    reader.on_subscribe = lambda *_args: subscribed.set()
    reader.connect("127.0.0.1", settings.mqtt_port)
    reader.loop_start()
    try:
        wait_for(reader.is_connected, 5)
        reader.subscribe(COMMAND_TOPIC, 1)
        assert subscribed.wait(5)
        relay = BrokerRelay(settings.replace(commands="broker"))
        assert relay.send(LedRequest(5, "1.000000", True)) is Outcome.SENT
        assert relay.send(RenameRequest(5, "salle C")) is Outcome.TAKEN
        assert [message.payload for message in received] == [
            b'{"cmd":"led","device":5,"session":"1.000000","on":true}', b'{"cmd":"rename","device":5,"name":"salle C"}']
        assert [message.qos for message in received] == [1, 1]
        properties = [message.properties for message in received]
        assert [p.MessageExpiryInterval for p in properties] == [COMMAND_EXPIRY] * 2  # type: ignore[union-attr]
        topics = {p.ResponseTopic for p in properties}  # type: ignore[union-attr]
        assert len(topics) == 1 and re.fullmatch(r"sensorhub/replies/[0-9a-f]{16}", topics.pop())
        assert len({p.CorrelationData for p in properties}) == 2  # type: ignore[union-attr]
        relay.close()
    finally:
        reader.disconnect()
        stop_loop(reader)


# -- the workers' share group is theirs alone ----------------------------------------------------------------------


def share_intruders(settings: Settings, count: int) -> tuple[list[mqtt.Client], list[str]]:
    """`count` anonymous MQTT 5 clients, each subscribing to every shared filter the workers use (the five device
    channels and the command topic, `$share/sensorhub/…`), one SUBSCRIBE a filter (under max_packet_size); with
    the SUBACKs' reason codes."""
    filters = [topic for topic, _qos in subscriptions(1)]
    clients: list[mqtt.Client] = []
    reasons: list[str] = []
    for _ in range(count):
        client, _acks = publisher(settings, None)
        answered: dict[int, list[Any]] = {}
        client.on_subscribe = lambda _c, _u, mid, codes, _p, answered=answered: answered.__setitem__(mid, codes)
        mids = [client.subscribe(topic, options=SubscribeOptions(qos=1))[1] for topic in filters]
        wait_for(lambda answered=answered, mids=mids: all(mid in answered for mid in mids), 5, what="the SUBACKs")
        reasons += [str(code) for mid in mids for code in answered[mid]]
        clients.append(client)
    return clients, reasons


def settled(value: Callable[[], int], target: int, timeout: float = 30, idle: float = 2) -> int:
    """`value()` once it reaches `target`, or once it has not changed for `idle` seconds (what was lost stays lost)."""
    deadline = time.monotonic() + timeout
    last, since = value(), time.monotonic()
    while last != target and time.monotonic() < deadline and time.monotonic() - since < idle:
        time.sleep(0.05)
        now = value()
        if now != last:
            last, since = now, time.monotonic()
    return last


def test_anonymous_clients_cannot_take_a_share_of_the_workers_readings_joins_or_commands(
        settings: Settings, tmp_path: Path, workers: list[IngestClient], engine: Engine) -> None:
    """10 anonymous clients subscribe to `$share/sensorhub/<channel>` for every channel and the command topic: the
    broker refuses them (dynamic security plugin), so with two workers in the group every join of 10 boards is
    answered, 10,000 QoS 1 readings are stored (0 lost), and every LED command the API answers 202 reaches its
    board. (Mosquitto 2.0.11's acl_file accepted those SUBSCRIBEs and dropped the intruders' turns.)"""
    intruders, reasons = share_intruders(settings, 10)
    boards = [RawDevice(settings.mqtt_port, f"02:00:00:00:0D:{n:02X}") for n in range(10)]
    try:
        for board in boards:  # the MAC joins, all at once, as boards powering up together
            board.client = board._connect()
            board._subscribe(Topic.NAME_ASSIGN, 2)
            board.publish(Topic.JOIN, board.mac, qos=2)
        answered = settled(lambda: sum(not board.assignments.empty() for board in boards), len(boards))
        named = [board for board in boards if not board.assignments.empty()]
        for board in named:
            board.name, board.session = board.assignments.get()
            board.start_session()
        online = settled(lambda: sum(device_online(engine, board.name) is not None for board in named), len(named))
        per_board = 10_000 // max(len(named), 1)  # 10,000 readings from the boards that got a name
        sent = [board.reading(Topic.PHOTORESISTOR_STATUS, n % 101, qos=1) for n in range(per_board) for board in named]
        for info in sent:
            info.wait_for_publish(30)
        stored = settled(lambda: light_readings(engine), len(sent))
        client = api_client(web_machine(settings, tmp_path))
        accepted = []
        for board in named:
            ident = device_online(engine, board.name)
            if ident is not None and client.post(f"/api/devices/{ident}/led", json={"on": True}).status_code == 202:
                accepted.append(board)
        commanded = settled(lambda: sum(bool(mine(board)) for board in accepted), len(accepted))
        print(f"intruders' SUBACKs: {sorted(set(reasons))}; joins answered {answered}/{len(boards)}, online "
              f"{online}; readings stored {stored:,}/{len(sent):,}; LED commands 202 {len(accepted)}, "
              f"reached a board {commanded}")
        assert (answered, online) == (len(boards), len(boards))
        assert stored == len(sent) == 10_000
        assert commanded == len(accepted) == len(boards)
        assert all(mine(board) == [f"{board.name};{board.session};1".encode()] for board in boards)
        assert set(reasons) == {"Not authorized"}, reasons  # MQTT 5 reason code 0x87
        assert [worker.drops.snapshot() for worker in workers] == [{}, {}]
    finally:
        for board in boards:
            board.close()
        for intruder in intruders:
            intruder.disconnect()
            stop_loop(intruder)


def light_readings(engine: Engine) -> int:
    """How many light readings the database holds."""
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM light_reading")).scalar_one())


def test_the_api_says_what_the_worker_did_with_a_led_command(
        settings: Settings, tmp_path: Path, broker: Broker, engine: Engine) -> None:
    """Through the broker, the web server (gunicorn) answers with the worker's outcome: 202 "sent" once the worker
    published the board's `led/command`; 409 when the database said the board is online but the worker finds it
    offline in that session (it left after the web server read its row: played here by writing the row back
    to online), and then nothing is published."""
    worker = IngestClient(settings)
    worker.start(wait_ready=10)
    gone, staying = (RawDevice(settings.mqtt_port, f"02:00:00:00:0D:0{n}") for n in (1, 2))
    elsewhere = web_machine(settings, tmp_path)
    try:
        gone.join()
        staying.join()
        gone_id = wait_for(lambda: device_online(engine, gone.name), 10, what="online")
        staying_id = wait_for(lambda: device_online(engine, staying.name), 10, what="online")
        gone.leave()
        wait_for(lambda: device_online(engine, gone.name) is None, 10, what="offline")
        with engine.begin() as conn:  # what the web server reads before the leave is committed
            conn.execute(text("UPDATE device SET online = TRUE WHERE id = :id"), {"id": gone_id})
        with web_server(elsewhere, workers=1):
            visitor = Browser(WebSite(elsewhere))
            status, body = visitor.post_json(f"/api/devices/{gone_id}/led", {"on": True})
            assert (status, body) == (409, {"error": f"l'appareil « {gone.name} » n'est plus en ligne pour le client "
                                                     f"d'ingestion (parti, ou revenu dans une nouvelle session) : "
                                                     f"commande non envoyée"})
            status, body = visitor.post_json(f"/api/devices/{staying_id}/led", {"on": True})
            assert (status, body) == (202, {"status": "sent"})
        # The board hears every led/command: the only one is its own, so none went out for the board that left.
        wait_for(lambda: staying.commands, 5, what="the LED command")
        assert staying.commands == [f"{staying.name};{staying.session};1".encode()]
        assert worker.drops.snapshot() == {"pipe-offline": 1}
    finally:
        gone.close()
        staying.close()
        worker.stop()


def published(worker: IngestClient) -> float:
    """How many LED commands `worker` has published to boards since it started."""
    value = worker.metrics.registry.get_sample_value("sensorhub_led_commands_total", {"outcome": "published"})
    return value or 0.0


def test_a_command_no_worker_answers_fails_and_is_never_carried_out(
        settings: Settings, tmp_path: Path, workers: list[IngestClient], engine: Engine) -> None:
    """Every worker stopped, their sessions kept by the broker: the broker takes the command (it queues it for
    them), and the API answers 503 once it has waited 3 s for an answer. Workers coming back afterwards do not
    switch the LED: the command expired at the broker first."""
    board = RawDevice(settings.mqtt_port, "02:00:00:00:0D:10")
    elsewhere = web_machine(settings, tmp_path)
    try:
        board.join()
        ident = wait_for(lambda: device_online(engine, board.name), 10, what="online")
        with web_server(elsewhere, workers=1):
            visitor = Browser(WebSite(elsewhere))
            assert visitor.post_json(f"/api/devices/{ident}/led", {"on": True})[0] == 202
            wait_for(lambda: board.commands, 5, what="the first LED command")
            for worker in workers:
                worker.stop()
            started = time.monotonic()
            status, body = visitor.post_json(f"/api/devices/{ident}/led", {"on": False})
            waited = time.monotonic() - started
            assert (status, body) == (503, {"error": "aucun client d'ingestion n'a pris la commande dans les 3 s "
                                                     "(tous arrêtés, ou débordés) : elle est abandonnée et ne sera "
                                                     "pas exécutée"})
            assert 3 <= waited < 4.5
            # Back, with the sessions the broker kept (the fixture stops these).
            workers[:] = [IngestClient(settings.replace(worker=number)) for number in (1, 2)]
            for worker in workers:
                worker.start(wait_ready=10)
            sent = 0
            # Sentinels: "on" commands until each worker has carried one out since it came back. The broker queued
            # the "off" in one worker's session and delivers that session in order: had it not expired there, it
            # would have gone to the board (over that worker's connection) before that worker's sentinel.
            while sent < 10 and not all(published(worker) for worker in workers):
                assert visitor.post_json(f"/api/devices/{ident}/led", {"on": True}) == (202, {"status": "sent"})
                sent += 1
                wait_for(lambda sent=sent: sum(published(worker) for worker in workers) == sent, 5,
                         what="the command counted by its worker")
            assert all(published(worker) for worker in workers), "a worker never took a command: no sentinel"
        wait_for(lambda: len(board.commands) == 1 + sent, 5, what="the LED commands after the restart")
        assert board.commands == [f"{board.name};{board.session};1".encode()] * (1 + sent)  # never the "off"
    finally:
        board.close()


def test_only_the_workers_answer_and_only_under_the_reply_topics(
        settings: Settings, tmp_path: Path, broker: Broker, engine: Engine) -> None:
    """The answers travel where only the web server's user may read them, and only the workers' user may write
    them: an anonymous client overhears none, the web server's user cannot forge one. A command asking for its
    answer anywhere else (`led/command`, where boards listen) is dropped, not carried out. The longest command
    and its request properties stay under the broker's max_packet_size."""
    worker = IngestClient(settings)
    worker.start(wait_ready=10)
    board = RawDevice(settings.mqtt_port, "02:00:00:00:0D:20")
    anonymous, _anonymous_acks = publisher(settings, None)
    web, web_acks = publisher(settings, (WEB_USER, web_mqtt_password(settings)))
    overheard: list[str] = []
    anonymous.on_message = lambda _c, _u, message: overheard.append(message.topic)
    relay = BrokerRelay(web_machine(settings, tmp_path))
    try:
        board.join()
        ident = wait_for(lambda: worker.writer.sessions.by_session_name.get(board.name), 10).id
        wait_for(lambda: worker.writer.sessions.by_id[ident].online, 10, what="online")
        anonymous.subscribe(f"{REPLY_PREFIX}#", 1)
        forged = web.publish(f"{REPLY_PREFIX}0123456789abcdef", Outcome.SENT.value, qos=1)
        wait_for(lambda: forged.mid in web_acks, 5, what="the PUBACK")
        assert web_acks[forged.mid].is_failure  # "Not authorized"
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ResponseTopic = Topic.LED_COMMAND
        properties.CorrelationData = b"1234"
        web.publish(COMMAND_TOPIC, format_command(LedRequest(ident, board.session, False)), qos=1,
                    properties=properties).wait_for_publish(5)
        wait_for(lambda: worker.drops.snapshot().get("reply-topic"), 5, what="the command dropped")
        assert relay.send(LedRequest(ident, board.session, True)) is Outcome.SENT
        assert relay.send(RenameRequest(2**63 - 1, "\\" * 29)) is Outcome.UNKNOWN  # 113 bytes of JSON
        wait_for(lambda: board.commands, 5, what="the LED command")
        assert board.commands == [f"{board.name};{board.session};1".encode()]
        assert overheard == []
    finally:
        relay.close()
        for client in (anonymous, web):
            client.disconnect()
            stop_loop(client)
        board.close()
        worker.stop()
