"""The single database writer: batches what paho received, has the session engine decide, commits, acknowledges.

paho's network thread only parses and enqueues; this thread owns the database connection and commits
whatever has queued up as one transaction (group commit: batches grow with the load, a lone message is
committed at once). Only then does it acknowledge QoS 1/2 messages and publish, so a crash never loses an
acknowledged message. The rules themselves are in sessions.py.

No exception ends the thread quietly: a database that cannot be written (locked, full, gone) is retried
with nothing acknowledged; any other failure rebuilds the engine from the database and retries the batch
one message at a time, so only the message that fails is discarded (counted, logged, acknowledged: it
would fail again). If the thread dies or stops making progress anyway, the Watchdog says so.

Several workers (each with its own Writer, `shared`) share one database, which is the authority: a batch
holding joins or renames is decided under a database lock, after reading the rows it depends on as they are
then (its MACs, its devices, the names it may give, the devices added since); a message whose session this
engine does not know, or a LED command for a device offline here, has its rows read before the batch is
decided; a batch refused by a constraint while it hands out device ids or names (another worker handed out
the same first) is retried, up to CONFLICT_RETRIES times, on the engine rebuilt from the whole table before
anything is isolated.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from sensorhub.commands import LedRequest, Outcome, RenameRequest, Reply
from sensorhub.db import dialect
from sensorhub.db.presence import Applied, bring_back, lost_devices, set_presence, sweep
from sensorhub.db.space import MIB, database_dir, database_space
from sensorhub.ingest.bookkeeping import Event, History, SessionEvent
from sensorhub.ingest.drops import Drops
from sensorhub.ingest.metrics import IngestMetrics
from sensorhub.ingest.retention import Purger
from sensorhub.ingest.sessions import (
    Cause,
    Decisions,
    Device,
    Inbound,
    NewDevice,
    NewSession,
    Presence,
    Rename,
    Sessions,
    Sweep,
    SweepDue,
    cut_at_sweeps,
    default_name,
    wire,
)
from sensorhub.protocol import LIVE_TOPIC, Kind, Leave, MacJoin, Reading, SessionRef, format_live
from sensorhub.timestamps import format_micros, parse_timestamp, to_micros

logger = logging.getLogger(__name__)

#: Bound of the queue between paho and the writer: memory stays bounded under a flood (a queued reading
#: takes about 350 bytes), and a full queue makes paho stop reading, which pushes back on the broker.
QUEUE_MAX = 100_000
#: Largest transaction.
BATCH_MAX = 20_000
#: How long a batch of QoS 0 readings waits for more before it is committed: at 2,000 readings a second the
#: writer otherwise commits every 2 ms, a few readings each, and a commit costs more than the readings in it.
#: Anything acknowledged (QoS 1/2: the broker sends at most 20 before our acknowledgements), joins, leaves and
#: commands are committed at once.
LINGER = 0.005
#: Pause between two attempts at a database that cannot be written: the first, and the ceiling. Each
#: attempt already waits up to the busy timeout (5 s) for a lock: the pause stays short so that writing
#: resumes as soon as the database can be written again.
RETRY_FIRST = 0.5
RETRY_MAX = 2.0

Publish = Callable[[str, bytes, int], object]
Ack = Callable[[int, int], object]
#: Answers a command from the broker with its outcome (sensorhub.ingest.service).
Answer = Callable[[Reply, Outcome], object]

_INSERT_DEVICE = (
    "INSERT INTO device (id, name, session_name, mac, online, session_id, joined_at, last_seen, presence_at) "
    "VALUES (?, ?, ?, ?, FALSE, ?, ?, ?, ?)"
)
_NEW_SESSION = (
    "UPDATE device SET session_id = ?, session_name = ?, online = FALSE, lost = FALSE, presence_at = ? WHERE id = ?"
)
#: Never backwards: another worker may have stored a later message of the same device first. The same UPDATE
#: keeps each kind's latest value (db/latest.py): replaced only by a value at least as recent (a NULL time, no
#: reading of that kind in the batch, compares as unknown and keeps what is stored).
_SET_LAST_SEEN = (
    "UPDATE device SET last_seen = CASE WHEN last_seen < ? THEN ? ELSE last_seen END"
    + "".join(f", last_{k} = CASE WHEN coalesce(last_{k}_at, '') <= ? THEN ? ELSE last_{k} END"
              f", last_{k}_at = CASE WHEN coalesce(last_{k}_at, '') <= ? THEN ? ELSE last_{k}_at END"
              for k in ("led", "button", "light"))
    + " WHERE id = ?"
)
_NO_READING = (None, None)
_RENAME = "UPDATE device SET name = ? WHERE id = ?"
_QUARANTINE = "INSERT INTO quarantine (received_at, topic, payload, reason) VALUES (?, ?, ?, ?)"
#: Taken, with several workers, by a transaction that may hand out device ids or names (then released by its
#: commit): SQLite's write lock through a write that changes nothing; on PostgreSQL an advisory lock.
_DEVICE_LOCK = {
    "sqlite": "DELETE FROM quarantine WHERE id = -1",
    "postgresql": "SELECT pg_advisory_xact_lock(1616)",
}
#: Attempts again, on the engine rebuilt from the database, of a batch handing out device ids or names that
#: the database refused: joins arriving at several workers at once can collide more than once.
CONFLICT_RETRIES = 3
#: While the database cannot be written, one line about it at most this often (seconds).
OUTAGE_LOG_EVERY = 60.0
_STOP = None


@dataclass
class WriterStats:
    """Counts since start, for logs, tests and benchmarks."""

    stored: dict[str, int] = field(default_factory=lambda: dict.fromkeys((k.value for k in Kind), 0))
    batches: int = 0
    largest_batch: int = 0
    failed_batches: int = 0
    discarded: int = 0
    quarantined: int = 0
    #: Devices that came online and went offline since start, and how many are online now.
    joins: int = 0
    leaves: int = 0
    online: int = 0
    #: Times the engine was rebuilt because the database knew a device or session it did not.
    rechecked: int = 0


_DEVICE_ROWS = (
    "SELECT id, name, session_name, mac, session_id, online, joined_at, last_seen, lost, presence_at FROM device"
)


def load_sessions(conn: Connection, presence_timeout_us: int, *, exact: bool = True) -> Sessions:
    """A session engine holding the device table as it is now (`exact`: the only worker on it)."""
    conn.rollback()
    devices = [_device(row) for row in conn.exec_driver_sql(_DEVICE_ROWS)]
    seq = conn.exec_driver_sql(dialect.LAST_DEVICE_ID[conn.dialect.name]).scalar()
    conn.rollback()
    return Sessions(devices, next_id=int(seq or 0) + 1, presence_timeout_us=presence_timeout_us, exact=exact)


def _device(row: Any) -> Device:
    """A row of _DEVICE_ROWS as the engine holds it."""
    return Device(row[0], row[1], row[2], row[3], row[4], bool(row[5]), to_micros(parse_timestamp(row[6])),
                  to_micros(parse_timestamp(row[7])), bool(row[8]),
                  to_micros(parse_timestamp(row[9])) if row[9] else 0)


class Writer:
    """Owns the database connection; everything that changes the database goes through `submit`."""

    def __init__(self, engine: Engine, publish: Publish, ack: Ack, drops: Drops, *,
                 presence_timeout: float = 15.0, queue_max: int = QUEUE_MAX, batch_max: int = BATCH_MAX,
                 history: History | None = None, purger: Purger | None = None,
                 metrics: IngestMetrics | None = None, shared: bool = False, linger: float = LINGER,
                 answer: Answer | None = None) -> None:
        self.engine = engine
        #: Answers the commands that asked for an answer, once their batch is committed.
        self.answer = answer
        #: How long a batch of QoS 0 readings waits for more (LINGER).
        self.linger = linger
        self._shared = shared
        #: Prometheus metrics, counted once per committed batch (sensorhub.ingest.metrics).
        self.metrics = metrics
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
        self.sessions = Sessions(presence_timeout_us=self.presence_timeout_us, exact=not shared)
        #: Set when the writer is given up on: `submit` stops waiting for room and refuses.
        self.failed = threading.Event()
        #: time.monotonic() of the writer's last sign of life (the Watchdog reads it).
        self.heartbeat = time.monotonic()
        self._conn: Connection | None = None
        self._thread: threading.Thread | None = None
        self._traced: set[type[BaseException]] = set()
        #: Since when (monotonic) the database cannot be written, and when that was last said.
        self._blocked_since: float | None = None
        self._blocked_said = 0.0
        #: Give the WAL's space back once the backlog is written (after the disk was full).
        self._truncate_when_idle = False
        self._url = engine.url.render_as_string(hide_password=False)
        #: Where the SQLite file lives (None on a server database: no WAL to truncate, no disk of ours).
        self._db_dir = database_dir(self._url)

    @property
    def shared(self) -> bool:
        """One of several workers on this database: joins and renames are decided under a lock, on the device
        table as the database holds it then, and every join and leave goes to the database (db/presence.py)."""
        return self._shared

    @shared.setter
    def shared(self, shared: bool) -> None:
        self._shared = shared
        self.sessions.exact = not shared

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the sessions from the database and start the writer thread."""
        self.open()
        self._thread = threading.Thread(target=self._guarded_run, name="db-writer", daemon=True)
        self._thread.start()

    def open(self) -> None:
        """Connect and load the sessions from the database (what `start` does before its thread runs)."""
        self._conn = self.engine.connect()
        self.sessions = load_sessions(self._conn, self.presence_timeout_us, exact=not self.shared)
        self.stats.online = sum(1 for device in self.sessions.by_id.values() if device.online)
        self.history.load(self._conn)
        self._conn.rollback()
        self.heartbeat = time.monotonic()

    def process(self, batch: list[Inbound]) -> None:
        """Commit `batch` in the caller's thread, as the writer thread does what it takes from the queue (a test
        seam: several writers stepped in a chosen order, with no thread of their own)."""
        for part in cut_at_sweeps(batch):
            self._write(part)

    def close(self) -> None:
        """Close the connection `open` made (when no thread was started)."""
        if self._conn is not None and self._thread is None:
            self._conn.close()
            self._conn = None

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
                if self._truncate_when_idle:
                    self._truncate_when_idle = False
                    self._truncate_wal()
                self._maybe_sweep()
                self._maybe_purge(busy=False)
                continue
            batch: list[Inbound] = []
            stopping = first is _STOP
            if first is not _STOP:
                batch.append(first)
                stopping = self._gather(batch)
            self.process(batch)
            self._maybe_sweep()
            self._maybe_purge(busy=not self.queue.empty())
            if stopping:
                logger.info("database writer stopped after storing %s", self.stats.stored)
                return

    def _gather(self, batch: list[Inbound]) -> bool:
        """Add what is queued to `batch`, waiting up to `linger` for more while it holds only QoS 0 readings;
        True if the writer is asked to stop."""
        deadline = time.monotonic() + self.linger
        lingering = self.linger > 0 and _lingers(batch[0])
        while len(batch) < self.batch_max:
            try:
                if lingering:
                    remaining = deadline - time.monotonic()
                    item = self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait()
                else:
                    item = self.queue.get_nowait()
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            batch.append(item)
            lingering = lingering and _lingers(item)
        return False

    def _drop_late(self, batch: Sequence[Inbound]) -> Sequence[Inbound]:
        """Drop, rather than carry out, the commands whose web server has stopped waiting for an answer (it told
        its caller they failed), at each attempt at a batch (a database that cannot be written holds it back);
        acknowledged at once, since nothing of them is stored."""
        now = time.monotonic()
        if not any(item.reply is not None and item.reply.deadline < now for item in batch):
            return batch
        kept = []
        for item in batch:
            if item.reply is not None and item.reply.deadline < now:
                self.drops.add("command-late", f"{item.message!r}: its web server no longer waits for it")
                if item.qos:
                    self._call(self.ack, item.mid, item.qos)
            else:
                kept.append(item)
        return kept

    def _maybe_sweep(self) -> None:
        due = self.sessions.sweep_due
        if due is not None and _now_us() >= due:
            self._write([Inbound(SweepDue(), _now_us())])

    def _write(self, batch: Sequence[Inbound]) -> None:
        """Commit `batch`; retry while the database cannot be written; isolate a message that fails."""
        delay = RETRY_FIRST
        conflicts = 0
        while True:
            self.heartbeat = time.monotonic()
            batch = self._drop_late(batch)
            if not batch:
                return
            try:
                started = time.perf_counter()
                done = self._transaction(batch)
            except OperationalError as err:
                self.stats.failed_batches += 1
                self._blocked(err, delay)
                self._reload()
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            except Exception as err:
                failure = err
            else:
                if self._blocked_since is not None:
                    self._unblocked()
                self._after_commit(done, len(batch))
                if self.metrics is not None:
                    self.metrics.committed(done, len(batch), time.perf_counter() - started)
                return
            # Outside the except clause: what follows must not chain onto this failure.
            self.stats.failed_batches += 1
            if not self._reload():
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            if isinstance(failure, IntegrityError) and conflicts < CONFLICT_RETRIES and _hands_out(batch):
                # Most likely another worker got there first (a device id, a name): again, on the rebuilt
                # engine, before a message is taken as refused.
                conflicts += 1
                logger.info("a batch of %d was refused (%s); retrying it on the database's current state",
                            len(batch), _reason(failure))
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
            sessions = load_sessions(self._conn, self.presence_timeout_us, exact=not self.shared)
            self.history.load(self._conn)
            self._conn.rollback()
        except OperationalError as err:
            logger.debug("reloading the sessions failed too: %s", _reason(err))
            return False
        self._replace_sessions(sessions)
        return True

    def _replace_sessions(self, sessions: Sessions) -> None:
        """Take an engine rebuilt from the database, carrying on what the current one knew beyond the table."""
        sessions.resume_presence_check(self.sessions)
        self.sessions = sessions

    def _discard(self, item: Inbound, err: Exception) -> None:
        """One message fails on its own: keep it in the quarantine table with why, then acknowledge it (a
        redelivery would fail too). If even that cannot be written, it stays unacknowledged with the broker."""
        reason = "db-rejected" if type(err).__module__.startswith("sqlalchemy") else "writer-error"
        why = f"{reason}: {type(err).__name__}: {_reason(err)}"
        if reason == "writer-error" and type(err) not in self._traced:
            self._traced.add(type(err))  # the traceback of a bug once; the drop counters say how often
            logger.error("quarantined %r after an unexpected error", item.message, exc_info=err)
        if not self._quarantine(item, why):
            self.stats.discarded += 1
            self.drops.add(reason, f"{item.message!r}: {why} (not stored; "
                                   f"{'left unacknowledged with the broker' if item.qos else 'QoS 0: lost'})")
            return
        self.stats.quarantined += 1
        self.drops.add("quarantined", f"{item.message!r}: {why}")
        if item.qos:
            self._call(self.ack, item.mid, item.qos)

    def _quarantine(self, item: Inbound, why: str) -> bool:
        """Keep a message the database refused in the quarantine table; False if that fails too."""
        conn = self._conn
        assert conn is not None
        topic, payload = wire(item.message)
        try:
            dialect.execute(conn, _QUARANTINE, (format_micros(item.at), topic[:64], payload[:256], why[:512]))
            conn.commit()
        except Exception as err:  # whatever fails, the message must not be acknowledged
            conn.rollback()
            logger.error("could not quarantine %r: %s", item.message, _reason(err))
            return False
        return True

    # -- a database that cannot be written ---------------------------------------------------------------

    def _blocked(self, err: OperationalError, delay: float) -> None:
        """Say, once a minute at most, why nothing can be written; make room in the WAL where possible."""
        now = time.monotonic()
        first = self._blocked_since is None
        if first:
            self._blocked_since = now
        full = _is_full(err)
        logger.debug("the database cannot be written: %s", _reason(err))
        if full:
            self._truncate_wal()
        if first or now - self._blocked_said >= OUTAGE_LOG_EVERY:
            self._blocked_said = now
            space = database_space(self._url)
            free = "unknown space" if space is None else f"{space.free / MIB:.1f} MiB"
            waiting = self.queue.qsize()
            if full:
                logger.error("the disk holding the database is full (%s free in %s): nothing is acknowledged, "
                             "%d message(s) wait here and the rest with the broker; writing resumes by itself "
                             "once space is freed", free, self._db_dir, waiting)
            else:
                logger.error("cannot write to the database (%s); retrying every %.1f s, nothing acknowledged, "
                             "%d message(s) waiting", _reason(err), min(delay * 2, RETRY_MAX), waiting)

    def _unblocked(self) -> None:
        assert self._blocked_since is not None
        logger.warning("writing to the database again after %.0f s", time.monotonic() - self._blocked_since)
        self._blocked_since = None
        self._truncate_wal()
        self._truncate_when_idle = True  # and again once the backlog is in

    def _truncate_wal(self) -> None:
        """Give the WAL file's space back to the file system (it only works when no reader holds it)."""
        if self._db_dir is None or self._conn is None:
            return
        try:
            self._conn.rollback()
            self._conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.rollback()
        except Exception as err:  # best effort: the next attempt tries again
            logger.debug("WAL checkpoint failed: %s", _reason(err))

    def _transaction(self, batch: Sequence[Inbound]) -> Decisions:
        conn = self._conn
        assert conn is not None
        try:
            if self.shared:  # a single worker's engine is the database's state: it never pays for this
                self._refresh(conn, batch)
            done = self.sessions.apply(batch)
            events: list[SessionEvent] = []
            stale: set[int] = set()  # devices whose presence another worker decided later
            sweeps: list[Sweep] = []
            for change in done.changes:
                match change:
                    case NewDevice(device_id, name, mac, session_id, at):
                        stamp = format_micros(at)
                        dialect.execute(conn, _INSERT_DEVICE,
                                        (device_id, name, name, mac, session_id, stamp, stamp, stamp))
                        events.append((Event.STARTED, device_id, session_id, stamp))
                    case NewSession(device_id, session_id, session_name, at):
                        stamp = format_micros(at)
                        dialect.execute(conn, _NEW_SESSION, (session_id, session_name, stamp, device_id))
                        events.append((Event.STARTED, device_id, session_id, stamp))
                    case Presence(device_id, online, at, session_id, cause):
                        stamp = format_micros(at)
                        applied = (bring_back(conn, device_id, session_id, stamp) if cause is Cause.BACK
                                   else set_presence(conn, device_id, session_id, online, stamp))
                        if applied is Applied.CHANGED:
                            done.presence.append(change)
                            events.append((Event.ONLINE if online else Event.ENDED, device_id, session_id, stamp))
                        elif applied is Applied.STALE:
                            stale.add(device_id)
                    case Rename(device_id, name):
                        dialect.execute(conn, _RENAME, (name, device_id))
                    case Sweep():
                        sweeps.append(change)
            for kind, rows in done.readings.items():
                if rows:
                    dialect.insert_readings(conn, kind.value, rows)
            if done.seen:
                # Each device's stamps increase within a batch, so its last row of a kind is its newest.
                led, button, light = ({device_id: (stamp, value) for device_id, stamp, value in done.readings[kind]}
                                      for kind in (Kind.LED, Kind.BUTTON, Kind.LIGHT))
                # In id order: two workers' transactions then lock the same rows in the same order.
                dialect.execute(conn, _SET_LAST_SEEN, [
                    (stamp, stamp, l_at, l_value, l_at, l_at, b_at, b_value, b_at, b_at,
                     p_at, p_value, p_at, p_at, device.id)
                    for device in sorted(done.seen.values(), key=_device_id)
                    for stamp in (format_micros(device.last_seen_us),)
                    for (l_at, l_value) in (led.get(device.id, _NO_READING),)
                    for (b_at, b_value) in (button.get(device.id, _NO_READING),)
                    for (p_at, p_value) in (light.get(device.id, _NO_READING),)
                ])
            for change in sweeps:  # after last_seen moved on: what this batch heard is not swept
                self._sweep(conn, change, done, events)
            if stale:
                self._reread(conn, stale)
            self.history.stage(conn, done.readings, events)
            conn.commit()
        except BaseException:
            conn.rollback()
            self.history.discard()
            raise
        self.history.committed()
        return done

    def _sweep(self, conn: Connection, change: Sweep, done: Decisions, events: list[SessionEvent]) -> None:
        """Take offline the devices nobody heard from since `change.since`."""
        since = format_micros(change.since)
        rows = sweep(conn, since, change.lost)
        self.sessions.swept([(device_id, session) for device_id, session, _name in rows], change.since, change.lost)
        for device_id, session, _name in rows:
            done.presence.append(Presence(device_id, False, change.since, session, Cause.SWEPT))
            events.append((Event.ENDED, device_id, session, since))
        if rows:
            names = ", ".join(name for _id, _session, name in rows[:20])
            done.notes.append(f"broker out of reach: marked {len(rows)} device(s) offline until they are heard from "
                              f"({names})" if change.lost else
                              f"marked {len(rows)} device(s) offline, not heard from since the broker lost our "
                              f"session: {names}")

    def _reread(self, conn: Connection, ids: set[int]) -> None:
        """Take the rows of `ids` as the database holds them (another worker decided their presence later)."""
        sql = dialect.placeholders(f"{_DEVICE_ROWS} WHERE id IN ({', '.join('?' * len(ids))})",
                                   conn.dialect.paramstyle)
        self.sessions.upsert([_device(row) for row in conn.exec_driver_sql(sql, tuple(sorted(ids)))],
                             self.sessions.next_id)

    def _refresh(self, conn: Connection, batch: Sequence[Inbound]) -> None:
        """With several workers, bring the rows `batch` depends on up to the database's state before deciding it.

        A batch that may hand out ids or names (joins, renames) first takes the cross-worker lock, and reads the
        rows of its MACs and renamed devices, of the names it may give, and of the devices other workers added
        since this engine last looked. Any batch reads the rows of sessions this engine does not know, and of
        the devices its LED commands are for: another worker may have seen their join, or their leave. Those few
        rows are read by index, never the whole table (100,000 devices take 1.7 s to read here). Every batch reads
        which devices are lost in an outage (usually none, by a partial index): whichever worker hears one of
        them brings it back.
        """
        sessions = self.sessions
        conn.rollback()
        sessions.mark_lost(lost_devices(conn))
        conn.rollback()  # no snapshot held while the batch is decided
        names: set[str] = set()
        ids: set[int] = set()
        macs: set[str] = set()
        stale: set[tuple[str, str]] = set()  # (session name, session) this engine does not know
        offline: set[tuple[int, str]] = set()  # (device, session) of LED commands
        for item in batch:
            message = item.message
            if isinstance(message, (Reading, SessionRef, Leave)):
                device = sessions.by_session_name.get(message.name)
                if device is None or device.session_id != message.session:
                    stale.add((message.name, message.session))
            elif isinstance(message, LedRequest):
                # Whatever this worker saw: another may have taken the device's leave since.
                offline.add((message.device_id, message.session))
            elif isinstance(message, MacJoin):
                macs.add(message.mac)
            elif isinstance(message, RenameRequest):
                ids.add(message.device_id)
                names.add(message.name)
        locked = bool(macs or ids)
        if not (locked or stale or offline):
            return
        next_id = sessions.next_id
        if locked:
            conn.rollback()
            conn.exec_driver_sql(_DEVICE_LOCK[conn.dialect.name])
            next_id = int(conn.exec_driver_sql(dialect.LAST_DEVICE_ID[conn.dialect.name]).scalar() or 0) + 1
            names.update(default_name(device_id) for device_id in range(next_id, next_id + len(macs)))
        names.update(name for name, _session in stale)
        ids.update(device_id for device_id, _session in offline)
        conditions: list[str] = []
        params: list[object] = []
        for column, values in (("mac", sorted(macs)), ("id", sorted(ids)), ("name", sorted(names)),
                               ("session_name", sorted(names))):
            if values:
                conditions.append(f"{column} IN ({', '.join('?' * len(values))})")
                params += values
        if locked and next_id > sessions.next_id:
            conditions.append("id >= ?")  # devices other workers added since
            params.append(sessions.next_id)
        sql = dialect.placeholders(f"{_DEVICE_ROWS} WHERE {' OR '.join(conditions)}", conn.dialect.paramstyle)
        devices = [_device(row) for row in conn.exec_driver_sql(sql, tuple(params))]
        if not locked:
            conn.rollback()  # a read: no snapshot held while the batch is decided
            if not (stale & {(d.session_name, d.session_id) for d in devices} or offline):
                return  # out of band for the database too
            if stale:
                self.stats.rechecked += 1
                logger.debug("the database knows sessions this worker did not: %d row(s) read", len(devices))
        sessions.upsert(devices, next_id)

    def _after_commit(self, done: Decisions, size: int) -> None:
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, size)
        for kind, rows in done.readings.items():
            self.stats.stored[kind.value] += len(rows)
        if done.presence:
            self.stats.joins += sum(1 for change in done.presence if change.online)
            self.stats.leaves += sum(1 for change in done.presence if not change.online)
            self.stats.online = sum(1 for device in self.sessions.by_id.values() if device.online)
            for change in done.presence:
                if change.cause is not Cause.SWEPT:
                    self._say_presence(change)
        for note in done.notes:
            logger.info("%s", note)
        for reason, detail in done.drops:
            self.drops.add(reason, detail)
        for mid, qos in done.acks:
            self._call(self.ack, mid, qos)
        for topic, payload, qos in done.publishes:
            self._call(self.publish, topic, payload, qos)
        if self.answer is not None:  # after the LED commands they report on
            for reply, outcome in done.replies:
                self._call(self.answer, reply, outcome)
        # What was stored, for the live pages: a few messages a batch rather than one per reading.
        for payload in format_live((device_id, kind, value) for kind, rows in done.readings.items()
                                   for device_id, _stamp, value in rows):
            self._call(self.publish, LIVE_TOPIC, payload, 0)

    def _say_presence(self, change: Presence) -> None:
        device = self.sessions.by_id.get(change.id)
        name = device.name if device is not None else f"device {change.id}"
        if change.cause is Cause.BACK:
            logger.info("%s heard from again after the broker outage: online", name)
        else:
            logger.info("%s %s (device %d, session %s)", name, "joined" if change.online else "left", change.id,
                        change.session_id)

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


def _is_full(err: BaseException) -> bool:
    """Whether the database says the disk (or its size limit) is full."""
    orig = getattr(err, "orig", err)
    code = getattr(orig, "sqlite_errorcode", None)
    text = str(orig).lower()
    return code == 13 or "full" in text or "no space left" in text  # SQLITE_FULL; PostgreSQL's ENOSPC


def _lingers(item: Inbound) -> bool:
    """Whether a batch holding `item` may wait for more: a QoS 0 reading may, nothing else."""
    return not item.qos and isinstance(item.message, Reading)


def _hands_out(batch: Sequence[Inbound]) -> bool:
    """Whether `batch` may hand out a device id or a name (what another worker may have handed out first)."""
    return any(isinstance(item.message, (MacJoin, RenameRequest)) for item in batch)


def _device_id(device: Device) -> int:
    return device.id


def _now_us() -> int:
    return time.time_ns() // 1000


def _reason(err: BaseException) -> str:
    orig = getattr(err, "orig", None)
    return (str(orig if orig is not None else err) or type(err).__name__).splitlines()[0]
