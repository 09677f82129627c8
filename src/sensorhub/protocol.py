"""The MQTT protocol of the specification: channels, QoS, payload parsing and formatting. Pure, no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from sensorhub.errors import PayloadError

# Sizes from the specification: a name is at most 29 characters (30 with the ESP32's trailing zero),
# a session id at most 17 (18), a MAC address exactly 17.
MAX_NAME: Final = 29
MAX_SESSION: Final = 17
# The longest valid device payload is name;session;100 = 29 + 1 + 17 + 1 + 3 = 51 bytes.
MAX_PAYLOAD: Final = 64


class Topic(StrEnum):
    """The channels of the specification."""

    LED_COMMAND = "led/command"
    LED_STATUS = "led/status"
    BUTTON_STATUS = "button/status"
    PHOTORESISTOR_STATUS = "photoresistor/status"
    JOIN = "state/join"
    LEAVE = "state/leave"
    NAME_ASSIGN = "state/nameAssign"


class Kind(StrEnum):
    """The kinds of reading a device reports; the values are the JSON API's keys."""

    LED = "led"
    BUTTON = "button"
    LIGHT = "light"


#: The QoS the specification gives each channel.
QOS: Final[dict[Topic, int]] = {
    Topic.LED_COMMAND: 1,
    Topic.LED_STATUS: 1,
    Topic.BUTTON_STATUS: 0,
    Topic.PHOTORESISTOR_STATUS: 0,
    Topic.JOIN: 2,
    Topic.LEAVE: 2,
    Topic.NAME_ASSIGN: 2,
}

READING_TOPICS: Final[dict[str, Kind]] = {
    Topic.LED_STATUS: Kind.LED,
    Topic.BUTTON_STATUS: Kind.BUTTON,
    Topic.PHOTORESISTOR_STATUS: Kind.LIGHT,
}
KIND_TOPICS: Final[dict[Kind, Topic]] = {
    Kind.LED: Topic.LED_STATUS,
    Kind.BUTTON: Topic.BUTTON_STATUS,
    Kind.LIGHT: Topic.PHOTORESISTOR_STATUS,
}

#: What the ingest client subscribes to. QoS 2 everywhere: a subscription's QoS is a maximum, so each
#: message arrives at the QoS its device used and is never downgraded.
SERVER_SUBSCRIPTIONS: Final[tuple[tuple[str, int], ...]] = tuple(
    (str(t), 2) for t in (Topic.JOIN, Topic.LEAVE, Topic.LED_STATUS, Topic.BUTTON_STATUS,
                          Topic.PHOTORESISTOR_STATUS)
)

_MAC_RE: Final = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")
_DIGITS: Final = frozenset("0123456789")


@dataclass(frozen=True, slots=True)
class MacJoin:
    """`state/join` with a MAC address: the device asks for a (new) name and session."""

    mac: str


@dataclass(frozen=True, slots=True)
class SessionRef:
    """`name;session`: a `state/join` that starts a session, or a `state/leave`."""

    name: str
    session: str


@dataclass(frozen=True, slots=True)
class Reading:
    """A value published on led/status, button/status or photoresistor/status."""

    kind: Kind
    name: str
    session: str
    value: int


@dataclass(frozen=True, slots=True)
class NameAssign:
    """`state/nameAssign`: MAC;name;session, published by the server."""

    mac: str
    name: str
    session: str


@dataclass(frozen=True, slots=True)
class LedCommand:
    """`led/command`: name;session;1|0, published by the server."""

    name: str
    session: str
    on: bool


def _text(payload: bytes) -> str:
    if len(payload) > MAX_PAYLOAD:
        raise PayloadError(f"payload of {len(payload)} bytes is longer than {MAX_PAYLOAD}", "oversize")
    try:
        text = payload.decode("ascii")
    except UnicodeDecodeError:
        raise PayloadError("payload is not ASCII text", "not-ascii") from None
    if not text.isprintable():
        raise PayloadError("payload holds control characters", "not-ascii")
    return text


