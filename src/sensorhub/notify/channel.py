"""What every notification channel shares: the interface the dispatcher calls, its failure, and the words of a
notification (title, value, placeholders) taken from the outbox's payload."""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import Any, Protocol

from sensorhub.errors import ConfigError

#: ntfy's priorities (1 to 5) for our severities; Gotify reads them as low to normal.
PRIORITIES = {"info": "3", "warning": "4", "critical": "5"}


class DeliveryError(Exception):
    """The channel did not take the notification; the message is stored as the outbox row's last error."""


class Channel(Protocol):
    """Delivers one notification, or raises DeliveryError (it is tried again later)."""

    name: str
    #: The longest one delivery may take (s): the dispatcher's lease on a row covers it.
    timeout: float

    def send(self, payload: Mapping[str, Any]) -> None:
        """Deliver `payload` (the outbox row's JSON, with its `id`); return only once the receiver took it."""


def title(payload: Mapping[str, Any]) -> str:
    """A short title: the rule and the device."""
    return f"{payload['rule']['name']} on {payload['device']['name']}"


def shown_value(payload: Mapping[str, Any]) -> str:
    """The value that fired the alert (the last one seen, once resolved), as text; empty when there is none."""
    value = payload.get("last_value") if payload.get("event") == "resolved" else payload.get("value")
    if value is None:
        return ""
    number = float(value)
    return str(int(number)) if number.is_integer() else f"{number:g}"


def placeholders(payload: Mapping[str, Any]) -> dict[str, str]:
    """The webhook template's placeholders (config.WEBHOOK_PLACEHOLDERS) for `payload`."""
    return {"id": str(payload["id"]), "event": str(payload["event"]), "severity": str(payload["severity"]),
            "priority": PRIORITIES.get(str(payload["severity"]), "3"), "title": title(payload),
            "text": str(payload["text"]), "rule": str(payload["rule"]["name"]),
            "device": str(payload["device"]["name"]), "mac": str(payload["device"]["mac"]),
            "value": shown_value(payload), "alert": str(payload.get("alert", "")),
            "json": json.dumps(payload, separators=(",", ":"), ensure_ascii=False)}


def tls_context(ca_file: str) -> ssl.SSLContext:
    """Certificates checked against `ca_file` (empty: the system's authorities), host names too."""
    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as err:  # missing, unreadable, not PEM
        raise ConfigError(f"SENSORHUB_NOTIFY_CA_FILE={ca_file!r} cannot be used: {err.strerror or err}") from None


#: A notification as enqueue writes it, for checking templates at start and for tests.
SAMPLE: dict[str, Any] = {
    "id": "00000000-0000-4000-8000-000000000000", "event": "firing", "alert": 1, "state": "firing",
    "severity": "warning", "since": "2026-01-01 00:00:00.000000", "fired_at": "2026-01-01 00:00:00.000000",
    "resolved_at": None, "value": 12.0, "last_value": 12.0, "reminders": 0,
    "rule": {"id": 1, "name": "dark \"room\"", "metric": "light", "operator": "<", "trigger": 20.0, "clear": 30.0},
    "device": {"id": 1, "name": "capteur01", "mac": "02:00:00:00:00:01"},
    "text": "[warning] dark \"room\" firing on capteur01 (light 12)",
}
