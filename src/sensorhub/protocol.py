"""The MQTT protocol of the specification: channels, QoS, payload sizes, parsing and formatting. Pure, no I/O.

The sizes of the payloads derive from those of their fields, whose rules are in rules.py.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from sensorhub.errors import PayloadError
from sensorhub.rules import MAC_LENGTH as MAC_LENGTH
from sensorhub.rules import MAX_NAME as MAX_NAME
from sensorhub.rules import MAX_SESSION as MAX_SESSION
from sensorhub.rules import MAX_VALUE as MAX_VALUE
from sensorhub.rules import NAME_RULE as NAME_RULE
from sensorhub.rules import SEPARATOR as SEPARATOR
from sensorhub.rules import SESSION_RULE as SESSION_RULE


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

_SESSION_REF: Final = MAX_NAME + 1 + MAX_SESSION
#: The longest valid payload of each channel, derived from the sizes above.
MAX_SIZES: Final[dict[Topic, int]] = {
    Topic.JOIN: max(MAC_LENGTH, _SESSION_REF),
    Topic.LEAVE: _SESSION_REF,
    Topic.NAME_ASSIGN: MAC_LENGTH + 1 + _SESSION_REF,
    Topic.LED_COMMAND: _SESSION_REF + 2,
    Topic.LED_STATUS: _SESSION_REF + 2,
    Topic.BUTTON_STATUS: _SESSION_REF + 2,
    Topic.PHOTORESISTOR_STATUS: _SESSION_REF + 1 + MAX_VALUE,
}
#: The longest valid payload of any channel (state/nameAssign: 17 + 1 + 29 + 1 + 17 = 65 bytes).
MAX_PAYLOAD: Final = max(MAX_SIZES.values())

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

#: The channels devices publish on (the simulator counts its messages per channel).
DEVICE_TOPICS: Final[tuple[Topic, ...]] = (Topic.JOIN, Topic.LEAVE, Topic.LED_STATUS, Topic.BUTTON_STATUS,
                                           Topic.PHOTORESISTOR_STATUS)
#: What the ingest client subscribes to. QoS 2 everywhere: a subscription's QoS is a maximum, so each
#: message arrives at the QoS its device used and is never downgraded.
SERVER_SUBSCRIPTIONS: Final[tuple[tuple[str, int], ...]] = tuple((str(t), 2) for t in DEVICE_TOPICS)
#: The MQTT 5 shared-subscription group of the ingest workers (`$share/sensorhub/<channel>`): the broker hands each
#: message to one of them. Only their broker user may join it (sensorhub.dynsec, docs/security.md).
SHARE_GROUP: Final = "sensorhub"
#: The broker's `max_packet_size` (mqtt/mosquitto.conf): it disconnects a client that sends a longer packet.
MAX_PACKET: Final = 200
#: The broker's `max_packet_size` when Home Assistant uses it (SENSORHUB_HOMEASSISTANT without _URL): a discovery
#: config is about 350 bytes, and Home Assistant subscribes to all its state topics in one packet when it
#: (re)connects, about 110 bytes a board (docs/homeassistant.md, docs/security.md).
HA_MAX_PACKET: Final = 16384
#: The server's feed of stored readings for the /capteurs page: after each commit, the ingest client publishes
#: what it stored, many readings a message (docs/protocol.md, "The live feed").
LIVE_TOPIC: Final = "sensorhub/live"
#: A QoS 0 PUBLISH on LIVE_TOPIC without properties: type, remaining length (2 bytes from 128), topic, properties.
LIVE_PAYLOAD_MAX: Final = MAX_PACKET - (1 + 2 + 2 + len(LIVE_TOPIC) + 1)
#: Each reading of the feed is a line `device id;code;value`, the code saying its kind.
LIVE_CODES: Final[dict[Kind, str]] = {Kind.LED: "l", Kind.BUTTON: "b", Kind.LIGHT: "p"}
#: What the /capteurs page subscribes to (read only): presence from the devices' channels, readings from the
#: live feed (every device's readings, a message each, cost a 2,000-device page most of a core).
BROWSER_SUBSCRIPTIONS: Final[tuple[tuple[str, int], ...]] = (
    (str(Topic.JOIN), QOS[Topic.JOIN]), (str(Topic.LEAVE), QOS[Topic.LEAVE]), (LIVE_TOPIC, 0))


def browser_data() -> dict[str, object]:
    """What the web pages' scripts know of the protocol, rendered into each page as JSON."""
    return {
        "separator": SEPARATOR,
        "topics": {topic.name: str(topic) for topic in Topic},
        "subscriptions": {topic: {"qos": qos} for topic, qos in BROWSER_SUBSCRIPTIONS},
        "live": {"topic": LIVE_TOPIC, "codes": {code: str(kind) for kind, code in LIVE_CODES.items()}},
        "name": NAME_RULE.browser_data(),
    }