def _fields(payload: bytes, count: int, shape: str) -> list[str]:
    parts = _text(payload).split(";")
    if len(parts) != count:
        raise PayloadError(f"expected {shape}, got {len(parts)} field(s)", "field-count")
    if "" in parts:
        raise PayloadError(f"expected {shape}, a field is empty", "empty-field")
    return parts


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a device name, or None if it can."""
    if not name:
        return "a name cannot be empty"
    if len(name) > MAX_NAME:
        return f"a name has at most {MAX_NAME} characters"
    if not name.isascii() or not name.isprintable():
        return "a name is made of printable ASCII characters"
    if ";" in name:
        return "a name cannot contain ';'"
    if name != name.strip():
        return "a name cannot start or end with a space"
    return None


def check_name(name: str) -> str:
    """Return `name` if it is a valid device name, else raise PayloadError."""
    problem = name_problem(name)
    if problem is not None:
        raise PayloadError(problem, "bad-name")
    return name


def check_session(session: str) -> str:
    """Return `session` if it is a valid session id, else raise PayloadError."""
    if not session or len(session) > MAX_SESSION or " " in session or ";" in session:
        raise PayloadError(f"a session id has 1 to {MAX_SESSION} characters, no space or ';'", "bad-session")
    return session


def normalize_mac(mac: str) -> str:
    """Return the MAC address in upper case, or raise PayloadError if it is not XX:XX:XX:XX:XX:XX."""
    if not _MAC_RE.fullmatch(mac):
        raise PayloadError("a MAC address looks like 61:EC:ED:3B:25:B1", "bad-mac")
    return mac.upper()


def parse_session_ref(payload: bytes) -> SessionRef:
    """Parse `name;session` (state/join after the reconnection, state/leave)."""
    name, session = _fields(payload, 2, "name;session")
    return SessionRef(check_name(name), check_session(session))


def parse_join(payload: bytes) -> MacJoin | SessionRef:
    """Parse a `state/join` payload: a MAC address, or `name;session`."""
    text = _text(payload)
    if ";" not in text:
        return MacJoin(normalize_mac(text))
    return parse_session_ref(payload)


def _binary(value: str) -> int:
    if value == "1":
        return 1
    if value == "0":
        return 0
    raise PayloadError(f"value {value!r} is not 1 or 0", "bad-value")


def _percent(value: str) -> int:
    if len(value) > 3 or not _DIGITS.issuperset(value):
        raise PayloadError(f"value {value!r} is not a whole percentage", "bad-value")
    number = int(value)
    if number > 100:
        raise PayloadError(f"value {number} is above 100 %", "bad-value")
    return number


def parse_reading(kind: Kind, payload: bytes) -> Reading:
    """Parse `name;session;value` published on a status channel."""
    name, session, value = _fields(payload, 3, "name;session;value")
    number = _percent(value) if kind is Kind.LIGHT else _binary(value)
    return Reading(kind, check_name(name), check_session(session), number)


def parse_server_message(topic: str, payload: bytes) -> MacJoin | SessionRef | Reading:
    """Parse anything the ingest client receives; `state/leave` gives a SessionRef too."""
    kind = READING_TOPICS.get(topic)
    if kind is not None:
        return parse_reading(kind, payload)
    if topic == Topic.JOIN:
        return parse_join(payload)
    if topic == Topic.LEAVE:
        return parse_session_ref(payload)
    raise PayloadError(f"unexpected topic {topic!r}", "topic")


def parse_name_assign(payload: bytes) -> NameAssign:
    """Parse `MAC;name;session` (device side)."""
    mac, name, session = _fields(payload, 3, "MAC;name;session")
    return NameAssign(normalize_mac(mac), check_name(name), check_session(session))


def parse_led_command(payload: bytes) -> LedCommand:
    """Parse `name;session;1|0` (device side)."""
    name, session, value = _fields(payload, 3, "name;session;1|0")
    return LedCommand(check_name(name), check_session(session), _binary(value) == 1)


def format_session_ref(name: str, session: str) -> bytes:
    """`name;session`, for state/join and state/leave."""
    return f"{name};{session}".encode("ascii")


def format_reading(name: str, session: str, value: int) -> bytes:
    """`name;session;value`, for the status channels."""
    return f"{name};{session};{value}".encode("ascii")


def format_name_assign(mac: str, name: str, session: str) -> bytes:
    """`MAC;name;session`, for state/nameAssign."""
    return f"{mac};{name};{session}".encode("ascii")


def format_led_command(name: str, session: str, on: bool) -> bytes:
    """`name;session;1|0`, for led/command."""
    return f"{name};{session};{1 if on else 0}".encode("ascii")


def new_session_id(previous: str | None, now: float) -> str:
    """A session id in the specification's form (`1743946777.603371`), later than `previous`.

    Microseconds since the epoch: 17 characters until the year 2286. Never equal to the previous id,
    even if the clock stands still or goes back (a Raspberry Pi without RTC before NTP).
    """
    micros = int(now * 1_000_000)
    if previous:
        seconds, _, fraction = previous.partition(".")
        if seconds.isdigit() and fraction.isdigit() and len(fraction) == 6:
            micros = max(micros, int(seconds) * 1_000_000 + int(fraction) + 1)
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"
