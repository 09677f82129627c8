"""Alert notifications against real receivers: an HTTP server, an SMTP server (aiosmtpd, STARTTLS and AUTH), the
broker; the outbox on real SQLite files (and PostgreSQL for the two workers)."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine, text

from bench.ports import free_port
from sensorhub.alerting import Metric, Rule, Severity
from sensorhub.broker import Broker
from sensorhub.config import Settings, configured
from sensorhub.db import alerts as db
from sensorhub.errors import ConfigError
from sensorhub.ingest.service import IngestClient
from sensorhub.mqttclient import stop_loop
from sensorhub.notify.channel import SAMPLE, DeliveryError
from sensorhub.notify.dispatcher import Dispatcher, backoff
from sensorhub.notify.email import Email
from sensorhub.notify.metrics import NotifyCollector
from sensorhub.notify.mqtt import ALERTS_PREFIX, MqttChannel, alert_topic, compact, payload_room
from sensorhub.notify.webhook import ID_HEADER, Webhook
from sensorhub.protocol import Topic
from sensorhub.timestamps import format_micros
from sensorhub.tls import make_self_signed
from tests.devices import RawDevice
from tests.factories import add_device
from tests.support import both_databases, finishes, wait_for

pytestmark = pytest.mark.integration


# -- outbox rows ---------------------------------------------------------------------------------------------------


def fire_alerts(engine: Engine, count: int, channels: tuple[str, ...], *, device: str = "capteur01",
                prefix: str = "dark") -> list[str]:
    """`count` firing alerts (one rule each) on one device, as the writer opens them; their notifications' ids."""
    now = time.time_ns() // 1000
    with engine.connect() as conn:
        found = conn.execute(text("SELECT id FROM device WHERE name = :name"), {"name": device}).scalar()
    device_id = int(found) if found is not None else add_device(engine, device)
    ids: list[str] = []
    with engine.connect() as conn:
        start = int(conn.execute(text("SELECT count(*) FROM alert_rule")).scalar() or 0)
        for number in range(start, start + count):
            rule = Rule(id=0, name=f'{prefix} "{number}"', metric=Metric.LIGHT, operator="<", trigger=20.0,
                        clear=30.0, severity=Severity.CRITICAL)
            rule_id = db.add_rule(conn, rule, now)
            opened = db.open_alert(conn, Rule(**{**_fields(rule), "id": rule_id}), device_id, now, 12.0, channels)
            assert opened is not None
            ids += [str(row[0]) for row in conn.execute(text(
                "SELECT id FROM alert_outbox WHERE alert_id = :alert ORDER BY channel"), {"alert": opened[0]})]
        conn.commit()
    return ids


def _fields(rule: Rule) -> dict[str, Any]:
    return {name: getattr(rule, name) for name in rule.__slots__}


def outbox_rows(engine: Engine) -> dict[str, tuple[str | None, int, str | None]]:
    """Notification id -> (delivered_at, attempts, last_error)."""
    with engine.connect() as conn:
        return {str(r[0]): (r[1], int(r[2]), r[3]) for r in conn.execute(text(
            "SELECT id, delivered_at, attempts, last_error FROM alert_outbox"))}


# -- a real HTTP receiver ------------------------------------------------------------------------------------------


