"""The single database writer: applies the protocol to batches of messages and commits each batch at once.

paho's network thread only parses and enqueues; this thread owns the database connection, keeps the
current sessions in memory (the database stays the authority: the cache is reloaded from it after any
failed batch), commits whatever has queued up as one transaction (group commit: batches grow with the
load, a lone message is committed at once), and only then acknowledges QoS 1/2 messages and publishes
name assignments, so a crash never loses an acknowledged message.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from sensorhub.db.models import format_micros, parse_timestamp, to_micros
from sensorhub.ingest.drops import Drops
from sensorhub.ingest.ledpipe import Command, LedRequest, RenameRequest
from sensorhub.protocol import (
    Kind,
    Leave,
    MacJoin,
    Reading,
    SessionRef,
    Topic,
    format_led_command,
    format_name_assign,
    name_taken,
    new_session_id,
)

logger = logging.getLogger(__name__)

# What a queued item is: (code, payload, received at in µs since the epoch, MQTT message id, QoS).
JOIN, LEAVE, READING, COMMAND, SWEEP = range(5)
Item = tuple[int, Any, int, int, int]
STOP: None = None

#: Bound of the queue between paho and the writer: memory stays bounded under a flood (a queued reading
#: takes about 350 bytes), and a full queue makes paho stop reading, which pushes back on the broker.
QUEUE_MAX = 100_000
#: Largest transaction.
BATCH_MAX = 20_000

Publish = Callable[[str, bytes, int], object]
Ack = Callable[[int, int], object]

_INSERT_READING = {kind: f"INSERT INTO {kind.value}_reading (device_id, at, value) VALUES (?, ?, ?)" for kind in Kind}
_INSERT_DEVICE = (
    "INSERT INTO device (id, name, session_name, mac, online, session_id, joined_at, last_seen) "
    "VALUES (?, ?, ?, ?, 0, ?, ?, ?)"
)
_NEW_SESSION = "UPDATE device SET session_id = ?, session_name = ?, online = 0 WHERE id = ?"
_SET_ONLINE = "UPDATE device SET online = ? WHERE id = ?"
_SET_OFFLINE = "UPDATE device SET online = 0 WHERE id = ?"
_SET_LAST_SEEN = "UPDATE device SET last_seen = ? WHERE id = ?"
_RENAME = "UPDATE device SET name = ? WHERE id = ?"


@dataclass(slots=True)
class DeviceState:
    """What the writer knows of a device (a copy of its row, in microseconds)."""

    id: int
    name: str
    session_name: str
    mac: str
    session_id: str
    online: bool
    joined_us: int
    last_seen_us: int
    heard: bool = True


@dataclass
class WriterStats:
    """Counts since start, for logs, tests and benchmarks."""

    stored: dict[str, int] = field(default_factory=lambda: dict.fromkeys((k.value for k in Kind), 0))
    batches: int = 0
    largest_batch: int = 0
    failed_batches: int = 0


class _Batch:
    """What one transaction will do once committed."""

    __slots__ = ("acks", "publishes", "readings", "seen")

    def __init__(self) -> None:
        self.readings: dict[Kind, list[tuple[int, str, int]]] = {kind: [] for kind in Kind}
        self.seen: dict[int, DeviceState] = {}
        self.acks: list[tuple[int, int]] = []
        self.publishes: list[tuple[str, bytes, int]] = []


class Writer:
    """Owns the database connection; everything that changes the database goes through `submit`."""

    def __init__(self, engine: Engine, publish: Publish, ack: Ack, drops: Drops, *,
                 presence_timeout: float = 15.0, queue_max: int = QUEUE_MAX, batch_max: int = BATCH_MAX) -> None:
        self.engine = engine
        self.publish = publish
        self.ack = ack
        self.drops = drops
        self.presence_timeout = presence_timeout
        self.batch_max = batch_max
        self.queue: queue.Queue[Item | None] = queue.Queue(maxsize=queue_max)
        self.stats = WriterStats()
        self.by_session_name: dict[str, DeviceState] = {}
        self.by_name: dict[str, DeviceState] = {}
        self.by_mac: dict[str, DeviceState] = {}
        self.by_id: dict[int, DeviceState] = {}
        self.next_id = 1
        self._sweep_deadline: float | None = None
        self._conn: Connection | None = None
        self._thread: threading.Thread | None = None
        self.idle = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the sessions from the database and start the writer thread."""
        self._conn = self.engine.connect()
        self._load()
        self._thread = threading.Thread(target=self._run, name="db-writer", daemon=True)
        self._thread.start()

    def submit(self, item: Item) -> None:
        """Queue an item; blocks while the queue is full, which pushes back on the broker."""
        self.queue.put(item)

    def stop(self, timeout: float = 30.0) -> None:
        """Process everything queued so far, commit, acknowledge, then stop."""
        if self._thread is None:
            return
        self.queue.put(STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error("the database writer did not finish within %.0f s", timeout)
        self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- cache -----------------------------------------------------------------------------------------

    def _load(self) -> None:
        assert self._conn is not None
        self._conn.rollback()
        rows = self._conn.exec_driver_sql(
            "SELECT id, name, session_name, mac, session_id, online, joined_at, last_seen FROM device"
        ).all()
        seq = self._conn.exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = 'device'").scalar()
        self._conn.rollback()
        self.by_session_name.clear()
        self.by_name.clear()
        self.by_mac.clear()
        self.by_id.clear()
        for row in rows:
            self._index(DeviceState(row[0], row[1], row[2], row[3], row[4], bool(row[5]),
                                    to_micros(parse_timestamp(row[6])), to_micros(parse_timestamp(row[7]))))
        self.next_id = max([seq or 0, *self.by_id]) + 1

    def _index(self, state: DeviceState) -> None:
        self.by_session_name[state.session_name] = state
        self.by_name[state.name] = state
        self.by_mac[state.mac] = state
        self.by_id[state.id] = state

    def _name_taken(self, name: str, by: int | None = None) -> bool:
        holders = (self.by_name.get(name), self.by_session_name.get(name))
        return name_taken(name, by, [(s.id, s.name, s.session_name) for s in holders if s is not None])

    def _default_name(self, device_id: int) -> str:
        name = f"capteur{device_id:02d}"
        suffix = 2
        while self._name_taken(name):  # a device was renamed to this one's default name
            name = f"capteur{device_id:02d}-{suffix}"
            suffix += 1
        return name

    # -- the loop --------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            timeout = 0.5
            if self._sweep_deadline is not None:
                timeout = max(0.0, min(timeout, self._sweep_deadline - time.monotonic()))
            try:
                first = self.queue.get(timeout=timeout)
            except queue.Empty:
                self.idle.set()
                self._maybe_sweep()
                continue
            self.idle.clear()
            batch: list[Item] = []
            stopping = first is STOP
            if first is not STOP:
                batch.append(first)
                while len(batch) < self.batch_max:
                    try:
                        item = self.queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is STOP:
                        stopping = True
                        break
                    batch.append(item)
            if batch:
                self._commit(batch)
            self._maybe_sweep()
            if stopping:
                logger.info("database writer stopped after storing %s", self.stats.stored)
                return

    def _commit(self, batch: list[Item]) -> None:
        """Apply and commit a batch; retry item by item if the database refuses part of it."""
        delay = 0.5
        while True:
            try:
                done = self._transaction(batch)
            except IntegrityError as err:
                self.stats.failed_batches += 1
                logger.warning("the database refused a batch of %d (%s); retrying one by one", len(batch),
                               _reason(err))
                self._load()
                for item in batch:
                    self._commit_one(item)
                return
            except SQLAlchemyError as err:
                self.stats.failed_batches += 1
                logger.error("cannot write to the database (%s); retrying in %.1f s, nothing acknowledged",
                             _reason(err), delay)
                self._load_quietly()
                time.sleep(delay)
                # Each attempt already waits up to the busy timeout (5 s) for a lock: keep the pause short so
                # that writing resumes as soon as the database can be written again.
                delay = min(delay * 2, 2.0)
                continue
            self._after_commit(done, len(batch))
            return

    def _commit_one(self, item: Item) -> None:
        try:
            done = self._transaction([item])
        except IntegrityError as err:
            self.drops.add("db-rejected", _reason(err))
            self._load()
            if item[4]:
                self.ack(item[3], item[4])  # redelivery would be refused the same way
            return
        self._after_commit(done, 1)

    def _load_quietly(self) -> None:
        try:
            self._load()
        except SQLAlchemyError as err:
            logger.debug("reloading the sessions failed too: %s", _reason(err))

    def _after_commit(self, done: _Batch, size: int) -> None:
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, size)
        for kind, rows in done.readings.items():
            self.stats.stored[kind.value] += len(rows)
        for mid, qos in done.acks:
            self.ack(mid, qos)
        for topic, payload, qos in done.publishes:
            self.publish(topic, payload, qos)

    def _transaction(self, batch: Iterable[Item]) -> _Batch:
        conn = self._conn
        assert conn is not None
        done = _Batch()
        try:
            for code, payload, at, mid, qos in batch:
                if code == READING:
                    self._reading(done, payload, at)
                elif code == JOIN:
                    if type(payload) is MacJoin:
                        self._mac_join(conn, done, payload, at)
                    else:
                        self._session_join(conn, done, payload, at)
                elif code == LEAVE:
                    self._leave(conn, done, payload, at)
                elif code == COMMAND:
                    self._command(conn, done, payload)
                elif code == SWEEP:
                    self._start_sweep()
                if qos:
                    done.acks.append((mid, qos))
            for kind, rows in done.readings.items():
                if rows:
                    conn.exec_driver_sql(_INSERT_READING[kind], rows)
            if done.seen:
                conn.exec_driver_sql(_SET_LAST_SEEN, [
                    (format_micros(state.last_seen_us), state.id) for state in done.seen.values()
                ])
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        return done

    # -- the protocol ----------------------------------------------------------------------------------

    def _current(self, name: str, session: str, what: str) -> DeviceState | None:
        state = self.by_session_name.get(name)
        if state is None:
            self.drops.add("unknown-device", f"{what} from unknown device {name!r}")
            return None
        if state.session_id != session:
            self.drops.add("out-of-band", f"{what} from {name!r} in session {session}, current is {state.session_id}")
            return None
        return state

    def _seen(self, done: _Batch, state: DeviceState, at: int) -> None:
        if at > state.last_seen_us:
            state.last_seen_us = at
            done.seen[state.id] = state

    def _reading(self, done: _Batch, reading: Reading, at: int) -> None:
        state = self._current(reading.name, reading.session, f"{reading.kind.value} reading")
        if state is None:
            return
        # Strictly after the device joined, even if the clock stepped back (the database insists).
        at = max(at, state.joined_us + 1)
        done.readings[reading.kind].append((state.id, format_micros(at), reading.value))
        state.heard = True
        self._seen(done, state, at)

    def _mac_join(self, conn: Connection, done: _Batch, join: MacJoin, at: int) -> None:
        state = self.by_mac.get(join.mac)
        if state is None:
            device_id = self.next_id
            name = self._default_name(device_id)
            session = new_session_id(None, at / 1e6)
            conn.exec_driver_sql(_INSERT_DEVICE, (device_id, name, name, join.mac, session, format_micros(at),
                                                  format_micros(at)))
            state = DeviceState(device_id, name, name, join.mac, session, False, at, at)
            self._index(state)
            self.next_id += 1
            logger.info("new device %s: %s", join.mac, name)
        else:
            session = new_session_id(state.session_id, at / 1e6)
            if state.session_name != state.name:  # a rename takes effect with the new session
                del self.by_session_name[state.session_name]
                state.session_name = state.name
                self.by_session_name[state.name] = state
            conn.exec_driver_sql(_NEW_SESSION, (session, state.session_name, state.id))
            state.session_id = session
            state.online = False
            self._seen(done, state, at)
        done.publishes.append((Topic.NAME_ASSIGN, format_name_assign(join.mac, state.session_name, session), 2))

    def _session_join(self, conn: Connection, done: _Batch, ref: SessionRef, at: int) -> None:
        state = self._current(ref.name, ref.session, "join")
        if state is None:
            return
        if not state.online:
            conn.exec_driver_sql(_SET_ONLINE, (1, state.id))
            state.online = True
        state.heard = True
        self._seen(done, state, at)

    def _leave(self, conn: Connection, done: _Batch, ref: Leave, at: int) -> None:
        state = self._current(ref.name, ref.session, "leave")
        if state is None:
            return
        if state.online:
            conn.exec_driver_sql(_SET_ONLINE, (0, state.id))
            state.online = False
        self._seen(done, state, at)

    def _command(self, conn: Connection, done: _Batch, command: Command) -> None:
        state = self.by_id.get(command.device_id)
        if state is None:
            self.drops.add("pipe-unknown-device", f"command for unknown device {command.device_id}")
            return
        if isinstance(command, LedRequest):
            if not state.online or state.session_id != command.session:
                self.drops.add("pipe-offline", f"LED command for {state.name}, which is not online in that session")
                return
            done.publishes.append(
                (Topic.LED_COMMAND, format_led_command(state.session_name, state.session_id, command.on), 1)
            )
        elif isinstance(command, RenameRequest):
            if command.name == state.name:
                return
            if self._name_taken(command.name, by=state.id):
                self.drops.add("pipe-name-taken", f"cannot rename {state.name} to {command.name!r}: taken")
                return
            conn.exec_driver_sql(_RENAME, (command.name, state.id))
            del self.by_name[state.name]
            logger.info("device %s renamed %s (from its next session)", state.name, command.name)
            state.name = command.name
            self.by_name[state.name] = state

    # -- presence after a broker restart -------------------------------------------------------------

    def _start_sweep(self) -> None:
        """The broker had no session for us: Wills may have been missed while we were away."""
        for state in self.by_id.values():
            if state.online:
                state.heard = False
        self._sweep_deadline = time.monotonic() + self.presence_timeout

    def _maybe_sweep(self) -> None:
        if self._sweep_deadline is None or time.monotonic() < self._sweep_deadline:
            return
        self._sweep_deadline = None
        silent = [state for state in self.by_id.values() if state.online and not state.heard]
        if not silent:
            return
        assert self._conn is not None
        try:
            self._conn.exec_driver_sql(_SET_OFFLINE, [(state.id,) for state in silent])
            self._conn.commit()
        except SQLAlchemyError as err:
            self._conn.rollback()
            logger.error("could not mark silent devices offline: %s", _reason(err))
            self._load_quietly()
            return
        for state in silent:
            state.online = False
        logger.info("marked %d device(s) offline, not heard from since the broker lost our session: %s",
                    len(silent), ", ".join(state.name for state in silent[:20]))


def _reason(err: BaseException) -> str:
    orig = getattr(err, "orig", None)
    return str(orig if orig is not None else err).splitlines()[0]
