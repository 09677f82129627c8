"""The single database writer: batches what paho received, has the session engine decide, commits, acknowledges.

paho's network thread only parses and enqueues; this thread owns the database connection and commits
whatever has queued up as one transaction (group commit: batches grow with the load, a lone message is
committed at once). Only then does it acknowledge QoS 1/2 messages and publish, so a crash never loses an
acknowledged message. The rules themselves are in sessions.py.

No exception ends the thread quietly: a database that cannot be written (locked, full, gone) is retried
with nothing acknowledged; any other failure rebuilds the engine from the database and retries the batch
one message at a time, so only the message that fails is discarded (counted, logged, acknowledged: it
would fail again). If the thread dies or stops making progress anyway, the Watchdog says so.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from sensorhub.db.models import format_micros, parse_timestamp, to_micros
from sensorhub.ingest.drops import Drops
from sensorhub.ingest.history import Event, History, SessionEvent
from sensorhub.ingest.retention import Purger
from sensorhub.ingest.sessions import (
    Decisions,
    Device,
    Inbound,
    NewDevice,
    NewSession,
    Presence,
    Rename,
    Sessions,
    SweepDue,
)
from sensorhub.protocol import Kind

logger = logging.getLogger(__name__)

#: Bound of the queue between paho and the writer: memory stays bounded under a flood (a queued reading
#: takes about 350 bytes), and a full queue makes paho stop reading, which pushes back on the broker.
QUEUE_MAX = 100_000
#: Largest transaction.
BATCH_MAX = 20_000
#: Pause between two attempts at a database that cannot be written: the first, and the ceiling. Each
#: attempt already waits up to the busy timeout (5 s) for a lock: the pause stays short so that writing
#: resumes as soon as the database can be written again.
RETRY_FIRST = 0.5
RETRY_MAX = 2.0

Publish = Callable[[str, bytes, int], object]
Ack = Callable[[int, int], object]

_INSERT_READING = {kind: f"INSERT INTO {kind.value}_reading (device_id, at, value) VALUES (?, ?, ?)" for kind in Kind}
_INSERT_DEVICE = (
    "INSERT INTO device (id, name, session_name, mac, online, session_id, joined_at, last_seen) "
    "VALUES (?, ?, ?, ?, 0, ?, ?, ?)"
)
_NEW_SESSION = "UPDATE device SET session_id = ?, session_name = ?, online = 0 WHERE id = ?"
_SET_ONLINE = "UPDATE device SET online = ? WHERE id = ?"
_SET_LAST_SEEN = "UPDATE device SET last_seen = ? WHERE id = ?"
_RENAME = "UPDATE device SET name = ? WHERE id = ?"
_STOP = None


@dataclass
class WriterStats:
    """Counts since start, for logs, tests and benchmarks."""

    stored: dict[str, int] = field(default_factory=lambda: dict.fromkeys((k.value for k in Kind), 0))
    batches: int = 0
    largest_batch: int = 0
    failed_batches: int = 0
    discarded: int = 0
    #: Devices that came online and went offline since start, and how many are online now.
    joins: int = 0
    leaves: int = 0
    online: int = 0


def load_sessions(conn: Connection, presence_timeout_us: int) -> Sessions:
    """A session engine holding the device table as it is now."""
    conn.rollback()
    rows = conn.exec_driver_sql(
        "SELECT id, name, session_name, mac, session_id, online, joined_at, last_seen FROM device"
    ).all()
    seq = conn.exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = 'device'").scalar()
    conn.rollback()
    devices = [Device(row[0], row[1], row[2], row[3], row[4], bool(row[5]), to_micros(parse_timestamp(row[6])),
                      to_micros(parse_timestamp(row[7]))) for row in rows]
    return Sessions(devices, next_id=int(seq or 0) + 1, presence_timeout_us=presence_timeout_us)


class Writer:
    """Owns the database connection; everything that changes the database goes through `submit`."""

    def __init__(self, engine: Engine, publish: Publish, ack: Ack, drops: Drops, *,
                 presence_timeout: float = 15.0, queue_max: int = QUEUE_MAX, batch_max: int = BATCH_MAX,
                 history: History | None = None, purger: Purger | None = None) -> None:
        self.engine = engine
        #: Roll-ups and the session log, kept in each batch's transaction; retention, between batches.
        self.history = history if history is not None else History()
        self.purger = purger if purger is not None else Purger(0, 0)
        self.publish = publish
        self.ack = ack
        self.drops = drops
        self.presence_timeout_us = int(presence_timeout * 1_000_000)
        self.batch_max = batch_max
        self.queue: queue.Queue[Inbound | None] = queue.Queue(maxsize=queue_max)
        self.stats = WriterStats()
        self.sessions = Sessions(presence_timeout_us=self.presence_timeout_us)
        #: Set when the writer is given up on: `submit` stops waiting for room and refuses.
        self.failed = threading.Event()
        #: time.monotonic() of the writer's last sign of life (the Watchdog reads it).
        self.heartbeat = time.monotonic()
        self._conn: Connection | None = None
        self._thread: threading.Thread | None = None
        self._traced: set[type[BaseException]] = set()

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the sessions from the database and start the writer thread."""
        self._conn = self.engine.connect()
        self.sessions = load_sessions(self._conn, self.presence_timeout_us)
        self.stats.online = sum(1 for device in self.sessions.by_id.values() if device.online)
        self.history.load(self._conn)
        self._conn.rollback()
        self.heartbeat = time.monotonic()
        self._thread = threading.Thread(target=self._guarded_run, name="db-writer", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the writer thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def submit(self, item: Inbound) -> bool:
        """Queue an item, waiting while the queue is full (which pushes back on the broker).

        False if the writer was given up on: the item is not queued and must not be acknowledged.
        """
        while not self.failed.is_set():
            try:
                self.queue.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def stop(self, timeout: float = 30.0) -> None:
        """Process everything queued so far, commit, acknowledge, then stop."""
        if self._thread is None:
            return
        if self.alive and not self.failed.is_set():
            self.queue.put(_STOP)
            self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error("the database writer did not stop (waited %.0f s); it keeps its connection", timeout)
            return
        self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- the loop --------------------------------------------------------------------------------------

    def _guarded_run(self) -> None:
        try:
            self._run()
        except BaseException:
            # The watchdog sees the thread gone and has the client restarted; the traceback says why.
            logger.error("the database writer stopped on an unexpected error", exc_info=True)

    def _run(self) -> None:
        while True:
            self.heartbeat = time.monotonic()
            timeout = 0.01 if self.purger.pending else 0.5  # purging while idle: look for messages often
            due = self.sessions.sweep_due
            if due is not None:
                timeout = max(0.0, min(timeout, (due - _now_us()) / 1e6))
            try:
                first = self.queue.get(timeout=timeout)
            except queue.Empty:
                self._maybe_sweep()
                self._maybe_purge(busy=False)
                continue
            batch: list[Inbound] = []
            stopping = first is _STOP
            if first is not _STOP:
                batch.append(first)
                while len(batch) < self.batch_max:
                    try:
                        item = self.queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stopping = True
                        break
                    batch.append(item)
            if batch:
                self._write(batch)
            self._maybe_sweep()
            self._maybe_purge(busy=not self.queue.empty())
            if stopping:
                logger.info("database writer stopped after storing %s", self.stats.stored)
                return

    def _maybe_sweep(self) -> None:
        due = self.sessions.sweep_due
        if due is not None and _now_us() >= due:
            self._write([Inbound(SweepDue(), _now_us())])

    def _write(self, batch: Sequence[Inbound]) -> None:
        """Commit `batch`; retry while the database cannot be written; isolate a message that fails."""
        delay = RETRY_FIRST
        while True:
            self.heartbeat = time.monotonic()
            try:
                done = self._transaction(batch)
            except OperationalError as err:
                self.stats.failed_batches += 1
                logger.error("cannot write to the database (%s); retrying in %.1f s, nothing acknowledged",
                             _reason(err), delay)
                self._reload()
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            except Exception as err:
                failure = err
            else:
                self._after_commit(done, len(batch))
                return
            # Outside the except clause: what follows must not chain onto this failure.
            self.stats.failed_batches += 1
            if not self._reload():
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            if len(batch) == 1:
                self._discard(batch[0], failure)
                return
            logger.warning("a batch of %d failed (%s: %s); retrying one message at a time", len(batch),
                           type(failure).__name__, _reason(failure))
            for item in batch:
                self._write([item])
            return

    def _reload(self) -> bool:
        """Rebuild the engine from the database; False if the database cannot be read now.

        Any other error propagates and ends the thread: a table this code cannot read will not get better
        by trying again, and the watchdog then has the client restarted.
        """
        assert self._conn is not None
        try:
            self._conn.rollback()
            sessions = load_sessions(self._conn, self.presence_timeout_us)
            self.history.load(self._conn)
            self._conn.rollback()
        except OperationalError as err:
            logger.debug("reloading the sessions failed too: %s", _reason(err))
            return False
        sessions.resume_presence_check(self.sessions)
        self.sessions = sessions
        return True

    def _discard(self, item: Inbound, err: Exception) -> None:
        """One message fails on its own: count it, say why, and acknowledge it (a redelivery would fail too)."""
        self.stats.discarded += 1
        reason = "db-rejected" if type(err).__module__.startswith("sqlalchemy") else "writer-error"
        self.drops.add(reason, f"{item.message!r}: {type(err).__name__}: {_reason(err)}")
        if reason == "writer-error" and type(err) not in self._traced:
            self._traced.add(type(err))  # the traceback of a bug once; the drop counters say how often
            logger.error("discarded %r after an unexpected error", item.message, exc_info=err)
        if item.qos:
            self._call(self.ack, item.mid, item.qos)

    def _transaction(self, batch: Sequence[Inbound]) -> Decisions:
        conn = self._conn
        assert conn is not None
        try:
            done = self.sessions.apply(batch)
            events: list[SessionEvent] = []
            for change in done.changes:
                match change:
                    case NewDevice(device_id, name, mac, session_id, at):
                        stamp = format_micros(at)
                        conn.exec_driver_sql(_INSERT_DEVICE, (device_id, name, name, mac, session_id, stamp, stamp))
                        events.append((Event.STARTED, device_id, session_id, stamp))
                    case NewSession(device_id, session_id, session_name, at):
                        conn.exec_driver_sql(_NEW_SESSION, (session_id, session_name, device_id))
                        events.append((Event.STARTED, device_id, session_id, format_micros(at)))
                    case Presence(device_id, online, at, session_id):
                        conn.exec_driver_sql(_SET_ONLINE, (int(online), device_id))
                        events.append((Event.ONLINE if online else Event.ENDED, device_id, session_id,
                                       format_micros(at)))
                    case Rename(device_id, name):
                        conn.exec_driver_sql(_RENAME, (name, device_id))
            for kind, rows in done.readings.items():
                if rows:
                    conn.exec_driver_sql(_INSERT_READING[kind], rows)
            if done.seen:
                conn.exec_driver_sql(_SET_LAST_SEEN, [
                    (format_micros(device.last_seen_us), device.id) for device in done.seen.values()
                ])
            self.history.stage(conn, done.readings, events)
            conn.commit()
        except BaseException:
            conn.rollback()
            self.history.discard()
            raise
        self.history.committed()
        return done

    def _after_commit(self, done: Decisions, size: int) -> None:
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, size)
        for kind, rows in done.readings.items():
            self.stats.stored[kind.value] += len(rows)
        presences = [change for change in done.changes if isinstance(change, Presence)]
        if presences:
            self.stats.joins += sum(1 for change in presences if change.online)
            self.stats.leaves += sum(1 for change in presences if not change.online)
            self.stats.online = sum(1 for device in self.sessions.by_id.values() if device.online)
        for note in done.notes:
            logger.info("%s", note)
        for reason, detail in done.drops:
            self.drops.add(reason, detail)
        for mid, qos in done.acks:
            self._call(self.ack, mid, qos)
        for topic, payload, qos in done.publishes:
            self._call(self.publish, topic, payload, qos)

    def _maybe_purge(self, busy: bool) -> None:
        """Delete a little of what retention allows; a failing purge never stops the writer."""
        if not self.purger.enabled:
            return
        assert self._conn is not None
        try:
            self.purger.run(self._conn, busy)
        except SQLAlchemyError as err:
            logger.warning("retention purge failed (%s); retrying later", _reason(err))
            self.purger.delay(5.0)

    def _call(self, action: Callable[..., object], *args: object) -> None:
        """Acknowledge or publish; what is committed stays committed whatever paho says."""
        try:
            action(*args)
        except Exception as err:
            logger.error("could not %s %s: %s", getattr(action, "__name__", "call"), args[:2], err)