_MAC_RE: Final = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")
_DIGITS: Final = frozenset("0123456789")


@dataclass(frozen=True, slots=True)
class MacJoin:
    """`state/join` with a MAC address: the device asks for a (new) name and session."""

    mac: str


@dataclass(frozen=True, slots=True)
class SessionRef:
    """`state/join` with `name;session`: the device starts the session it was given."""

    name: str
    session: str


@dataclass(frozen=True, slots=True)
class Leave:
    """`state/leave` with `name;session`: the device left (or the broker published its Will)."""

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


#: What the ingest client receives from devices.
DeviceMessage = MacJoin | SessionRef | Leave | Reading

# For the hot path, keyed by plain strings: hashing an enum member calls Python code.
_READINGS: Final[dict[str, tuple[Kind, int]]] = {
    str(topic): (kind, MAX_SIZES[KIND_TOPICS[kind]]) for topic, kind in READING_TOPICS.items()
}
_JOIN_MAX: Final = MAX_SIZES[Topic.JOIN]
_LEAVE_MAX: Final = MAX_SIZES[Topic.LEAVE]


def _text(payload: bytes, limit: int) -> str:
    if len(payload) > limit:
        raise PayloadError(f"payload of {len(payload)} bytes is longer than {limit}", "oversize")
    try:
        text = payload.decode("ascii")
    except UnicodeDecodeError:
        raise PayloadError("payload is not ASCII text", "not-ascii") from None
    if not text.isprintable():
        raise PayloadError("payload holds control characters", "not-ascii")
    return text


