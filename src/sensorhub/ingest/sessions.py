"""The session rules of the protocol as a pure engine: typed messages in, decisions out, no I/O.

`Sessions.apply` takes a batch of received messages and returns what must happen because of them: rows to
insert or update, messages to publish, acknowledgements to send once committed, and what was discarded
and why. It keeps the current sessions in memory (a copy of the device table, which stays the authority:
the writer rebuilds the engine from it whenever a batch fails) and reads no clock: every message carries
its time of arrival. Its one source of chance is the session ids it hands out (protocol.new_session_id).

Presence is the database's to decide, not the engine's: with several workers, the join of a board may reach one
worker and its leave another, so an engine's `online` is only what it last saw. The engine says what a message
asks (`Presence`: this device joined, left, was heard again; `Sweep`: devices nobody heard from since a time go
offline) and the writer applies it in the database on a condition that every worker sees (db/presence.py
says which); `Decisions.presence` then holds what the database took.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from sensorhub.commands import CURRENT_SESSION, LedRequest, Outcome, RenameRequest, Reply
from sensorhub.ingest.limits import Limits
from sensorhub.protocol import (
    KIND_TOPICS,
    QOS,
    Kind,
    Leave,
    MacJoin,
    Reading,
    SessionRef,
    Topic,
    format_led_command,
    format_name_assign,
    format_reading,
    format_session_ref,
    new_session_id,
)
from sensorhub.rules import name_taken
from sensorhub.timestamps import format_micros


@dataclass(slots=True)
class Device:
    """What the engine knows of a device: a copy of its row, times in microseconds since the epoch."""

    id: int
    name: str
    session_name: str
    mac: str
    session_id: str
    online: bool
    joined_us: int
    last_seen_us: int
    #: Marked offline only because the broker could not be reached: a reading in its session brings it back.
    lost: bool = False
    #: When its presence was last decided (the row's presence_at; 0: never): a join or a leave is stamped later.
    presence_us: int = 0


# -- what goes in ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerSessionLost:
    """The broker had no session for the client: Wills may have been published while nobody listened."""


@dataclass(frozen=True, slots=True)
class BrokerOutage:
    """The broker has been out of reach since `since` (µs since the epoch): the boards' Wills are lost with it, so
    every online device that no worker heard from since then goes offline until it is heard from again."""

    since: int


@dataclass(frozen=True, slots=True)
class SweepDue:
    """The time given by `Sessions.sweep_due` has come: devices not heard from since the broker lost our session
    go offline."""


#: Everything the writer takes: what the devices and the web server send, and the client's own events.
Incoming = (Reading | MacJoin | SessionRef | Leave | LedRequest | RenameRequest | BrokerSessionLost
            | BrokerOutage | SweepDue)


@dataclass(slots=True)  # not frozen: a frozen dataclass takes 3 times longer to build, once per message
class Inbound:
    """A message, when it arrived (µs since the epoch) and how to acknowledge it (QoS 0: nothing to do); a
    command from the broker, where to answer it."""

    message: Incoming
    at: int
    mid: int = 0
    qos: int = 0
    reply: Reply | None = None


#: Messages after which a batch is cut: a sweep sees every reading before it in the database, and what comes
#: after it is decided on what it took.
_CUTS = (BrokerSessionLost, BrokerOutage, SweepDue)


def cut_at_sweeps(batch: list[Inbound]) -> list[list[Inbound]]:
    """`batch` cut after each message that may sweep (usually: `batch` whole), each part decided on its own."""
    parts: list[list[Inbound]] = []
    start = 0
    for index, item in enumerate(batch):
        if type(item.message) in _CUTS:
            parts.append(batch[start:index + 1])
            start = index + 1
    if start < len(batch):
        parts.append(batch[start:] if start else batch)
    return parts


def default_name(device_id: int) -> str:
    """The name a new device gets: `capteur01`, `capteur02`, ... (a suffix when a rename took it)."""
    return f"capteur{device_id:02d}"


def wire(message: Incoming) -> tuple[str, str]:
    """The channel and payload a message came as (for the quarantine); the pipe's commands as `pipe`."""
    match message:
        case Reading(kind, name, session, value):
            return KIND_TOPICS[kind], format_reading(name, session, value).decode()
        case MacJoin(mac):
            return Topic.JOIN, mac
        case SessionRef(name, session):
            return Topic.JOIN, format_session_ref(name, session).decode()
        case Leave(name, session):
            return Topic.LEAVE, format_session_ref(name, session).decode()
        case _:
            return "pipe", repr(message)


