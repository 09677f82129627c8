"""A hand-driven ESP32 for integration tests: every protocol step is an explicit call, nothing automatic."""

from __future__ import annotations

import queue
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from sensorhub.mqttclient import stop_loop
from sensorhub.protocol import Topic, format_reading, format_session_ref, parse_name_assign
from tests.support import wait_for


class RawDevice:
    """One MQTT connection playing an ESP32, step by step."""

    def __init__(self, port: int, mac: str, protocol: int = mqtt.MQTTv5, join_qos: int = 2,
                 login: tuple[str, str] | None = None) -> None:
        self.port = port
        self.login = login
        self.mac = mac
        self.protocol = protocol
        self.join_qos = join_qos
        self.name = ""
        self.session = ""
        self.assignments: queue.Queue[tuple[str, str]] = queue.Queue()
        self.commands: list[bytes] = []
        self.client: mqtt.Client | None = None
        self._subscribed = threading.Event()

    def _connect(self, will: bytes | None = None, keepalive: int = 5) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=self.protocol,
                             client_id=f"raw-{self.mac.replace(':', '')}")
        if self.login is not None:
            client.username_pw_set(*self.login)
        if will is not None:
            client.will_set(Topic.LEAVE, will, qos=2)
        client.on_message = self._on_message
        client.on_subscribe = lambda *_args: self._subscribed.set()
        client.connect("127.0.0.1", self.port, keepalive=keepalive)
        client.loop_start()
        wait_for(client.is_connected, 5, what=f"{self.mac} connected")
        return client

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        if message.topic == Topic.NAME_ASSIGN:
            assign = parse_name_assign(message.payload)
            if assign.mac == self.mac.upper():
                self.assignments.put((assign.name, assign.session))
        elif message.topic == Topic.LED_COMMAND:
            self.commands.append(message.payload)

    def _subscribe(self, topic: str, qos: int) -> None:
        assert self.client is not None
        self._subscribed.clear()
        self.client.subscribe(topic, qos)
        assert self._subscribed.wait(5), f"no SUBACK for {topic}"

    def request_session(self, timeout: float = 10) -> tuple[str, str]:
        """Steps 1-3: connect, subscribe to nameAssign, publish the MAC, wait for name and session."""
        self.close()
        self.client = self._connect()
        self._subscribe(Topic.NAME_ASSIGN, 2)
        self.client.publish(Topic.JOIN, self.mac, qos=self.join_qos)
        self.name, self.session = self.assignments.get(timeout=timeout)
        return self.name, self.session

    def start_session(self, keepalive: int = 5) -> None:
        """Steps 4-5: reconnect with the Will, subscribe to led/command, publish name;session."""
        self.close()
        self.client = self._connect(will=format_session_ref(self.name, self.session), keepalive=keepalive)
        self._subscribe(Topic.LED_COMMAND, 1)
        self.client.publish(Topic.JOIN, format_session_ref(self.name, self.session), qos=self.join_qos)

    def reconnect(self, keepalive: int = 5) -> None:
        """Connect again with the Will of the current session, without any join (a lax firmware)."""
        self.close()
        self.client = self._connect(will=format_session_ref(self.name, self.session), keepalive=keepalive)

    def join(self) -> tuple[str, str]:
        """The whole join sequence."""
        self.request_session()
        self.start_session()
        return self.name, self.session

    def publish(self, topic: str, payload: bytes | str, qos: int = 0) -> mqtt.MQTTMessageInfo:
        """Publish anything."""
        assert self.client is not None
        return self.client.publish(topic, payload, qos=qos)

    def reading(self, topic: str, value: int, qos: int | None = None, session: str | None = None,
                name: str | None = None) -> mqtt.MQTTMessageInfo:
        """Publish name;session;value on a status channel."""
        payload = format_reading(name or self.name, session or self.session, value)
        return self.publish(topic, payload, qos=1 if topic == Topic.LED_STATUS and qos is None else qos or 0)

    def leave(self) -> None:
        """Publish state/leave and disconnect cleanly (the Will is not sent)."""
        self.publish(Topic.LEAVE, format_session_ref(self.name, self.session), qos=2).wait_for_publish(5)
        self.close()

    def crash(self) -> None:
        """Drop the TCP connection without DISCONNECT: the broker publishes the Will."""
        assert self.client is not None
        stop_loop(self.client)
        sock = self.client.socket()
        if sock is not None:
            sock.close()
        self.client = None

    def close(self) -> None:
        """Disconnect cleanly if connected."""
        if self.client is not None:
            self.client.disconnect()
            stop_loop(self.client)
            self.client = None
