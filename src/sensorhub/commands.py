"""The commands the web server gives the ingest workers (LED, rename), and their one JSON line.

They travel through the named pipe (one machine, `sensorhub.ingest.ledpipe`) or, across machines, through the
broker on COMMAND_TOPIC, a topic that only the web server's broker user may publish and only the ingest
client's may read (`mqtt/acl.devices`). Either way, the same line:

    {"cmd": "led", "device": 3, "session": "1743946777.603371", "on": true}
    {"cmd": "rename", "device": 3, "name": "salle B"}
"""

from __future__ import annotations

import json
import select
from dataclasses import dataclass
from typing import Final

from sensorhub.errors import PayloadError, PipeError
from sensorhub.protocol import check_name, check_session

#: The longest line, newline included: far below PIPE_BUF, so that a line is written by one write() and lines
#: of concurrent writers never interleave; a command is also far below the broker's `max_packet_size` (200).
MAX_COMMAND: Final = 512
assert MAX_COMMAND < select.PIPE_BUF
#: The server-only broker topic of the commands (SENSORHUB_COMMANDS=broker).
COMMAND_TOPIC: Final = "sensorhub/commands"
#: A LED command not taken by a worker within this many seconds is dropped by the broker (MQTT 5 message
#: expiry): switching a LED minutes after the click would surprise more than not switching it.
LED_EXPIRY: Final = 10
#: A rename waits longer for a worker: the page said it is pending, and it takes effect at the next session.
RENAME_EXPIRY: Final = 3600


@dataclass(frozen=True, slots=True)
class LedRequest:
    """Switch a device's LED, if it is still online in `session`."""

    device_id: int
    session: str
    on: bool


@dataclass(frozen=True, slots=True)
class RenameRequest:
    """Give a device a new name (it takes effect in the device's next session)."""

    device_id: int
    name: str


Command = LedRequest | RenameRequest


def format_command(command: Command) -> bytes:
    """One line of the command format."""
    if isinstance(command, LedRequest):
        body: dict[str, object] = {"cmd": "led", "device": command.device_id, "session": command.session,
                                   "on": command.on}
    else:
        body = {"cmd": "rename", "device": command.device_id, "name": command.name}
    line = json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"
    if len(line) > MAX_COMMAND:
        raise PipeError(f"command of {len(line)} bytes is longer than {MAX_COMMAND}")
    return line


def parse_command(line: bytes) -> Command:
    """Parse and validate one line (without or with its newline); raise PayloadError if it is bad."""
    try:
        body = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PayloadError("command is not JSON", "pipe-json") from None
    if not isinstance(body, dict):
        raise PayloadError("command is not a JSON object", "pipe-json")
    device = body.get("device")
    if not isinstance(device, int) or isinstance(device, bool) or device < 1:
        raise PayloadError("command needs a positive integer 'device'", "pipe-field")
    kind = body.get("cmd")
    if kind == "led" and set(body) == {"cmd", "device", "session", "on"}:
        session, on = body["session"], body["on"]
        if not isinstance(session, str) or not isinstance(on, bool):
            raise PayloadError("led command needs a string 'session' and a boolean 'on'", "pipe-field")
        return LedRequest(device, check_session(session), on)
    if kind == "rename" and set(body) == {"cmd", "device", "name"}:
        name = body["name"]
        if not isinstance(name, str):
            raise PayloadError("rename command needs a string 'name'", "pipe-field")
        return RenameRequest(device, check_name(name))
    raise PayloadError(f"unknown command {str(kind)[:20]!r} or wrong fields", "pipe-field")


def expiry(command: Command) -> int:
    """Seconds the broker keeps `command` for a worker before dropping it."""
    return LED_EXPIRY if isinstance(command, LedRequest) else RENAME_EXPIRY