# -- what comes out ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewDevice:
    """Insert a device row (offline, in its first session, named after itself in that session)."""

    id: int
    name: str
    mac: str
    session_id: str
    at: int


@dataclass(frozen=True, slots=True)
class NewSession:
    """A device's new session: its id, the name the device uses in it; the device is offline until it joins."""

    id: int
    session_id: str
    session_name: str
    #: When it started, for the session log (not part of the row).
    at: int = field(default=0, compare=False)


class Cause(Enum):
    """Why a device's presence changes."""

    JOIN = "join"  # it joined in its session
    LEAVE = "leave"  # it left (its Will, or a clean leave)
    BACK = "back"  # marked offline while the broker was out of reach, heard from again in its session
    SWEPT = "swept"  # nobody heard from it since the broker lost our session, or since it was out of reach


@dataclass(frozen=True, slots=True)
class Presence:
    """A device comes online or goes offline (in its session, if no later message decided otherwise)."""

    id: int
    online: bool
    #: When: the device's last_seen once the message is counted (the session log's time, and the order of two
    #: workers' decisions).
    at: int = field(default=0, compare=False)
    #: The session it happens in.
    session_id: str = field(default="", compare=False)
    cause: Cause = field(default=Cause.JOIN, compare=False)


@dataclass(frozen=True, slots=True)
class Sweep:
    """Every online device not heard from since `since` (by any worker: its last_seen) goes offline; `lost`: only
    because the broker was out of reach (a reading in its session brings it back). Always a batch's last change:
    it is applied once the batch's readings moved last_seen on."""

    since: int
    lost: bool


@dataclass(frozen=True, slots=True)
class Rename:
    """A device's name changes (the name it uses in its payloads changes at its next session)."""

    id: int
    name: str


Change = NewDevice | NewSession | Presence | Rename | Sweep


@dataclass(slots=True)
class Decisions:
    """What one batch decided, to be written in one transaction and carried out once it is committed."""

    #: Device rows to insert or update, in this order (each one may depend on the previous ones).
    changes: list[Change] = field(default_factory=list)
    #: Reading rows (device id, stored timestamp, value) per kind, inserted after the changes.
    readings: dict[Kind, list[tuple[int, str, int]]] = field(default_factory=lambda: {kind: [] for kind in Kind})
    #: Devices whose last_seen moved forward (write each one's `last_seen_us`).
    seen: dict[int, Device] = field(default_factory=dict)
    #: (topic, payload, QoS) to publish once committed.
    publishes: list[tuple[str, bytes, int]] = field(default_factory=list)
    #: (message id, QoS) to acknowledge once committed.
    acks: list[tuple[int, int]] = field(default_factory=list)
    #: (reason, detail) of each message discarded.
    drops: list[tuple[str, str]] = field(default_factory=list)
    #: What is worth a line in the log once committed.
    notes: list[str] = field(default_factory=list)
    #: The presence changes the database took (filled in by the writer: another worker may have decided first).
    presence: list[Presence] = field(default_factory=list)
    #: (where to answer, outcome) of each command that asked for an answer, to send once committed.
    replies: list[tuple[Reply, Outcome]] = field(default_factory=list)

    @property
    def stored(self) -> int:
        """Readings to be stored."""
        return sum(len(rows) for rows in self.readings.values())


