"""Hands the web server's LED commands and renames to the ingest workers: through the named pipe (web server and
a worker on one machine), or through the broker's server-only topic (SENSORHUB_COMMANDS=broker).

Through the broker, each web server process keeps one MQTT 5 connection as user `sensorhub-web`, made on first
use (after gunicorn forked its workers), and publishes each command at QoS 1 with a message expiry. A command
counts as handed over once the broker acknowledged it: a PUBACK "no matching subscribers" means that no ingest
worker subscribes (none ever started), which the page hears as "client not running", as with the pipe.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from sensorhub.commands import COMMAND_TOPIC, Command, expiry, format_command
from sensorhub.config import Settings
from sensorhub.credentials import WEB_USER, web_mqtt_password, web_mqtt_secret_path
from sensorhub.errors import BrokerRelayError, ClientNotRunning
from sensorhub.ingest.ledpipe import send_command
from sensorhub.mqttclient import REFUSED_LOGIN, no_delay

logger = logging.getLogger(__name__)

#: How long a request waits for the broker: to connect, then to acknowledge a command.
BROKER_WAIT = 3.0
#: MQTT 5 PUBACK reason: the broker took the message, and nobody subscribes to its topic.
NO_MATCHING_SUBSCRIBERS = 16
#: A PUBACK nobody took within this many seconds belongs to a request that gave up: forget it.
_FORGET_AFTER = 10 * BROKER_WAIT


class Relay(Protocol):
    """Hands one command over, or raises ClientNotRunning / a CommandError subclass saying why not."""

    def send(self, command: Command) -> None:
        """Hand `command` over to the ingest workers."""


class PipeRelay:
    """The named pipe to the worker of this machine that holds it."""

    def __init__(self, settings: Settings) -> None:
        self.path = settings.fifo_path

    def send(self, command: Command) -> None:
        """Write the command into the pipe, never blocking."""
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
        self._acks = threading.Condition()
        self._results: dict[int, tuple[ReasonCode, float]] = {}  # PUBACKs by message id, with when they came

    def send(self, command: Command) -> None:
        """Publish the command at QoS 1 and wait for the broker's acknowledgement."""
        client = self._connection()
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.MessageExpiryInterval = expiry(command)
        info = client.publish(COMMAND_TOPIC, format_command(command).rstrip(b"\n"), qos=1, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerRelayError(f"the broker at {self._where()} is out of reach ({mqtt.error_string(info.rc)})")
        with self._acks:
            if not self._acks.wait_for(lambda: info.mid in self._results, BROKER_WAIT):
                raise BrokerRelayError(f"the broker at {self._where()} did not acknowledge the command within "
                                       f"{BROKER_WAIT:.0f} s")
            reason = self._results.pop(info.mid)[0]
        if reason.value == NO_MATCHING_SUBSCRIBERS:
            raise ClientNotRunning(f"no ingest client subscribes to {COMMAND_TOPIC} on the broker at {self._where()}")
        if reason.is_failure:
            raise BrokerRelayError(f"the broker refused the command ({reason}): is mqtt/acl.devices the project's?")

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
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sensorhub-web-{secrets.token_hex(8)}",
                             protocol=mqtt.MQTTv5)
        client.username_pw_set(WEB_USER, web_mqtt_password(self.settings))
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_socket_open = no_delay
        client.connect_async(self.settings.mqtt_host, self.settings.mqtt_port, keepalive=30)
        client.loop_start()
        self._client = client

    def _on_connect(self, _client: mqtt.Client, _userdata: Any, _flags: mqtt.ConnectFlags, reason: ReasonCode,
                    _properties: Properties | None) -> None:
        if not reason.is_failure:
            self._refused = None
            self._connected.set()
            self._settled.set()
            return
        if reason.value in REFUSED_LOGIN:
            self._refused = (f"the broker refused the web server's password ({reason}): it is in "
                             f"{web_mqtt_secret_path(self.settings)}, which must be the broker machine's copy "
                             f"(restart the broker after changing it)")
        else:
            self._refused = f"the broker refused the web server's connection ({reason})"
        logger.error("%s", self._refused)
        self._settled.set()

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
                self._client.loop_stop()
            self._client = None


def make_relay(settings: Settings) -> Relay:
    """The relay SENSORHUB_COMMANDS chooses."""
    return BrokerRelay(settings) if settings.commands == "broker" else PipeRelay(settings)
