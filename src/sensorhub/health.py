"""Is sensorhub healthy? The database answers, the broker is reachable, the ingest client was seen lately.

The ingest client writes a heartbeat file every second (sensorhub.telemetry); `/healthz` and `sensorhub status`
read it, so neither writes to the database nor needs the client's cooperation. While the client is not running,
the broker is asked directly: an MQTT connection as a board makes it, closed at once.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sensorhub.config import Settings
from sensorhub.telemetry import STALE_AFTER, heartbeat_path

BROKER_PROBE_TIMEOUT = 2.0


def write_private(path: Path, body: str | bytes) -> None:
    """Replace `path` atomically (a reader never sees half of it) with a file only its owner may read."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(body.encode() if isinstance(body, str) else body)
    os.replace(temporary, path)


def write_heartbeat(path: Path, facts: dict[str, Any]) -> None:
    """Replace the heartbeat file (owner only, atomically)."""
    write_private(path, json.dumps({"pid": os.getpid(), "at": time.time(), **facts}, separators=(",", ":")))


def read_heartbeat(path: Path) -> dict[str, Any] | None:
    """The last heartbeat, or None if there is none (or it cannot be read)."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


@dataclass(frozen=True, slots=True)
class Check:
    """One part of the answer: its name, whether it is fine, and what was found."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Health:
    """Every check; healthy when all are."""

    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return all(check.ok for check in self.checks)

    def problems(self) -> list[str]:
        """What is wrong, one line per failed check."""
        return [f"{check.name}: {check.detail}" for check in self.checks if not check.ok]

    def as_json(self, details: bool = True) -> dict[str, Any]:
        """The body of /healthz; without `details`, only which checks fail (a detail may name hosts and ports)."""
        if not details:
            return {"status": "ok" if self.ok else "unhealthy",
                    "problems": [check.name for check in self.checks if not check.ok],
                    "checks": {check.name: {"ok": check.ok} for check in self.checks}}
        return {"status": "ok" if self.ok else "unhealthy", "problems": self.problems(),
                "checks": {check.name: {"ok": check.ok, "detail": check.detail} for check in self.checks}}

    def summary(self) -> str:
        """One line for logs and terminals."""
        return "healthy" if self.ok else "unhealthy: " + "; ".join(self.problems())


def check(settings: Settings, ping_database: Callable[[], object], now: float | None = None) -> Health:
    """Run every check; `ping_database` raises if the database does not answer."""
    now = time.time() if now is None else now
    beat = read_heartbeat(heartbeat_path(settings))
    age = None if beat is None else now - float(beat.get("at", 0))
    fresh = beat is not None and age is not None and age <= STALE_AFTER
    if beat is None or age is None:
        client = Check("client", False, "no heartbeat: the ingest client is not running")
    elif not fresh:
        client = Check("client", False, f"the ingest client was last seen {age:.0f} s ago")
    elif not beat.get("writer", False):
        client = Check("client", False, "the ingest client runs but its database writer stopped")
    else:
        client = Check("client", True, f"seen {max(age, 0):.1f} s ago, {int(beat.get('queued', 0))} message(s) "
                                       "queued")
    if fresh and beat is not None and not beat.get("connecting", False):
        connected = bool(beat.get("broker", False))
        broker = Check("broker", connected, "the ingest client is connected to it" if connected else
                       f"the ingest client cannot reach it at {settings.mqtt_host}:{settings.mqtt_port}")
    elif fresh:
        broker = probe_broker(settings, "the ingest client is connecting to it")
    else:
        broker = probe_broker(settings)
    return Health((_database(ping_database), client, broker))


def _database(ping: Callable[[], object]) -> Check:
    try:
        ping()
    except Exception as err:  # whatever the database (or its driver) says is the answer
        text = str(getattr(err, "orig", None) or err)
        return Check("database", False, text.splitlines()[0] if text else type(err).__name__)
    return Check("database", True, "answers")


def probe_broker(settings: Settings, why: str = "the ingest client is not running") -> Check:
    """Connect to the broker's device port as a board would, and disconnect at once (`why`: why we ask it)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    where = f"{settings.mqtt_host}:{settings.mqtt_port}"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sensorhub-health-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv311)
    client.connect_timeout = BROKER_PROBE_TIMEOUT
    answered: list[bool] = []
    # Any CONNACK will do, a refusal too (SENSORHUB_DEVICE_PASSWORD): the broker answered MQTT.
    client.on_connect = lambda *_args: answered.append(True)
    try:
        client.connect(settings.mqtt_host, settings.mqtt_port, keepalive=5)
        deadline = time.monotonic() + BROKER_PROBE_TIMEOUT
        while not answered and time.monotonic() < deadline:
            client.loop(timeout=0.05)
    except OSError as err:
        return Check("broker", False, f"cannot reach it at {where}: {err.strerror or err}")
    finally:
        _close(client)
    if not answered:
        return Check("broker", False, f"{where} accepts connections but does not answer MQTT")
    return Check("broker", True, f"answers at {where} (asked directly: {why})")


def _close(client: Any) -> None:
    """Say DISCONNECT if connected, and close the socket (no ResourceWarning later)."""
    if client.is_connected():
        client.disconnect()
        client.loop(timeout=0.01)  # sends it
    sock = client.socket()
    if sock is not None:
        sock.close()
