"""Hands the web server's LED commands and renames to the ingest workers: through the named pipe (web server and
a worker on one machine), or through the broker's server-only topic (SENSORHUB_COMMANDS=broker).

Through the pipe, a command counts as handed over once it is written: a worker of this machine reads it, and the
page learns the outcome from the device's `led/status` (the pipe is one way).

Through the broker, each web server process keeps one MQTT 5 connection as user `sensorhub-web`, made on first
use (after gunicorn forked its workers), subscribed to its own reply topic (REPLY_PREFIX + a random key). It
publishes each command at QoS 1 as an MQTT 5 request: a message expiry of COMMAND_EXPIRY, its reply topic as
Response Topic and a number of its own as Correlation Data. The worker that takes the command answers there
once its batch is committed, with the engine's Outcome, and `send` returns it. A PUBACK "no matching
subscribers" means that no ingest worker subscribes (none ever started), which the page hears as "client not
running", as with the pipe; no answer within REPLY_WAIT (every worker down, their sessions queueing the
command, or too busy) raises NoReply, and the command is dropped by the broker before then, or by the worker
that would take it later.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import threading
import time
from typing import Any, Protocol, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from sensorhub.commands import COMMAND_EXPIRY, COMMAND_TOPIC, REPLY_PREFIX, Command, Outcome, format_command
from sensorhub.config import Settings
from sensorhub.credentials import WEB_USER, web_mqtt_password, web_mqtt_secret_path
from sensorhub.errors import BrokerRelayError, ClientNotRunning, NoReply
from sensorhub.mqttclient import REFUSED_LOGIN, no_delay, stop_loop
from sensorhub.pipe import send_command

logger = logging.getLogger(__name__)

#: How long a request waits for the broker: to connect, then to acknowledge a command.
BROKER_WAIT = 3.0
#: How long a request waits for a worker's answer, from the moment it publishes the command. A command the
#: broker has not handed to a worker expires within COMMAND_EXPIRY + 1 s (whole seconds, see commands.py), and
#: a worker drops one it could not decide within its remaining expiry + 0.5 s: the answer of any command that
#: is carried out comes before this.
REPLY_WAIT = BROKER_WAIT
assert COMMAND_EXPIRY + 2 <= REPLY_WAIT
#: MQTT 5 PUBACK reason: the broker took the message, and nobody subscribes to its topic.
NO_MATCHING_SUBSCRIBERS = 16
#: A PUBACK nobody took within this many seconds belongs to a request that gave up: forget it.
_FORGET_AFTER = 10 * BROKER_WAIT


class Relay(Protocol):
    """Hands one command over, or raises ClientNotRunning / a CommandError subclass saying why not."""

    def send(self, command: Command) -> Outcome | None:
        """Hand `command` over to the ingest workers: what the worker did with it, or None if the way is one-way."""


class PipeRelay:
    """The named pipe to the worker of this machine that holds it."""

    def __init__(self, settings: Settings) -> None:
        self.path = settings.fifo_path

    def send(self, command: Command) -> None:
        """Write the command into the pipe, never blocking; no answer comes back."""
        send_command(self.path, command)


class BrokerRelay:
    """The broker's server-only command topic, through one connection per process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: mqtt.Client | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._settled = threading.Event()  # an attempt to connect ended, either way
        self._refused: str | None = None
        self._acks = threading.Condition()  # guards the PUBACKs and the answers
        self._results: dict[int, tuple[ReasonCode, float]] = {}  # PUBACKs by message id, with when they came
        self._reply_topic = ""
        self._numbers = itertools.count(1)
        self._answers: dict[bytes, Outcome | None] = {}  # by correlation data, the requests still waiting

    def send(self, command: Command) -> Outcome:
        """Publish the command at QoS 1, wait for the broker's acknowledgement, then for a worker's answer."""
        client = self._connection()
        with self._acks:
            correlation = (next(self._numbers) % 2**32).to_bytes(4, "big")
            self._answers[correlation] = None
        try:
            return self._request(client, command, correlation)
        finally:
            with self._acks:
                del self._answers[correlation]

    def _request(self, client: mqtt.Client, command: Command, correlation: bytes) -> Outcome:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.MessageExpiryInterval = COMMAND_EXPIRY
        properties.ResponseTopic = self._reply_topic
        properties.CorrelationData = correlation
        deadline = time.monotonic() + REPLY_WAIT
        info = client.publish(COMMAND_TOPIC, format_command(command).rstrip(b"\n"), qos=1, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerRelayError(f"the broker at {self._where()} is out of reach ({mqtt.error_string(info.rc)})")
        with self._acks:
            if not self._acks.wait_for(lambda: info.mid in self._results, deadline - time.monotonic()):
                raise BrokerRelayError(f"the broker at {self._where()} did not acknowledge the command within "
                                       f"{REPLY_WAIT:.0f} s")
            reason = self._results.pop(info.mid)[0]
        if reason.value == NO_MATCHING_SUBSCRIBERS:
            raise ClientNotRunning(f"no ingest client subscribes to {COMMAND_TOPIC} on the broker at {self._where()}")
        if reason.is_failure:
            raise BrokerRelayError(f"the broker refused the command ({reason}): is mqtt/acl.devices the project's?")
        with self._acks:
            if not self._acks.wait_for(lambda: self._answers[correlation] is not None,
                                       deadline - time.monotonic()):
                raise NoReply(f"no ingest worker answered within {REPLY_WAIT:.0f} s (all stopped, or too busy); "
                              f"the command expires unexecuted")
            return cast(Outcome, self._answers[correlation])

    def _where(self) -> str:
        return f"{self.settings.mqtt_host}:{self.settings.mqtt_port}"

    def _connection(self) -> mqtt.Client:
        """This process's connection (a forked child makes its own), connected, or BrokerRelayError."""
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                self._connect()
            client = self._client
        assert client is not None
        if not self._connected.is_set():
            self._settled.wait(BROKER_WAIT)
        if not self._connected.is_set():
            raise BrokerRelayError(self._refused or f"cannot reach the broker at {self._where()} to hand the "
                                                    f"command over (is it running?)")
        return client

    def _connect(self) -> None:
        self._pid = os.getpid()
        self._connected.clear()
        self._settled.clear()
        self._refused = None
        key = secrets.token_hex(8)
        # A short reply topic: with it, the longest command stays under the broker's max_packet_size (200).
        self._reply_topic = f"{REPLY_PREFIX}{key}"
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sensorhub-web-{key}", protocol=mqtt.MQTTv5)
        client.username_pw_set(WEB_USER, web_mqtt_password(self.settings))
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_open = no_delay
        client.connect_async(self.settings.mqtt_host, self.settings.mqtt_port, keepalive=30)
        client.loop_start()
        self._client = client

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: mqtt.ConnectFlags, reason: ReasonCode,
                    _properties: Properties | None) -> None:
        if not reason.is_failure:
            # Ready once the broker has our subscription to the answers (a new one at each connection: the
            # session ends with it).
            client.subscribe(self._reply_topic, qos=1)
            return
        if reason.value in REFUSED_LOGIN:
            self._refused = (f"the broker refused the web server's password ({reason}): it is in "
                             f"{web_mqtt_secret_path(self.settings)}, which must be the broker machine's copy "
                             f"(restart the broker after changing it)")
        else:
            self._refused = f"the broker refused the web server's connection ({reason})"
        logger.error("%s", self._refused)
        self._settled.set()

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, _mid: int, reasons: list[ReasonCode],
                      _properties: Properties | None) -> None:
        refused = [str(reason) for reason in reasons if reason.is_failure]
        if refused:
            self._refused = f"the broker refused the web server's subscription to {self._reply_topic} ({refused[0]})"
            logger.error("%s", self._refused)
        else:
            self._refused = None
            self._connected.set()
        self._settled.set()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        correlation = bytes(getattr(message.properties, "CorrelationData", b""))
        try:
            outcome = Outcome(message.payload.decode("ascii", "replace"))
        except ValueError:
            logger.warning("an answer on %s is not an outcome: %r", message.topic, message.payload[:40])
            return
        with self._acks:
            if correlation in self._answers and self._answers[correlation] is None:  # its request still waits
                self._answers[correlation] = outcome
                self._acks.notify_all()

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        self._refused = None
        self._settled.set()

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: mqtt.DisconnectFlags,
                       reason: ReasonCode, _properties: Properties | None) -> None:
        self._connected.clear()
        self._settled.clear()
        logger.warning("lost the broker connection for commands (%s); reconnecting", reason)

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int, reason: ReasonCode,
                    _properties: Properties | None) -> None:
        now = time.monotonic()
        with self._acks:
            for old in [key for key, (_reason, at) in self._results.items() if now - at > _FORGET_AFTER]:
                del self._results[old]  # came after its request gave up waiting
            self._results[mid] = (reason, now)
            self._acks.notify_all()

    def close(self) -> None:
        """Disconnect (tests; a web server process just exits)."""
        with self._lock:
            if self._client is not None and self._pid == os.getpid():
                self._client.disconnect()
                stop_loop(self._client)
            self._client = None


def make_relay(settings: Settings) -> Relay:
    """The relay SENSORHUB_COMMANDS chooses."""
    return BrokerRelay(settings) if settings.commands == "broker" else PipeRelay(settings)
