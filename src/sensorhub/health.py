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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sensorhub.config import Settings
from sensorhub.i18n import N_, Msg, tr
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
    """One part of the answer: its name, whether it is fine, and what was found (`detail`, English; `template`
    and `params` make it again in the command line's language: `translated`)."""

    name: str
    ok: bool
    detail: str
    template: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def said(cls, name: str, ok: bool, template: str, **params: Any) -> Check:
        """A check whose detail is the msgid `template` (marked with N_) formatted with `params`."""
        return cls(name, ok, template.format(**params), template, params)

    def translated(self) -> str:
        """The detail in the command line's language (sensorhub.i18n)."""
        return tr(self.template, **self.params) if self.template else self.detail


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
        client = Check.said("client", False, N_("no heartbeat: the ingest client is not running"))
    elif not fresh:
        client = Check.said("client", False, N_("the ingest client was last seen {age:.0f} s ago"), age=age)
    elif not beat.get("writer", False):
        client = Check.said("client", False, N_("the ingest client runs but its database writer stopped"))
    else:
        client = Check.said("client", True, N_("seen {age:.1f} s ago, {queued} message(s) queued"), age=max(age, 0),
                            queued=int(beat.get("queued", 0)))
    if fresh and beat is not None and not beat.get("connecting", False):
        connected = bool(beat.get("broker", False))
        broker = Check.said("broker", True, N_("the ingest client is connected to it")) if connected else \
            Check.said("broker", False, N_("the ingest client cannot reach it at {where}"),
                       where=f"{settings.mqtt_host}:{settings.mqtt_port}")
    elif fresh:
        broker = probe_broker(settings, Msg(N_("the ingest client is connecting to it")))
    else:
        broker = probe_broker(settings)
    return Health((_database(ping_database), client, broker))


def _database(ping: Callable[[], object]) -> Check:
    try:
        ping()
    except Exception as err:  # whatever the database (or its driver) says is the answer
        text = str(getattr(err, "orig", None) or err)
        return Check("database", False, text.splitlines()[0] if text else type(err).__name__)
    return Check.said("database", True, N_("answers"))


def probe_broker(settings: Settings, why: str = Msg(N_("the ingest client is not running"))) -> Check:
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
        return Check.said("broker", False, N_("cannot reach it at {where}: {reason}"), where=where,
                          reason=err.strerror or err)
    finally:
        _close(client)
    if not answered:
        return Check.said("broker", False, N_("{where} accepts connections but does not answer MQTT"), where=where)
    return Check.said("broker", True, N_("answers at {where} (asked directly: {why})"), where=where, why=why)


def _close(client: Any) -> None:
    """Say DISCONNECT if connected, and close the socket (no ResourceWarning later)."""
    if client.is_connected():
        client.disconnect()
        client.loop(timeout=0.01)  # sends it
    sock = client.socket()
    if sock is not None:
        sock.close()