def _fields(payload: bytes, limit: int, count: int, shape: str) -> list[str]:
    parts = _text(payload, limit).split(SEPARATOR)
    if len(parts) != count:
        raise PayloadError(f"expected {shape}, got {len(parts)} field(s)", "field-count")
    if "" in parts:
        raise PayloadError(f"expected {shape}, a field is empty", "empty-field")
    return parts


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a device name (in English), or None if it can."""
    code = NAME_RULE.problem(name)
    return None if code is None else NAME_RULE.messages[code].en


_name_ok: Final = NAME_RULE.accepts
_session_ok: Final = SESSION_RULE.accepts


def check_name(name: str) -> str:
    """Return `name` if it is a valid device name, else raise PayloadError."""
    if _name_ok(name):
        return name
    raise PayloadError(NAME_RULE.messages[NAME_RULE.problem(name) or "characters"].en, "bad-name")


def check_session(session: str) -> str:
    """Return `session` if it is a valid session id, else raise PayloadError."""
    if _session_ok(session):
        return session
    raise PayloadError(SESSION_RULE.messages[SESSION_RULE.problem(session) or "characters"].en, "bad-session")


def normalize_mac(mac: str) -> str:
    """Return the MAC address in upper case, or raise PayloadError if it is not XX:XX:XX:XX:XX:XX."""
    if not _MAC_RE.fullmatch(mac):
        raise PayloadError("a MAC address looks like 61:EC:ED:3B:25:B1", "bad-mac")
    return mac.upper()


def parse_session_ref(payload: bytes) -> SessionRef:
    """Parse `name;session` on state/join (the device starts its session)."""
    name, session = _fields(payload, _JOIN_MAX, 2, "name;session")
    return SessionRef(check_name(name), check_session(session))


def parse_leave(payload: bytes) -> Leave:
    """Parse `name;session` on state/leave."""
    name, session = _fields(payload, _LEAVE_MAX, 2, "name;session")
    return Leave(check_name(name), check_session(session))


def parse_join(payload: bytes) -> MacJoin | SessionRef:
    """Parse a `state/join` payload: a MAC address, or `name;session`."""
    text = _text(payload, _JOIN_MAX)
    if SEPARATOR not in text:
        return MacJoin(normalize_mac(text))
    return parse_session_ref(payload)


def _binary(value: str) -> int:
    if value == "1":
        return 1
    if value == "0":
        return 0
    raise PayloadError(f"value {value!r} is not 1 or 0", "bad-value")


def _percent(value: str) -> int:
    if len(value) > MAX_VALUE or not _DIGITS.issuperset(value):
        raise PayloadError(f"value {value!r} is not a whole percentage", "bad-value")
    number = int(value)
    if number > 100:
        raise PayloadError(f"value {number} is above 100 %", "bad-value")
    return number


def _reading(kind: Kind, payload: bytes, limit: int) -> Reading:
    name, session, value = _fields(payload, limit, 3, "name;session;value")
    number = _percent(value) if kind is Kind.LIGHT else _binary(value)
    return Reading(kind, check_name(name), check_session(session), number)


def parse_reading(kind: Kind, payload: bytes) -> Reading:
    """Parse `name;session;value` published on a status channel."""
    return _reading(kind, payload, MAX_SIZES[KIND_TOPICS[kind]])


def parse_server_message(topic: str, payload: bytes) -> DeviceMessage:
    """Parse anything the ingest client receives from a device."""
    reading = _READINGS.get(topic)
    if reading is not None:
        return _reading(reading[0], payload, reading[1])
    if topic == Topic.JOIN:
        return parse_join(payload)
    if topic == Topic.LEAVE:
        return parse_leave(payload)
    raise PayloadError(f"unexpected topic {topic!r}", "topic")


def parse_name_assign(payload: bytes) -> NameAssign:
    """Parse `MAC;name;session` (device side)."""
    mac, name, session = _fields(payload, MAX_SIZES[Topic.NAME_ASSIGN], 3, "MAC;name;session")
    return NameAssign(normalize_mac(mac), check_name(name), check_session(session))


def parse_led_command(payload: bytes) -> LedCommand:
    """Parse `name;session;1|0` (device side)."""
    name, session, value = _fields(payload, MAX_SIZES[Topic.LED_COMMAND], 3, "name;session;1|0")
    return LedCommand(check_name(name), check_session(session), _binary(value) == 1)


def format_session_ref(name: str, session: str) -> bytes:
    """`name;session`, for state/join and state/leave."""
    return f"{name};{session}".encode("ascii")


def format_reading(name: str, session: str, value: int) -> bytes:
    """`name;session;value`, for the status channels."""
    return f"{name};{session};{value}".encode("ascii")


def format_live(readings: Iterable[tuple[int, Kind, int]]) -> list[bytes]:
    """The live feed's payloads for `readings` (device id, kind, value), in their order: lines
    `id;code;value`, as many a payload as fit in LIVE_PAYLOAD_MAX bytes."""
    payloads: list[bytes] = []
    lines: list[str] = []
    size = -1  # no newline before the first line
    for device_id, kind, value in readings:
        line = f"{device_id};{LIVE_CODES[kind]};{value}"
        if lines and size + 1 + len(line) > LIVE_PAYLOAD_MAX:
            payloads.append("\n".join(lines).encode("ascii"))
            lines, size = [], -1
        lines.append(line)
        size += 1 + len(line)
    if lines:
        payloads.append("\n".join(lines).encode("ascii"))
    return payloads


def format_name_assign(mac: str, name: str, session: str) -> bytes:
    """`MAC;name;session`, for state/nameAssign."""
    return f"{mac};{name};{session}".encode("ascii")


def format_led_command(name: str, session: str, on: bool) -> bytes:
    """`name;session;1|0`, for led/command."""
    return f"{name};{session};{1 if on else 0}".encode("ascii")


#: The characters of a session id the server hands out: letters and digits, in SESSION_RULE and easy on a firmware.
SESSION_ALPHABET: Final = string.ascii_letters + string.digits


def new_session_id(previous: str | None = None) -> str:
    """A new session id: MAX_SESSION (17) random letters and digits from `secrets`, never equal to `previous`.

    About 101 bits of chance: nothing a visitor sees (not the time the device was named, which the specification's
    example `1743946777.603371` is, and which /appareil/<id> shows) tells it. A session id is only ever compared
    for equality, so it need not grow.
    """
    while True:
        session = "".join(secrets.choice(SESSION_ALPHABET) for _ in range(MAX_SESSION))
        if session != previous:
            return session
