"""The simulator's MQTT client (simulator/client.py) against a real Mosquitto: many on one loop, clean exits,
drops, refusals."""

from __future__ import annotations

import asyncio
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bench.ports import free_port
from sensorhub.broker import Broker
from sensorhub.config import Settings
from sensorhub.credentials import CLIENT_USER, client_password
from sensorhub.mqttclient import stop_loop
from sensorhub.simulator.client import DeviceClient, MqttError, Will
from tests.support import log_in_as_server, wait_for

pytestmark = pytest.mark.integration


class Wills:
    """A server-side client that records what arrives on state/leave."""

    def __init__(self, settings: Settings) -> None:
        self.seen: list[bytes] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        log_in_as_server(client, settings)
        client.on_connect = lambda c, _u, _f, _r, _p: c.subscribe("state/leave", qos=2)
        client.on_subscribe = lambda *_: subscribed.set()
        client.on_message = lambda _c, _u, message: self._add(bytes(message.payload))
        client.connect(settings.mqtt_host, settings.mqtt_port, keepalive=10)
        client.loop_start()
        assert subscribed.wait(10), "no SUBACK for state/leave"
        self.client = client

    def _add(self, payload: bytes) -> None:
        with self._lock:
            self.seen.append(payload)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        stop_loop(self.client)


def client(settings: Settings, name: str, will: bytes | None = None) -> DeviceClient:
    """A client for the test's broker, with a Will on state/leave if `will` is given."""
    return DeviceClient(settings.mqtt_host, settings.mqtt_port, identifier=name, keepalive=settings.keepalive,
                        will=Will("state/leave", will, qos=2) if will is not None else None, timeout=5.0)


def test_three_hundred_clients_on_one_loop_publish_and_leave_without_their_will(settings: Settings,
                                                                                broker: Broker) -> None:
    wills = Wills(settings)

    async def one(index: int) -> None:
        async with client(settings, f"many-{index}", will=b"w%d" % index) as device:
            await device.subscribe("led/command", 1)
            for qos in (0, 1, 2):
                await device.publish("photoresistor/status", b"x;s;1", qos)

    async def main() -> None:
        await asyncio.gather(*(one(index) for index in range(300)))

    try:
        asyncio.run(main())
        # A sentinel: a Will sent after the clean exits would have reached the subscriber before it.
        async def sentinel() -> None:
            async with client(settings, "sentinel", will=b"sentinel") as device:
                device.drop()
                with pytest.raises(MqttError, match="Disconnected"):
                    await anext(device.messages)

        asyncio.run(sentinel())
        wait_for(lambda: b"sentinel" in wills.seen, 10, what="the sentinel's Will")
        assert wills.seen == [b"sentinel"]  # no Will for the 300 that left with DISCONNECT
    finally:
        wills.close()


def test_a_message_reaches_the_iterator(settings: Settings, broker: Broker) -> None:
    async def main() -> bytes:
        server = DeviceClient(settings.mqtt_host, settings.mqtt_port, identifier="talker", username=CLIENT_USER,
                              password=client_password(settings))
        async with client(settings, "listener") as listener, server as talker:
            await listener.subscribe("led/command", 1)
            await talker.publish("led/command", b"a;b;1", 1)
            message = await anext(listener.messages)
            assert message.matches("led/command") and message.qos == 1
            return message.payload

    assert asyncio.run(main()) == b"a;b;1"


def test_an_unreachable_broker_is_an_mqtt_error_that_says_refused(settings: Settings) -> None:
    async def main() -> None:
        device = DeviceClient("127.0.0.1", free_port(), identifier="nobody", timeout=2.0)
        with pytest.raises(MqttError, match="refused"):
            await device.__aenter__()
        device.discard()

    asyncio.run(main())


def test_a_publish_after_the_connection_is_lost_fails_at_once(settings: Settings, broker: Broker) -> None:
    async def main() -> None:
        async with client(settings, "dropper") as device:
            device.drop()
            with pytest.raises(MqttError):
                await anext(device.messages)
            with pytest.raises(MqttError, match="not connected"):
                await device.publish("photoresistor/status", b"x;s;1", 1)

    asyncio.run(main())