class Watchdog:
    """Calls `on_failure` once, with one line saying why, if the writer dies or stops making progress with
    work queued for `stall_timeout` seconds (a retrying writer makes progress: it beats at each attempt)."""

    def __init__(self, writer: Writer, on_failure: Callable[[str], object], *, stall_timeout: float = 60.0,
                 interval: float = 0.5) -> None:
        self.writer = writer
        self.on_failure = on_failure
        self.stall_timeout = stall_timeout
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Watch in a thread."""
        self._thread = threading.Thread(target=self._run, name="writer-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (before a clean stop of the writer)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def problem(self) -> str | None:
        """What is wrong with the writer right now, or None."""
        writer = self.writer
        if not writer.alive:
            return f"the database writer thread died ({writer.queue.qsize()} message(s) queued)"
        stalled = time.monotonic() - writer.heartbeat
        if stalled > self.stall_timeout and writer.queue.qsize() > 0:
            return (f"the database writer made no progress for {stalled:.0f} s with {writer.queue.qsize()} "
                    "message(s) queued")
        return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            problem = self.problem()
            if problem is not None and not self._stop.is_set():
                self.writer.failed.set()
                self.on_failure(problem)
                return


def _now_us() -> int:
    return time.time_ns() // 1000


def _reason(err: BaseException) -> str:
    orig = getattr(err, "orig", None)
    return (str(orig if orig is not None else err) or type(err).__name__).splitlines()[0]