class Receiver:
    """A ThreadingHTTPServer on `port` keeping every POST: (headers, body). `hold` makes it wait before answering."""

    def __init__(self, port: int, status: int = 200) -> None:
        self.port = port
        self.status = status
        self.requests: list[tuple[dict[str, str], bytes]] = []
        #: The ids of the requests received, answered or not yet.
        self.arrived: list[str] = []
        self.hold = threading.Event()
        self.hold.set()
        #: Hold only the first request (the others are answered at once).
        self.hold_first_only = False
        self.server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Where the webhook posts."""
        return f"http://127.0.0.1:{self.port}/hook?token=abc"

    def ids(self) -> list[str]:
        """The notification ids received, in order."""
        return [headers[ID_HEADER] for headers, _body in self.requests]

    def start(self) -> Receiver:
        """Listen (again) on the port."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.arrived.append(self.headers.get(ID_HEADER, ""))
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if len(receiver.arrived) == 1 or not receiver.hold_first_only:
                    receiver.hold.wait(60)
                receiver.requests.append(({key: value for key, value in self.headers.items()}, body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening (connections are then refused)."""
        self.hold.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver answering 200, listening."""
    running = Receiver(free_port()).start()
    yield running
    running.stop()


def webhook_settings(settings: Settings, url: str, **changes: Any) -> Settings:
    """`settings` with the webhook on `url` and no other channel."""
    return settings.replace(notify_webhook_url=url, notify_mqtt=False, **changes)


@pytest.fixture
def dispatchers() -> Iterator[list[Dispatcher]]:
    """Dispatchers a test starts, stopped after it."""
    started: list[Dispatcher] = []
    yield started
    for dispatcher in started:
        dispatcher.stop()


def run(dispatchers: list[Dispatcher], settings: Settings, channels: dict[str, Any], **options: Any) -> Dispatcher:
    """A dispatcher on its own engine, started."""
    dispatcher = Dispatcher(settings.database_url, channels, **options)
    dispatchers.append(dispatcher)
    dispatcher.start()
    return dispatcher


# -- settings ------------------------------------------------------------------------------------------------------


def test_bad_notification_settings_stop_start_up_in_one_line() -> None:
    assert configured(Settings.load(environ={})) == ("mqtt",)
    for environ, words in [
        ({"SENSORHUB_NOTIFY_WEBHOOK_URL": "ftp://example.org/x"}, "http:// or https://"),
        ({"SENSORHUB_NOTIFY_WEBHOOK_TEMPLATE": "$nope"}, "unknown placeholder $nope"),
        ({"SENSORHUB_NOTIFY_WEBHOOK_HEADERS": "Title $title"}, "Name: value"),
        ({"SENSORHUB_NOTIFY_SMTP_HOST": "mail.example.org", "SENSORHUB_NOTIFY_SMTP_FROM": "a@b.c"},
         "SENSORHUB_NOTIFY_SMTP_TO must be set"),
        ({"SENSORHUB_NOTIFY_SMTP_HOST": "mail", "SENSORHUB_NOTIFY_SMTP_FROM": "a@b.c", "SENSORHUB_NOTIFY_SMTP_TO":
          "x@y.z", "SENSORHUB_NOTIFY_SMTP_SECURITY": "none", "SENSORHUB_NOTIFY_SMTP_USER": "u",
          "SENSORHUB_NOTIFY_SMTP_PASSWORD": "secret"}, "in clear"),
        ({"SENSORHUB_NOTIFY_SMTP_TO": "not-an-address"}, "not an e-mail address"),
        ({"SENSORHUB_NOTIFY_SMTP_SECURITY": "ssl"}, "starttls, tls or none"),
    ]:
        with pytest.raises(ConfigError) as caught:
            Settings.load(environ=environ)
        assert words in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ConfigError) as hidden:  # a webhook URL may hold a token: never echoed
        Settings.load(environ={"SENSORHUB_NOTIFY_WEBHOOK_URL": "gopher://secret"})
    assert "secret" not in str(hidden.value)
    both = Settings.load(environ={"SENSORHUB_NOTIFY_WEBHOOK_URL": "https://ntfy.sh/t", "SENSORHUB_NOTIFY_SMTP_HOST":
                                  "mail", "SENSORHUB_NOTIFY_SMTP_FROM": "a@b.c", "SENSORHUB_NOTIFY_SMTP_TO":
                                  "x@y.z, w@y.z", "SENSORHUB_NOTIFY_MQTT": "0"})
    assert configured(both) == ("webhook", "email") and both.smtp_port == 587 and both.notify_smtp_to == "x@y.z,w@y.z"
    # A JSON content type wants a template that gives JSON: said at start, not at the first alert; so is a CA file
    # that cannot be read.
    with pytest.raises(ConfigError, match="does not give JSON"):
        Webhook(both.replace(notify_webhook_template='{"text": $text}'))
    for channel in (Webhook, Email):
        with pytest.raises(ConfigError, match=r"SENSORHUB_NOTIFY_CA_FILE='/nonexistent\.pem' cannot be used"):
            channel(both.replace(notify_ca_file="/nonexistent.pem"))


def test_templates_escape_for_json_and_leave_text_alone() -> None:
    settings = Settings().replace(notify_webhook_url="https://ntfy.sh/room",
                                  notify_webhook_template='{"text": "$text", "all": $json, "p": $priority}',
                                  notify_webhook_headers="Title: $title\nTags: warning,$event; X-Id: $id")
    hook = Webhook(settings)
    body = json.loads(hook.body(SAMPLE))
    assert body == {"text": SAMPLE["text"], "all": SAMPLE, "p": 4}
    request = hook.request(SAMPLE)
    assert request.get_header("Title") == 'dark "room" on capteur01' and request.get_header("Tags") == "warning,firing"
    assert request.get_header(ID_HEADER.capitalize()) == SAMPLE["id"] == request.get_header("X-id")
    plain = Webhook(settings.replace(notify_webhook_template="$text ($$5)", notify_webhook_content_type="text/plain"))
    assert plain.body(SAMPLE) == SAMPLE["text"] + " ($5)"
    # A value cannot add a header: line breaks are flattened.
    forged = {**SAMPLE, "rule": {**SAMPLE["rule"], "name": "x\r\nX-Evil: 1"}}
    assert "\n" not in (hook.request(forged).get_header("Title") or "")


def test_backoff_doubles_from_one_second_up_to_the_ceiling() -> None:
    assert [backoff(n, 1.0, 60.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff(10_000, 1.0, 5.0) == 5.0


def test_the_mqtt_payload_always_fits_the_broker_s_packet_limit() -> None:
    long = {**SAMPLE, "id": "f" * 36, "event": "reminder", "value": 123456.789,
            "rule": {**SAMPLE["rule"], "name": "r" * 64}, "device": {**SAMPLE["device"], "name": "n/+#" + "d" * 25}}
    topic = alert_topic(long["device"]["name"])
    assert topic == ALERTS_PREFIX + "n___" + "d" * 25
    body = compact(long, topic)
    assert len(body) <= payload_room(topic)
    decoded = json.loads(body)
    assert decoded["id"] == "f" * 36 and decoded["event"] == "reminder" and decoded["rule"].startswith("rrr")
    assert json.loads(compact(SAMPLE, alert_topic("capteur01")))["rule"] == SAMPLE["rule"]["name"]  # whole if it fits


# -- the webhook ---------------------------------------------------------------------------------------------------


def test_webhook_posts_the_rendered_template_with_the_id_header(settings: Settings, engine: Engine,
                                                                receiver: Receiver,
                                                                dispatchers: list[Dispatcher]) -> None:
    """Slack's shape (`{"text": …}`) with the other placeholders, JSON-escaped; a 2xx answer marks it delivered."""
    hooked = webhook_settings(settings, receiver.url, notify_webhook_template=(
        '{"text": "$text", "title": "$title", "severity": "$severity", "device": "$device", "rule": "$rule", '
        '"event": "$event", "id": "$id", "value": "$value"}'), notify_webhook_headers="Priority: $priority")
    (notification,) = fire_alerts(engine, 1, ("webhook",))
    dispatcher = run(dispatchers, hooked, {"webhook": Webhook(hooked)})
    wait_for(lambda: receiver.requests, 10, what="the webhook")
    ((headers, body),) = receiver.requests
    assert headers[ID_HEADER] == notification and headers["Content-Type"] == "application/json"
    assert headers["Priority"] == "5"
    assert json.loads(body) == {"text": '[critical] dark "0" firing on capteur01 (light 12)',
                                "title": 'dark "0" on capteur01', "severity": "critical", "device": "capteur01",
                                "rule": 'dark "0"', "event": "firing", "id": notification, "value": "12"}
    wait_for(lambda: outbox_rows(engine)[notification][0], 5, what="marked delivered")
    assert outbox_rows(engine)[notification][1:] == (1, None)
    assert dispatcher.stats["webhook"].delivered == 1 and dispatcher.stats["webhook"].failed == 0


def test_only_a_2xx_answer_is_delivery(settings: Settings) -> None:
    """An error status or a redirect (which would turn the POST into a GET) is a failure, said in one line."""
    for status, words in ((503, "HTTP 503"), (302, "HTTP 302"), (404, "HTTP 404")):
        answering = Receiver(free_port(), status=status).start()
        try:
            with pytest.raises(DeliveryError, match=words):
                Webhook(webhook_settings(settings, answering.url)).send(SAMPLE)
        finally:
            answering.stop()
        assert answering.ids() == [SAMPLE["id"]]  # sent once, never followed elsewhere
    with pytest.raises(DeliveryError, match="cannot reach the webhook"):
        Webhook(webhook_settings(settings, f"http://127.0.0.1:{free_port()}/")).send(SAMPLE)


# -- e-mail --------------------------------------------------------------------------------------------------------


class Mailbox:
    """aiosmtpd's handler: every message accepted, with its envelope."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.logins: list[tuple[bytes, bytes]] = []

    async def handle_DATA(self, _server: Any, _session: Session, envelope: Envelope) -> str:
        """Keep the message."""
        content = envelope.original_content or b""
        self.messages.append((str(envelope.mail_from), list(envelope.rcpt_tos), bytes(content)))
        return "250 OK"

    def authenticate(self, _server: Any, _session: Session, _envelope: Envelope, mechanism: str,
                     data: Any) -> AuthResult:
        """Only `alerts` with its password."""
        assert isinstance(data, LoginPassword)
        self.logins.append((data.login, data.password))
        return AuthResult(success=data.login == b"alerts" and data.password == b"s3cret-pass")


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, as `sensorhub tls` makes them."""
    cert, key = tmp_path / "smtp.pem", tmp_path / "smtp.key"
    make_self_signed(cert, key, ["localhost"], ["127.0.0.1"])
    return cert, key


def smtp_server(mailbox: Mailbox, certificate: tuple[Path, Path] | None) -> Controller:
    """aiosmtpd on a free port: STARTTLS required and AUTH required with a certificate, plain without."""
    port = free_port()
    if certificate is None:
        controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    else:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*certificate)
        controller = Controller(mailbox, hostname="127.0.0.1", port=port, tls_context=context,
                                require_starttls=True, auth_required=True, authenticator=mailbox.authenticate)
    controller.start()
    return controller


def mail_settings(settings: Settings, port: int, **changes: Any) -> Settings:
    """`settings` sending mail to 127.0.0.1:`port`, no other channel."""
    values: dict[str, Any] = {"notify_smtp_host": "127.0.0.1", "notify_smtp_port": port, "notify_mqtt": False,
                              "notify_smtp_from": "sensorhub@example.org",
                              "notify_smtp_to": "ops@example.org,oncall@example.org"}
    return settings.replace(**{**values, **changes})


def test_email_goes_through_starttls_and_auth(settings: Settings, engine: Engine, certificate: tuple[Path, Path],
                                              dispatchers: list[Dispatcher]) -> None:
    mailbox = Mailbox()
    server = smtp_server(mailbox, certificate)
    try:
        mailing = mail_settings(settings, server.port, notify_smtp_user="alerts", notify_smtp_password="s3cret-pass",
                                notify_ca_file=str(certificate[0]))
        (notification,) = fire_alerts(engine, 1, ("email",))
        run(dispatchers, mailing, {"email": Email(mailing)})
        wait_for(lambda: mailbox.messages, 15, what="the e-mail")
    finally:
        server.stop()
    ((sender, recipients, content),) = mailbox.messages
    assert sender == "sensorhub@example.org" and recipients == ["ops@example.org", "oncall@example.org"]
    assert mailbox.logins == [(b"alerts", b"s3cret-pass")]
    message = message_from_bytes(content)
    assert message["Subject"] == '[critical] dark "0" firing on capteur01 (light 12)'
    assert message["Message-ID"] == f"<{notification}@sensorhub>"
    assert message["X-Sensorhub-Notification"] == notification
    assert "Device: capteur01" in message.get_payload()
    wait_for(lambda: outbox_rows(engine)[notification][0], 5, what="marked delivered")


def test_email_is_never_sent_in_clear_when_starttls_is_missing(settings: Settings, engine: Engine,
                                                               certificate: tuple[Path, Path]) -> None:
    mailbox = Mailbox()
    server = smtp_server(mailbox, None)  # offers no STARTTLS
    try:
        mailing = mail_settings(settings, server.port, notify_ca_file=str(certificate[0]))
        with pytest.raises(DeliveryError, match="does not offer STARTTLS"):
            Email(mailing).send(SAMPLE)
        with pytest.raises(DeliveryError, match="SMTP"):  # nothing listens: a failure, not an exception escaping
            Email(mail_settings(settings, free_port())).send(SAMPLE)
    finally:
        server.stop()
    assert mailbox.messages == []


# -- MQTT ----------------------------------------------------------------------------------------------------------


def subscriber(port: int, topic: str) -> tuple[mqtt.Client, list[mqtt.MQTTMessage]]:
    """An anonymous MQTT 5 client on the device port subscribed to `topic`, keeping what it receives."""
    received: list[mqtt.MQTTMessage] = []
    granted = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda _c, _u, message: received.append(message)
    client.on_subscribe = lambda _c, _u, _mid, reasons, _p: granted.set() if not reasons[0].is_failure else None
    client.on_connect = lambda c, _u, _f, _r, _p: c.subscribe(topic, qos=1)
    client.connect("127.0.0.1", port, keepalive=5)
    client.loop_start()
    assert granted.wait(10), f"subscription to {topic} refused"
    return client, received


def test_mqtt_notifications_reach_a_subscriber_and_cannot_be_forged(settings: Settings, engine: Engine,
                                                                     broker: Broker) -> None:
    """End to end: a rule stored, a board's reading under its trigger, the writer fires the alert and writes the
    outbox row in its transaction, the dispatcher publishes it through the ingest client's connection."""
    with engine.connect() as conn:
        db.add_rule(conn, Rule(id=0, name="dark room", metric=Metric.LIGHT, operator="<", trigger=20.0, clear=30.0),
                    time.time_ns() // 1000)
        conn.commit()
    watcher, received = subscriber(settings.mqtt_port, ALERTS_PREFIX + "#")
    client = IngestClient(settings)
    client.start(wait_ready=10)
    board = RawDevice(settings.mqtt_port, "02:00:00:00:00:0a")
    forger = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    try:
        assert client.writer.alerts.channels == ("mqtt",)  # SENSORHUB_NOTIFY_MQTT is on by default
        forger.connect("127.0.0.1", settings.mqtt_port, keepalive=5)
        forger.loop_start()
        forged = forger.publish(ALERTS_PREFIX + "capteur-x", b'{"id":"forged"}', qos=1)
        forged.wait_for_publish(5)
        name, _session = board.join()
        board.reading(Topic.PHOTORESISTOR_STATUS, 5, qos=1).wait_for_publish(5)
        wait_for(lambda: received, 15, what="the notification")
        time.sleep(0.5)  # room for a repeat or the forged message, which must not come
    finally:
        board.close()
        forger.disconnect()
        stop_loop(forger)
        client.stop()
        watcher.disconnect()
        stop_loop(watcher)
    assert [message.topic for message in received] == [alert_topic(name)]
    payload = json.loads(received[0].payload)
    ((notification, delivered),) = [(key, row[0]) for key, row in outbox_rows(engine).items()]
    assert payload == {"id": notification, "event": "firing", "severity": "warning", "alert": payload["alert"],
                       "value": 5.0, "rule": "dark room"}
    assert delivered is not None and received[0].qos == 1 and not received[0].retain


def test_a_notification_the_broker_refuses_is_a_failure(settings: Settings, broker: Broker) -> None:
    """Published by a client that may not (anonymous): the broker's PUBACK says 0x87, and the channel says so."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    channel = MqttChannel(client, timeout=10)
    client.on_publish = lambda _c, _u, mid, reason, _p: channel.published(mid, reason)
    connected = threading.Event()
    client.on_connect = lambda _c, _u, _f, _r, _p: connected.set()
    client.connect("127.0.0.1", settings.mqtt_port, keepalive=5)
    client.loop_start()
    try:
        assert connected.wait(10)
        with pytest.raises(DeliveryError, match="refused sensorhub/alerts/capteur01: Not authorized"):
            channel.send(SAMPLE)
    finally:
        client.disconnect()
        stop_loop(client)
    with pytest.raises(DeliveryError, match="not connected to the broker"):
        channel.send(SAMPLE)


# -- a channel that fails ------------------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_a_receiver_down_for_60_s_then_back_gets_every_notification_exactly_once(
        settings: Settings, engine: Engine, dispatchers: list[Dispatcher]) -> None:
    """Nothing listens for 60 s (connections refused), notifications keep coming; then the receiver is back:
    each arrives once. Meanwhile the channel shows its failure: rows waiting with their error, the metrics."""
    down = Receiver(free_port())
    hooked = webhook_settings(settings, down.url)
    first = fire_alerts(engine, 3, ("webhook",))
    dispatcher = run(dispatchers, hooked, {"webhook": Webhook(hooked)}, retry_max=4.0)
    collector = NotifyCollector(dispatcher)
    wait_for(lambda: dispatcher.stats["webhook"].failed >= 3, 20, what="failed attempts")
    time.sleep(28)
    later = fire_alerts(engine, 2, ("webhook",), prefix="later")
    with engine.connect() as conn:
        (state,) = db.channel_states(conn)
    assert (state.channel, state.waiting) == ("webhook", 5) and "cannot reach the webhook" in (state.last_error or "")
    wait_for(lambda: dispatcher.stats["webhook"].waiting == 5, 10, what="the waiting count")
    figures = {(metric.name, sample.labels.get("channel")): sample.value for metric in collector.collect()
               for sample in metric.samples}
    assert figures[("sensorhub_notifications_waiting", "webhook")] == 5
    assert figures[("sensorhub_notifications_failed", "webhook")] >= 3
    assert figures[("sensorhub_notifications_delivered", "webhook")] == 0
    assert figures[("sensorhub_notifications_oldest_seconds", "webhook")] >= 25
    time.sleep(30)
    assert down.requests == []
    down.start()  # the same URL answers again, 60 s after the first attempt
    try:
        wait_for(lambda: len(down.requests) >= 5, 30, interval=0.2, what="every notification after the outage")
        wait_for(lambda: all(row[0] for row in outbox_rows(engine).values()), 10, what="all marked delivered")
        time.sleep(1)
        assert Counter(down.ids()) == Counter(first + later)  # each once
    finally:
        down.stop()
    rows = outbox_rows(engine)
    # Tried all along while it was down (one attempt per pause of the channel: about 60 s / 4 s), each attempt
    # recorded once on its row; the errors are gone once delivered.
    failed = dispatcher.stats["webhook"].failed
    assert failed >= 8 and sum(attempts for _delivered, attempts, _error in rows.values()) == failed + 5
    assert all(error is None for _delivered, _attempts, error in rows.values())
    assert dispatcher.stats["webhook"].delivered == 5


def test_a_failing_channel_does_not_hold_another(settings: Settings, engine: Engine, receiver: Receiver,
                                                 dispatchers: list[Dispatcher]) -> None:
    """The webhook receiver takes the first request and answers nothing; every e-mail goes meanwhile, those of
    alerts fired once the webhook is held included (the first ones may all go before its first request arrives)."""
    receiver.hold.clear()
    mailbox = Mailbox()
    server = smtp_server(mailbox, None)
    try:
        both = mail_settings(webhook_settings(settings, receiver.url), server.port, notify_smtp_security="none")
        ids = fire_alerts(engine, 2, ("webhook", "email"))
        run(dispatchers, both, {"webhook": Webhook(both, timeout=60), "email": Email(both)})
        wait_for(lambda: len(receiver.arrived) == 1, 15, what="the first webhook, held by its receiver")
        ids += fire_alerts(engine, 2, ("webhook", "email"), prefix="later")
        wait_for(lambda: len(mailbox.messages) == 4, 15, what="the four e-mails")
        assert len(receiver.arrived) == 1 and receiver.requests == []  # the webhook: still in its first request
        receiver.hold.set()
        wait_for(lambda: len(receiver.requests) == 4, 15, what="the webhooks, once the receiver answers")
    finally:
        receiver.hold.set()
        server.stop()
    assert sorted(receiver.ids()) == sorted(ids[1::2])  # fire_alerts orders them by channel: email, webhook
    wait_for(lambda: all(row[0] for row in outbox_rows(engine).values()), 10, what="all marked delivered")


def test_a_stuck_webhook_slows_neither_ingest_nor_the_mqtt_channel(settings: Settings, engine: Engine,
                                                                   broker: Broker, receiver: Receiver) -> None:
    """The real ingest client with a webhook that never answers: readings are stored as before, the MQTT
    notification goes out, and the webhook still holds its first request."""
    receiver.hold.clear()
    hooked = settings.replace(notify_webhook_url=receiver.url)
    with engine.connect() as conn:
        db.add_rule(conn, Rule(id=0, name="dark room", metric=Metric.LIGHT, operator="<", trigger=20.0, clear=30.0),
                    time.time_ns() // 1000)
        conn.commit()
    watcher, received = subscriber(settings.mqtt_port, ALERTS_PREFIX + "#")
    client = IngestClient(hooked)
    client.start(wait_ready=10)
    board = RawDevice(settings.mqtt_port, "02:00:00:00:00:0b")
    try:
        assert client.writer.alerts.channels == ("webhook", "mqtt")
        board.join()
        board.reading(Topic.PHOTORESISTOR_STATUS, 5, qos=1).wait_for_publish(5)
        wait_for(lambda: receiver.arrived, 10, what="the webhook's request")
        for value in range(40):  # still dark: the alert stays firing, nothing more to notify
            board.reading(Topic.PHOTORESISTOR_STATUS, value % 19, qos=1).wait_for_publish(5)

        def stored() -> int:
            with engine.connect() as conn:
                return int(conn.execute(text("SELECT count(*) FROM light_reading")).scalar() or 0)

        wait_for(lambda: stored() == 41, 15, what="every reading stored")
        wait_for(lambda: received, 15, what="the MQTT notification")
        assert len(receiver.arrived) == 1 and receiver.requests == []  # the webhook: still in its first request
        receiver.hold.set()
        wait_for(lambda: all(row[0] for row in outbox_rows(engine).values()), 15, what="both delivered")
    finally:
        receiver.hold.set()
        board.close()
        client.stop()
        watcher.disconnect()
        stop_loop(watcher)
    assert len(receiver.requests) == 1 and len(received) == 1


def test_a_notification_that_cannot_be_formatted_does_not_stop_its_channel(settings: Settings, engine: Engine,
                                                                           receiver: Receiver,
                                                                           dispatchers: list[Dispatcher]) -> None:
    """A row whose payload lacks what the template needs (a bug, a hand-edited row), older than the others: kept
    with its error, retried, and those behind it delivered."""
    earlier = format_micros(time.time_ns() // 1000 - 1_000_000)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO alert_outbox (id, channel, event, payload, created_at, attempts, "
                          "next_attempt_at) VALUES ('broken', 'webhook', 'firing', :payload, :at, 0, :at)"),
                     {"at": earlier, "payload": json.dumps({"id": "broken"})})
    good = fire_alerts(engine, 1, ("webhook",))
    hooked = webhook_settings(settings, receiver.url)
    dispatcher = run(dispatchers, hooked, {"webhook": Webhook(hooked)})
    wait_for(lambda: receiver.ids() == good, 10, what="the good notification")
    delivered, attempts, error = outbox_rows(engine)["broken"]
    assert delivered is None and attempts >= 1 and (error or "").startswith("KeyError")
    assert dispatcher.alive


@both_databases
def test_two_dispatchers_on_one_database_deliver_each_notification_once(settings: Settings, engine: Engine,
                                                                         receiver: Receiver,
                                                                         dispatchers: list[Dispatcher]) -> None:
    """Two workers' dispatchers (two engines, two threads) share the outbox: the lease gives each row to one."""
    hooked = webhook_settings(settings, receiver.url)
    ids = fire_alerts(engine, 40, ("webhook",))
    first = run(dispatchers, hooked, {"webhook": Webhook(hooked)}, poll=0.05)
    second = run(dispatchers, hooked, {"webhook": Webhook(hooked)}, poll=0.05)
    wait_for(lambda: all(row[0] for row in outbox_rows(engine).values()), 30, what="all delivered")
    time.sleep(0.5)
    assert Counter(receiver.ids()) == Counter(ids)
    assert first.stats["webhook"].delivered + second.stats["webhook"].delivered == 40
    assert first.stats["webhook"].failed == second.stats["webhook"].failed == 0


def test_a_dispatcher_stops_promptly_and_a_taken_row_is_sent_again(settings: Settings, engine: Engine,
                                                                   receiver: Receiver,
                                                                   dispatchers: list[Dispatcher]) -> None:
    """Stopping does not wait for a receiver that answers nothing; the stopped worker holds only that one."""
    receiver.hold.clear()
    receiver.hold_first_only = True
    hooked = webhook_settings(settings, receiver.url)
    ids = fire_alerts(engine, 3, ("webhook",))
    dispatcher = run(dispatchers, hooked, {"webhook": Webhook(hooked, timeout=60)})
    wait_for(lambda: receiver.arrived, 10, what="the first request")
    finishes(dispatcher.stop, 10, what="the dispatcher's stop")
    dispatchers.remove(dispatcher)
    with engine.connect() as conn:
        leased = {str(r[0]) for r in conn.execute(text(
            "SELECT id FROM alert_outbox WHERE claimed_until IS NOT NULL"))}
    assert leased == set(receiver.arrived)  # only the one in flight is held by the stopped worker
    again = run(dispatchers, hooked, {"webhook": Webhook(hooked)})
    wait_for(lambda: again.stats["webhook"].delivered == 2, 10, what="the two others, by another worker")
    assert sorted(receiver.ids()) == sorted(set(ids) - leased)
    receiver.hold.set()  # the first receiver's answer reaches the stopped worker's thread, which records it
    wait_for(lambda: all(row[0] for row in outbox_rows(engine).values()), 10, what="all delivered")
    assert Counter(receiver.ids()) == Counter(ids)
