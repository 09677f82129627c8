"""The channels the settings enable (config.configured), built once at start: a bad template stops start-up."""

from __future__ import annotations

from sensorhub.config import Settings, configured
from sensorhub.notify.channel import Channel
from sensorhub.notify.email import Email
from sensorhub.notify.mqtt import MqttChannel
from sensorhub.notify.webhook import Webhook


def make_channels(settings: Settings, mqtt: MqttChannel | None) -> dict[str, Channel]:
    """The enabled channels by name; MQTT through `mqtt` (the ingest client's connection), left out without it."""
    channels: dict[str, Channel] = {}
    for name in configured(settings):
        if name == "webhook":
            channels[name] = Webhook(settings)
        elif name == "email":
            channels[name] = Email(settings)
        elif name == "mqtt" and mqtt is not None:
            channels[name] = mqtt
    return channels
