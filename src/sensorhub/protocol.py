"""The MQTT protocol of the specification: channels, QoS, sizes, text rules, payload parsing and formatting.

Pure, no I/O. Every rule lives here once: the database's CHECK constraints, the web API's messages and the
browser's checks (rendered into the page as data, see `browser_data`) are all generated from it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from sensorhub.errors import PayloadError

#: Separates the fields of every payload; never part of a name or a session id.
SEPARATOR: Final = ";"
# Sizes from the specification: a MAC address is exactly 17 characters, a name at most 29 (30 with the
# ESP32's trailing zero), a session id at most 17 (18); a reading's value at most 3 ("100").
MAC_LENGTH: Final = 17
MAX_NAME: Final = 29
MAX_SESSION: Final = 17
MAX_VALUE: Final = 3


@dataclass(frozen=True, slots=True)
class Message:
    """One message in the two languages sensorhub speaks: English (logs, protocol) and French (web UI)."""

    en: str
    fr: str


@dataclass(frozen=True, slots=True)
class TextRule:
    """How a text field of the protocol is written: 1 to `max_length` printable ASCII characters, never the
    separator; with `spaces`, inner spaces are allowed (not at either end), otherwise none at all."""

    label: str
    max_length: int
    spaces: bool
    messages: Mapping[str, Message]
    #: Whether `text` follows the rule: `problem(text) is None` as one expression, for the hot path.
    accepts: Callable[[str], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        longest = self.max_length
        if self.spaces:
            def accepts(text: str) -> bool:
                return (0 < len(text) <= longest and text.isascii() and text.isprintable() and SEPARATOR not in text
                        and text[0] != " " and text[-1] != " ")
        else:
            def accepts(text: str) -> bool:
                return (0 < len(text) <= longest and text.isascii() and text.isprintable() and " " not in text
                        and SEPARATOR not in text)
        object.__setattr__(self, "accepts", accepts)

    def problem(self, text: str) -> str | None:
        """The code of the first part of the rule `text` breaks (a key of `messages`), or None."""
        if not text:
            return "empty"
        if len(text) > self.max_length:
            return "too-long"
        if not text.isascii() or not text.isprintable() or (not self.spaces and " " in text):
            return "characters"
        if SEPARATOR in text:
            return "separator"
        if self.spaces and (text[0] == " " or text[-1] == " "):
            return "edge-spaces"
        return None

    @property
    def characters(self) -> str:
        """The allowed characters as a range, the same in a SQLite GLOB and a JavaScript class: ` -~`."""
        return " -~" if self.spaces else "!-~"

    def sql_check(self, column: str) -> str:
        """The rule as a SQLite boolean expression on `column` (for a CHECK constraint)."""
        sql = (f"length({column}) BETWEEN 1 AND {self.max_length} AND instr({column}, '{SEPARATOR}') = 0 "
               f"AND {column} NOT GLOB '*[^{self.characters}]*'")
        if self.spaces:
            sql += f" AND {column} = trim({column})"
        return sql

    def browser_data(self) -> dict[str, object]:
        """The rule for the web pages' scripts, with the French messages they show."""
        return {"maxLength": self.max_length, "characters": self.characters, "spaces": self.spaces,
                "messages": {code: message.fr for code, message in self.messages.items()}}


NAME_RULE: Final = TextRule("name", MAX_NAME, spaces=True, messages={
    "empty": Message("a name cannot be empty", "le nom ne peut pas être vide"),
    "too-long": Message(f"a name has at most {MAX_NAME} characters", f"le nom a au plus {MAX_NAME} caractères"),
    "characters": Message("a name is made of printable ASCII characters",
                          "le nom ne peut contenir que des caractères ASCII imprimables (sans accents)"),
    "separator": Message(f"a name cannot contain '{SEPARATOR}'", f"le nom ne peut pas contenir de « {SEPARATOR} »"),
    "edge-spaces": Message("a name cannot start or end with a space",
                           "le nom ne peut ni commencer ni finir par une espace"),
})
_SESSION_MESSAGE: Final = Message(
    f"a session id has 1 to {MAX_SESSION} characters, no space or '{SEPARATOR}'",
    f"un identifiant de session a de 1 à {MAX_SESSION} caractères, sans espace ni « {SEPARATOR} »",
)
SESSION_RULE: Final = TextRule("session id", MAX_SESSION, spaces=False, messages=dict.fromkeys(
    ("empty", "too-long", "characters", "separator"), _SESSION_MESSAGE))


def name_taken(name: str, device_id: int | None, holders: Iterable[tuple[int, str, str] | None]) -> bool:
    """Whether a device other than `device_id` holds `name`, among `holders` given as (id, name, session name).

    Payloads name a device by the name of its session, people by its current name: a name belongs to one
    device in both roles, so a rename never makes a payload ambiguous. The database's UNIQUE constraints
    and triggers (db/engine.py) refuse what this would refuse; callers check first to say why.
    """
    return any(holder is not None and holder[0] != device_id and name in (holder[1], holder[2])
               for holder in holders)


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
#: What the /capteurs page subscribes to (read only), each channel at its own QoS.
BROWSER_SUBSCRIPTIONS: Final[tuple[tuple[str, int], ...]] = tuple((str(t), QOS[t]) for t in DEVICE_TOPICS)


def browser_data() -> dict[str, object]:
    """What the web pages' scripts know of the protocol, rendered into each page as JSON."""
    return {
        "separator": SEPARATOR,
        "topics": {topic.name: str(topic) for topic in Topic},
        "subscriptions": {topic: {"qos": qos} for topic, qos in BROWSER_SUBSCRIPTIONS},
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