class Sessions:
    """The devices and their current sessions; `apply` is the only way they change."""

    def __init__(self, devices: Iterable[Device] = (), next_id: int = 1, presence_timeout_us: int = 15_000_000,
                 *, exact: bool = True, new_session: Callable[[str | None], str] = new_session_id,
                 limits: Limits | None = None) -> None:
        self.presence_timeout_us = presence_timeout_us
        #: The flood limits (ingest/limits.py), shared with the engines rebuilt after this one; none by default.
        self.limits = limits if limits is not None else Limits.of()
        #: Where session ids come from: random ones (protocol.new_session_id); a test may make them repeatable.
        self.new_session = new_session
        #: The only worker on its database: what the engine holds is what the database holds, so a join of a
        #: device already online here, or a leave of one offline here, changes nothing and is not written.
        #: With several workers (False), every join and leave in a current session goes to the database.
        self.exact = exact
        self.by_id: dict[int, Device] = {}
        self.by_mac: dict[str, Device] = {}
        self.by_name: dict[str, Device] = {}
        self.by_session_name: dict[str, Device] = {}
        #: Devices this engine may hold as lost (a superset: `mark_lost` clears the others).
        self._lost: set[int] = set()
        for device in devices:
            self._index(device)
        self.next_id = max([next_id, *(device_id + 1 for device_id in self.by_id)])
        #: When a SweepDue is wanted (µs since the epoch), or None; and since when devices must have been heard.
        self.sweep_due: int | None = None
        self.sweep_since = 0

    def _index(self, device: Device) -> None:
        if device.lost:
            self._lost.add(device.id)
        self.by_id[device.id] = device
        self.by_mac[device.mac] = device
        self.by_name[device.name] = device
        self.by_session_name[device.session_name] = device

    def resume_presence_check(self, previous: Sessions) -> None:
        """Carry on a presence check `previous` had planned (after the writer rebuilt the engine from the table)."""
        self.sweep_due = previous.sweep_due
        self.sweep_since = previous.sweep_since

    def upsert(self, devices: Iterable[Device], next_id: int) -> None:
        """Take these rows as the database now holds them (another worker changed them)."""
        devices = list(devices)
        for device in devices:
            before = self.by_id.get(device.id)
            if before is not None:
                for index, key in ((self.by_mac, before.mac), (self.by_name, before.name),
                                   (self.by_session_name, before.session_name)):
                    if index.get(key) is before:
                        del index[key]
                # Stamps only move forward, whoever wrote the last one.
                device.last_seen_us = max(device.last_seen_us, before.last_seen_us)
            self._index(device)
        self.next_id = max(self.next_id, next_id, *(device.id + 1 for device in devices))

    def forget(self, device_ids: Iterable[int]) -> None:
        """The database no longer holds these devices (retention deleted them, or another worker did)."""
        gone = []
        for device_id in device_ids:
            device = self.by_id.pop(device_id, None)
            if device is None:
                continue
            gone.append(device_id)
            for index, key in ((self.by_mac, device.mac), (self.by_name, device.name),
                               (self.by_session_name, device.session_name)):
                if index.get(key) is device:
                    del index[key]
            self._lost.discard(device_id)
        self.limits.readings.forget(gone)

    def mark_lost(self, lost: Iterable[tuple[int, str]]) -> None:
        """Take the devices the database says are lost (device id, session), and only those, as lost."""
        lost_now = dict(lost)
        for device_id in self._lost - lost_now.keys():
            device = self.by_id.get(device_id)
            if device is not None:
                device.lost = False
        self._lost = set()
        for device_id, session in lost_now.items():
            device = self.by_id.get(device_id)
            if device is not None and device.session_id == session:
                device.lost = True
                device.online = False
                self._lost.add(device_id)

    def swept(self, rows: Iterable[tuple[int, str]], since: int, lost: bool) -> None:
        """The database took these devices (device id, session) offline in a sweep of `since`."""
        for device_id, session in rows:
            device = self.by_id.get(device_id)
            if device is not None and device.session_id == session:
                device.online = False
                device.lost = lost
                device.presence_us = max(device.presence_us, since)
                if lost:
                    self._lost.add(device_id)

    def name_taken(self, name: str, device_id: int | None = None) -> bool:
        """Whether a device other than `device_id` has `name` as its name or its session's name."""
        holders = (self.by_name.get(name), self.by_session_name.get(name))
        return name_taken(name, device_id, [(d.id, d.name, d.session_name) for d in holders if d is not None])

    # -- the batch ---------------------------------------------------------------------------------------

    def apply(self, batch: Sequence[Inbound]) -> Decisions:
        """Apply the protocol to `batch`, in order; the engine's state moves on as if it were committed."""
        out = Decisions()
        readings = out.readings
        acks = out.acks
        by_session_name = self.by_session_name
        limit = self.limits.readings
        allow = limit.allow if limit.enabled else None
        for item in batch:
            message = item.message
            if type(message) is Reading:  # the hot path: most messages are readings
                device = by_session_name.get(message.name)
                if device is None or device.session_id != message.session:
                    self._drop_stale(out, device, message.name, message.session, f"{message.kind.value} reading")
                elif allow is not None and not allow(device.id, item.at):
                    out.drops.append(("rate-limited", f"{message.kind.value} reading from {message.name!r}: over "
                                                      f"{limit.rate:g} readings/s (burst {limit.burst:.0f})"))
                else:
                    # Each device's stamps increase strictly, whatever the clock does (NTP steps it back and
                    # forth on a board-sized computer): the database checks that order.
                    at = item.at if item.at > device.last_seen_us else device.last_seen_us + 1
                    readings[message.kind].append((device.id, format_micros(at), message.value))
                    device.last_seen_us = at
                    out.seen[device.id] = device
                    if device.lost:
                        self._back(out, device)
            else:
                outcome = self._other(out, message, item.at)
                if item.reply is not None and outcome is not None:
                    out.replies.append((item.reply, outcome))
            if item.qos:
                acks.append((item.mid, item.qos))
        return out

    def _other(self, out: Decisions, message: Incoming, at: int) -> Outcome | None:
        """Apply one message other than a reading; a command's outcome."""
        match message:
            case MacJoin(mac):
                self._mac_join(out, mac, at)
            case SessionRef(name, session):
                device = self._current(out, name, session, "join")
                if device is not None:
                    stamp = self._seen(out, device, at)
                    if not device.online or not self.exact:
                        out.changes.append(Presence(device.id, True, stamp, session, Cause.JOIN))
                    device.online = True
                    device.lost = False
            case Leave(name, session):
                device = self._current(out, name, session, "leave")
                if device is not None:
                    stamp = self._seen(out, device, at)
                    if device.online or device.lost or not self.exact:
                        out.changes.append(Presence(device.id, False, stamp, session, Cause.LEAVE))
                    device.online = False
                    device.lost = False
            case LedRequest(device_id, session, on):
                return self._led(out, device_id, session, on)
            case RenameRequest(device_id, name):
                return self._rename(out, device_id, name)
            case BrokerSessionLost():
                # Devices not heard from within the presence timeout may have left while nobody listened.
                self.sweep_since = at
                self.sweep_due = at + self.presence_timeout_us
            case BrokerOutage(since):
                out.changes.append(Sweep(since, lost=True))
                self.sweep_due = None  # what the sweep would take, this one takes
            case SweepDue():
                self._sweep(out, at)
            case Reading():  # pragma: no cover - handled by apply
                raise AssertionError("readings take the hot path")
        return None

    def _drop_stale(self, out: Decisions, device: Device | None, name: str, session: str, what: str) -> None:
        if device is None:
            out.drops.append(("unknown-device", f"{what} from unknown device {name!r}"))
        else:
            out.drops.append(("out-of-band", f"{what} from {name!r} in session {session}, "
                                             f"current is {device.session_id}"))

    def _current(self, out: Decisions, name: str, session: str, what: str) -> Device | None:
        device = self.by_session_name.get(name)
        if device is None or device.session_id != session:
            self._drop_stale(out, device, name, session, what)
            return None
        return device

    def _seen(self, out: Decisions, device: Device, at: int) -> int:
        """Count a join, a leave or a MAC join at `at` (last_seen only moves forward); the time its presence
        decision is stamped with. The only worker stamps it after whatever the device did before and after the
        presence decision it follows (a sweep stamps its own time, which a clock stepped back may not have
        reached): its order of processing is the order of events. With several workers it is not: the message's
        own time is its stamp, so that a message older than another worker's decision stays older."""
        floor = max(device.last_seen_us, device.presence_us) if self.exact else device.last_seen_us
        device.last_seen_us = at if at > floor else floor + 1
        out.seen[device.id] = device
        stamp = device.last_seen_us if self.exact else at
        device.presence_us = max(device.presence_us, stamp)
        return stamp

    def _back(self, out: Decisions, device: Device) -> None:
        """A device marked offline while the broker was out of reach is heard from in its session."""
        device.lost = False
        device.online = True
        device.presence_us = max(device.presence_us, device.last_seen_us)
        out.changes.append(Presence(device.id, True, device.last_seen_us, device.session_id, Cause.BACK))

    def _default_name(self, device_id: int) -> str:
        name = default_name(device_id)
        suffix = 2
        while self.name_taken(name):  # a device was renamed to this one's default name
            name = f"{default_name(device_id)}-{suffix}"
            suffix += 1
        return name

    def _mac_join(self, out: Decisions, mac: str, at: int) -> None:
        device = self.by_mac.get(mac)
        if device is None:
            if not self.limits.new_devices.allow(at):
                # No name, nothing stored: the board asks again later (boards already known are never limited).
                out.drops.append(("new-device-limit", f"join of new MAC {mac} refused: "
                                                      f"{self.limits.new_devices.per_minute} new devices in the "
                                                      "last minute already"))
                return
            device_id = self.next_id
            self.next_id += 1
            name = self._default_name(device_id)
            session = self.new_session(None)
            device = Device(device_id, name, name, mac, session, False, at, at, presence_us=at)
            self._index(device)
            out.changes.append(NewDevice(device_id, name, mac, session, at))
            out.notes.append(f"new device {mac}: {name}")
        else:
            session = self.new_session(device.session_id)
            if device.session_name != device.name:  # a rename takes effect with the new session
                del self.by_session_name[device.session_name]
                device.session_name = device.name
                self.by_session_name[device.name] = device
            device.session_id = session
            device.online = False
            device.lost = False
            stamp = self._seen(out, device, at)
            out.changes.append(NewSession(device.id, session, device.session_name, stamp))
        out.publishes.append((Topic.NAME_ASSIGN, format_name_assign(mac, device.session_name, session),
                              QOS[Topic.NAME_ASSIGN]))

    def _led(self, out: Decisions, device_id: int, session: str, on: bool) -> Outcome:
        device = self.by_id.get(device_id)
        if device is None:
            out.drops.append(("pipe-unknown-device", f"command for unknown device {device_id}"))
            return Outcome.UNKNOWN
        if session == CURRENT_SESSION:  # decided now, on the engine as refreshed for this batch
            session = device.session_id
        if not device.online or device.session_id != session:
            out.drops.append(("pipe-offline", f"LED command for {device.name}, which is not online in that session"))
            return Outcome.OFFLINE
        out.publishes.append((Topic.LED_COMMAND, format_led_command(device.session_name, session, on),
                              QOS[Topic.LED_COMMAND]))
        return Outcome.SENT

    def _rename(self, out: Decisions, device_id: int, name: str) -> Outcome:
        device = self.by_id.get(device_id)
        if device is None:
            out.drops.append(("pipe-unknown-device", f"command for unknown device {device_id}"))
            return Outcome.UNKNOWN
        elif name == device.name:
            return Outcome.RENAMED
        elif self.name_taken(name, device.id):
            out.drops.append(("pipe-name-taken", f"cannot rename {device.name} to {name!r}: taken"))
            return Outcome.TAKEN
        else:
            del self.by_name[device.name]
            out.notes.append(f"device {device.name} renamed {name} (from its next session)")
            device.name = name
            self.by_name[name] = device
            out.changes.append(Rename(device.id, name))
            return Outcome.RENAMED

    def _sweep(self, out: Decisions, at: int) -> None:
        if self.sweep_due is None or at < self.sweep_due:
            return
        self.sweep_due = None
        out.changes.append(Sweep(self.sweep_since, lost=False))
