"""The MQTT channel: each notification published on `sensorhub/alerts/<device name>` (QoS 1, not retained: the
broker refuses retained messages) through the ingest client's own connection; delivered once the broker's PUBACK
says it took it.

The broker disconnects a client that sends a packet over its `max_packet_size` (protocol.MAX_PACKET, 200
bytes): the payload is a short JSON object, `{"id", "event", "severity", "alert", "value", "rule"}`, the rule's
name shortened to fit; the device is the topic's last level. The whole notification is the webhook's `$json`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

from paho.mqtt.client import MQTTMessageInfo
from paho.mqtt.reasoncodes import ReasonCode

from sensorhub.notify.channel import DeliveryError
from sensorhub.protocol import MAX_PACKET

logger = logging.getLogger(__name__)

#: Where notifications go; the device's name follows.
ALERTS_PREFIX = "sensorhub/alerts/"
#: Seconds to wait for the broker's PUBACK.
TIMEOUT = 10.0
#: Refusals (PUBACK reason codes) remembered, by message id, until the dispatcher reads them.
_REMEMBERED = 256


class BrokerClient(Protocol):
    """What the channel uses of paho's client (the ingest client's own)."""

    def is_connected(self) -> bool:
        """Whether the connection is up."""

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> MQTTMessageInfo:
        """Queue one message."""


def alert_topic(device_name: str) -> str:
    """The topic of a device's notifications: its name as one topic level (`/`, `+`, `#` become `_`)."""
    return ALERTS_PREFIX + device_name.translate(str.maketrans("/+#", "___"))


def payload_room(topic: str) -> int:
    """Bytes left for the payload of a QoS 1 PUBLISH on `topic` without properties within MAX_PACKET: type,
    remaining length (2 bytes from 128), topic, packet id, properties' length."""
    return MAX_PACKET - (1 + 2 + 2 + len(topic.encode()) + 2 + 1)


def compact(payload: Mapping[str, Any], topic: str) -> bytes:
    """The notification as published on `topic`: its id first, the rule's name shortened to fit the packet."""
    value = payload.get("last_value") if payload.get("event") == "resolved" else payload.get("value")
    short: dict[str, Any] = {"id": payload["id"], "event": payload["event"], "severity": payload["severity"],
                             "alert": payload.get("alert"), "value": value}
    room = payload_room(topic)
    name = str(payload["rule"]["name"])
    while True:
        body = json.dumps({**short, "rule": name}, separators=(",", ":"), ensure_ascii=False).encode()
        if len(body) <= room or not name:
            break
        name = name[:-2] + "…" if len(name) > 1 else ""
    if len(body) > room:
        body = json.dumps(short, separators=(",", ":")).encode()
    return body


class MqttChannel:
    """Publish each notification at QoS 1 through `client` and wait for its PUBACK."""

    name = "mqtt"

    def __init__(self, client: BrokerClient, *, timeout: float = TIMEOUT) -> None:
        self.client = client
        self.timeout = timeout
        self._refused: dict[int, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def published(self, mid: int, reason: ReasonCode) -> None:
        """paho's on_publish (the network thread): remember a refusal for `send`."""
        if reason.is_failure:
            with self._lock:
                self._refused[mid] = (str(reason), time.monotonic())
                while len(self._refused) > _REMEMBERED:
                    del self._refused[next(iter(self._refused))]

    def send(self, payload: Mapping[str, Any]) -> None:
        """Publish `payload` and wait for the broker to take it."""
        if not self.client.is_connected():
            # paho would keep it for the next connection, and a retry would queue it again: fail now instead.
            raise DeliveryError("not connected to the broker")
        topic = alert_topic(str(payload["device"]["name"]))
        started = time.monotonic()
        info = self.client.publish(topic, compact(payload, topic), 1, False)
        try:
            info.wait_for_publish(self.timeout)
        except (RuntimeError, ValueError) as err:
            raise DeliveryError(f"publish on {topic} failed: {err}") from None
        if not info.is_published():
            raise DeliveryError(f"the broker did not acknowledge {topic} within {self.timeout:g} s")
        with self._lock:
            refused = self._refused.pop(info.mid, None)
        if refused is not None and refused[1] >= started:
            raise DeliveryError(f"the broker refused {topic}: {refused[0]}")
