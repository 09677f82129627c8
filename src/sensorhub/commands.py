"""The commands the web server gives the ingest workers (LED, rename), and their one JSON line.

They travel through the named pipe (one machine, `sensorhub.ingest.ledpipe`) or, across machines, through the
broker on COMMAND_TOPIC, a topic that only the web server's broker user may publish and only the ingest
client's may read (`mqtt/acl.devices`). Either way, the same line:

    {"cmd": "led", "device": 3, "session": "1743946777.603371", "on": true}
    {"cmd": "rename", "device": 3, "name": "salle B"}

Through the broker, a command is an MQTT 5 request: its Response Topic (under REPLY_PREFIX, the web server
process's own) and Correlation Data tell the worker that takes it where to answer, once its batch is
committed, with the engine's Outcome as the payload (`sent`, `offline`, ...). The pipe is one way: no answer.
"""

from __future__ import annotations

import json
import select
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from sensorhub.errors import PayloadError, PipeError
from sensorhub.protocol import check_name, check_session

#: The longest line, newline included: far below PIPE_BUF, so that a line is written by one write() and lines
#: of concurrent writers never interleave; a command is also far below the broker's `max_packet_size` (200).
MAX_COMMAND: Final = 512
assert MAX_COMMAND < select.PIPE_BUF
#: The server-only broker topic of the commands (SENSORHUB_COMMANDS=broker).
COMMAND_TOPIC: Final = "sensorhub/commands"
#: The workers' answers to the web server's commands: REPLY_PREFIX + the key of one web server process. Only
#: the workers' broker user may publish there, only the web server's may read (`mqtt/acl.devices`).
REPLY_PREFIX: Final = "sensorhub/replies/"
#: A command not taken by a worker within this many seconds is dropped by the broker (MQTT 5 message expiry).
#: The broker counts whole seconds and drops a message only once the second after its expiry has begun, so a
#: worker may still get it up to COMMAND_EXPIRY + 1 s after the web server published it: the web server waits
#: longer than that for the answer (sensorhub.web.relay.REPLY_WAIT), and a command it gave up on is never
#: carried out by a worker that comes back later.
COMMAND_EXPIRY: Final = 1


class Outcome(StrEnum):
    """What the worker that took a command did with it: the payload of its answer."""

    #: LED: published on `led/command` to the device, online in the command's session.
    SENT = "sent"
    #: Rename: recorded in the database (or the device already had that name).
    RENAMED = "renamed"
    #: LED: the device is not online in the command's session (it left, or joined again since).
    OFFLINE = "offline"
    #: No device has that id.
    UNKNOWN = "unknown"
    #: Rename: another device has that name, or uses it in its current session.
    TAKEN = "taken"


@dataclass(frozen=True, slots=True)
class Reply:
    """Where and how to answer a command that came through the broker, and until when it is worth carrying out."""

    topic: str
    correlation: bytes
    #: time.monotonic() after which the command is dropped, not carried out: its answer would reach the web
    #: server after it stopped waiting (and told its caller the command failed).
    deadline: float


#: The session of a LedRequest that means "the one the device is in when the worker decides" (Home Assistant's
#: commands, which know no session; sensorhub.ingest.homeassistant). Never on the pipe nor the broker's command
#: topic: `parse_command` refuses an empty session.
CURRENT_SESSION: Final = ""


@dataclass(frozen=True, slots=True)
class LedRequest:
    """Switch a device's LED, if it is still online in `session` (CURRENT_SESSION: in its current session)."""

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
