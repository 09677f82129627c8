"""The ingest client's second connection, to Home Assistant's own broker (SENSORHUB_HOMEASSISTANT_URL)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from sensorhub.config import Settings
from sensorhub.ingest.homeassistant import BIRTH_TOPIC, COMMAND_FILTER
from sensorhub.mqttclient import no_delay, stop_loop

logger = logging.getLogger(__name__)


def parse_url(url: str) -> tuple[str, int]:
    """(host, port) of SENSORHUB_HOMEASSISTANT_URL (mqtt://host[:port], 1883 by default)."""
    parsed = urlsplit(url)
    return (parsed.hostname or "localhost"), (parsed.port or 1883)


class HaBroker:
    """The second connection, to Home Assistant's own broker (SENSORHUB_HOMEASSISTANT_URL): it publishes the
    configs and states there and brings back Home Assistant's birth and LED commands."""

    def __init__(self, settings: Settings, client_id: str, on_message: Callable[[str, bytes], object]) -> None:
        self.host, self.port = parse_url(settings.homeassistant_url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        if settings.homeassistant_user:
            self.client.username_pw_set(settings.homeassistant_user, settings.homeassistant_password or None)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        # What waits for Home Assistant's broker while it is out of reach stays bounded (a republish follows).
        self.client.max_queued_messages_set(10_000)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_socket_open = no_delay
        self.keepalive = settings.keepalive
        self._on_message_cb = on_message
        #: Called once connected (and again after each reconnection): publish everything again.
        self.on_connected: Callable[[], object] | None = None

    def start(self) -> None:
        """Connect in the background (retrying until the broker answers)."""
        self.client.connect_async(self.host, self.port, keepalive=self.keepalive)
        self.client.loop_start()

    def stop(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        stop_loop(self.client)

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        """Publish on Home Assistant's broker (queued by paho while it is out of reach)."""
        self.client.publish(topic, payload, qos)

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: mqtt.ConnectFlags, reason: ReasonCode,
                    _properties: Properties | None) -> None:
        if reason.is_failure:
            logger.error("Home Assistant's broker at %s:%d refused the connection: %s", self.host, self.port, reason)
            return
        logger.info("connected to Home Assistant's broker at %s:%d", self.host, self.port)
        client.subscribe([(BIRTH_TOPIC, 1), (COMMAND_FILTER, 1)])
        if self.on_connected is not None:
            self.on_connected()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._on_message_cb(message.topic, bytes(message.payload))
