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
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from sensorhub.alerting import Metric
from sensorhub.commands import Outcome, RenameRequest, Reply
from sensorhub.db import dialect, writes
from sensorhub.db.presence import Applied, bring_back, set_presence, sweep
from sensorhub.errors import reason
from sensorhub.ingest.alerts import Alerts
from sensorhub.ingest.bookkeeping import Event, History, SessionEvent
from sensorhub.ingest.drops import Drops
from sensorhub.ingest.inbox import Empty, Inbox
from sensorhub.ingest.limits import Limits
from sensorhub.ingest.metrics import IngestMetrics
from sensorhub.ingest.outage import Outage
from sensorhub.ingest.quarantine import Quarantine
from sensorhub.ingest.refresh import load_sessions, refresh, reread
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
)
from sensorhub.protocol import LIVE_TOPIC, Kind, MacJoin, Reading, format_live
from sensorhub.timestamps import format_micros

logger = logging.getLogger(__name__)

#: Room for QoS 0 readings between paho and the writer (ingest/inbox.py): memory stays bounded under a flood (a
#: queued reading takes about 350 bytes); beyond it readings are shed and counted, paho is never held up.
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
#: Told what each batch committed, and which devices retention deleted (sensorhub.ingest.homeassistant).
Committed = Callable[[Decisions], object]
Deleted = Callable[[list[int]], object]

#: Attempts again, on the engine rebuilt from the database, of a batch handing out device ids or names that
#: the database refused: joins arriving at several workers at once can collide more than once.
CONFLICT_RETRIES = 3
#: Asks the writer thread to stop once it has written everything queued before it.
_STOP = None


@dataclass
class WriterStats:
    """Counts since start, for logs, tests and benchmarks."""

    stored: dict[str, int] = field(default_factory=lambda: dict.fromkeys((k.value for k in Kind), 0))
    batches: int = 0
    largest_batch: int = 0
    failed_batches: int = 0
    #: Devices that came online and went offline since start, and how many are online now.
    joins: int = 0
    leaves: int = 0
    online: int = 0
    #: Times the engine was rebuilt because the database knew a device or session it did not.
    rechecked: int = 0


class Writer:
    """Owns the database connection; everything that changes the database goes through `submit`."""

    def __init__(self, engine: Engine, publish: Publish, ack: Ack, drops: Drops, *,
                 presence_timeout: float = 15.0, queue_max: int = QUEUE_MAX, batch_max: int = BATCH_MAX,
                 history: History | None = None, purger: Purger | None = None,
                 metrics: IngestMetrics | None = None, shared: bool = False, linger: float = LINGER,
                 answer: Answer | None = None, limits: Limits | None = None, alerts: Alerts | None = None,
                 committed: Committed | None = None, deleted: Deleted | None = None) -> None:
        self.engine = engine
        #: Home Assistant's side (ingest/homeassistant.py), told after each commit and each deletion.
        self.committed = committed
        self.deleted = deleted
        #: Alert rules evaluated in each batch's transaction, and the alert clock between batches.
        self.alerts = alerts if alerts is not None else Alerts()
        self.alerts.shared = shared
        #: The flood limits (ingest/limits.py; none by default), kept across the engines rebuilt from the database.
        self.limits = limits if limits is not None else Limits.of()
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
        self.queue: Inbox[Inbound | None] = Inbox(queue_max, _qos0_reading)
        self.stats = WriterStats()
        self.sessions = Sessions(presence_timeout_us=self.presence_timeout_us, exact=not shared, limits=self.limits)
        #: Set when the writer is given up on: `submit` stops waiting for room and refuses.
        self.failed = threading.Event()
        #: time.monotonic() of the writer's last sign of life (the Watchdog reads it).
        self.heartbeat = time.monotonic()
        self._conn: Connection | None = None
        self._thread: threading.Thread | None = None
        self.quarantine = Quarantine(drops, lambda mid, qos: self._call(self.ack, mid, qos))
        self.outage = Outage(engine.url.render_as_string(hide_password=False), self.waiting)

    @property
    def shared(self) -> bool:
        """One of several workers on this database: joins and renames are decided under a lock, on the device
        table as the database holds it then, and every join and leave goes to the database (db/presence.py)."""
        return self._shared

    @shared.setter
    def shared(self, shared: bool) -> None:
        self._shared = shared
        self.sessions.exact = not shared
        self.alerts.shared = shared

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the sessions from the database and start the writer thread."""
        self.open()
        self._thread = threading.Thread(target=self._guarded_run, name="db-writer", daemon=True)
        self._thread.start()

    def open(self) -> None:
        """Connect and load the sessions from the database (what `start` does before its thread runs)."""
        self._conn = self.engine.connect()
        self.sessions = load_sessions(self._conn, self.presence_timeout_us, exact=not self.shared, limits=self.limits)
        self.stats.online = sum(1 for device in self.sessions.by_id.values() if device.online)
        self.history.load(self._conn)
        self.alerts.load(self._conn)
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
        """Queue an item without holding the caller (paho's network thread) for long.

        False if it was not queued: the writer was given up on (nothing more may be acknowledged), or a QoS 0
        reading found no room (ingest/inbox.py: counted as `queue-full`, lost as QoS 0 may be).
        """
        if self.failed.is_set():
            return False
        if self.queue.put(item):
            return True
        self.drops.add("queue-full", f"{item.message!r}: the database writer is behind (QoS 0: not stored)")
        return False

    def waiting(self) -> int:
        """How many messages wait for the writer."""
        return self.queue.qsize()

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
            timeout = min(timeout, self.alerts.clock_due())
            due = self.sessions.sweep_due
            if due is not None:
                timeout = max(0.0, min(timeout, (due - _now_us()) / 1e6))
            try:
                first = self.queue.get(timeout=timeout)
            except Empty:
                if self._conn is not None:
                    self.outage.idle(self._conn)
                self._maybe_sweep()
                self._maybe_tick()
                self._maybe_purge(busy=False)
                continue
            batch: list[Inbound] = []
            stopping = first is _STOP
            if first is not _STOP:
                batch.append(first)
                stopping = self._gather(batch)
            self.process(batch)
            self._maybe_sweep()
            self._maybe_tick()
            self._maybe_purge(busy=not self.queue.empty())
            if stopping:
                logger.info("database writer stopped after storing %s", self.stats.stored)
                return

    def _gather(self, batch: list[Inbound]) -> bool:
        """Add what is queued to `batch`, waiting up to `linger` for more while it holds only QoS 0 readings;
        True if the writer is asked to stop."""
        deadline = time.monotonic() + self.linger
        lingering = self.linger > 0 and _qos0_reading(batch[0])
        while len(batch) < self.batch_max:
            try:
                if lingering:
                    remaining = deadline - time.monotonic()
                    item = self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait()
                else:
                    item = self.queue.get_nowait()
            except Empty:
                return False
            if item is _STOP:
                return True
            batch.append(item)
            lingering = lingering and _qos0_reading(item)
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
                assert self._conn is not None
                self.outage.blocked(self._conn, err, min(delay * 2, RETRY_MAX))
                self._reload()
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            except Exception as err:
                failure = err
            else:
                assert self._conn is not None
                self.outage.written(self._conn)
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
                            len(batch), reason(failure))
                continue
            if len(batch) == 1:
                assert self._conn is not None
                self.quarantine.discard(self._conn, batch[0], failure)
                return
            logger.warning("a batch of %d failed (%s: %s); retrying one message at a time", len(batch),
                           type(failure).__name__, reason(failure))
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
            sessions = load_sessions(self._conn, self.presence_timeout_us, exact=not self.shared, limits=self.limits)
            self.history.load(self._conn)
            self.alerts.load(self._conn)
            self._conn.rollback()
        except OperationalError as err:
            logger.debug("reloading the sessions failed too: %s", reason(err))
            return False
        self._replace_sessions(sessions)
        return True

    def _replace_sessions(self, sessions: Sessions) -> None:
        """Take an engine rebuilt from the database, carrying on what the current one knew beyond the table."""
        sessions.resume_presence_check(self.sessions)
        self.sessions = sessions

    def _transaction(self, batch: Sequence[Inbound]) -> Decisions:
        conn = self._conn
        assert conn is not None
        try:
            # A single worker's engine is the database's state: it never pays for the refresh.
            if self.shared and refresh(conn, self.sessions, batch):
                self.stats.rechecked += 1
            done = self.sessions.apply(batch)
            events: list[SessionEvent] = []
            stale: set[int] = set()  # devices whose presence another worker decided later
            sweeps: list[Sweep] = []
            for change in done.changes:
                match change:
                    case NewDevice(device_id, name, mac, session_id, at):
                        stamp = format_micros(at)
                        dialect.execute(conn, writes.INSERT_DEVICE,
                                        (device_id, name, name, mac, session_id, stamp, stamp, stamp))
                        events.append((Event.STARTED, device_id, session_id, stamp))
                    case NewSession(device_id, session_id, session_name, at):
                        stamp = format_micros(at)
                        dialect.execute(conn, writes.NEW_SESSION, (session_id, session_name, stamp, device_id))
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
                        dialect.execute(conn, writes.RENAME, (name, device_id))
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
                dialect.execute(conn, writes.SET_LAST_SEEN, [
                    (stamp, stamp, l_at, l_value, l_at, l_at, b_at, b_value, b_at, b_at,
                     p_at, p_value, p_at, p_at, device.id)
                    for device in sorted(done.seen.values(), key=_device_id)
                    for stamp in (format_micros(device.last_seen_us),)
                    for (l_at, l_value) in (led.get(device.id, writes.NO_READING),)
                    for (b_at, b_value) in (button.get(device.id, writes.NO_READING),)
                    for (p_at, p_value) in (light.get(device.id, writes.NO_READING),)
                ])
            for change in sweeps:  # after last_seen moved on: what this batch heard is not swept
                self._sweep(conn, change, done, events)
            if stale:
                reread(conn, self.sessions, stale)
            self._stage_alerts(conn, done)
            self.history.stage(conn, done.readings, events)
            conn.commit()
        except BaseException:
            conn.rollback()
            self.history.discard()
            self.limits.rollback()  # a retried batch is limited once, not once per attempt
            raise
        self.history.committed()
        self.limits.commit()
        return done

    def _stage_alerts(self, conn: Connection, done: Decisions) -> None:
        """Evaluate the alert rules on what the batch stores, in its transaction."""
        renamed = [change.id for change in done.changes if isinstance(change, Rename)]
        if renamed:
            self.alerts.renamed(renamed)
        if not self.alerts.any:
            return
        by_id = self.sessions.by_id
        self.alerts.stage(conn, {_METRICS[kind]: rows for kind, rows in done.readings.items() if rows},
                          [(change.id, change.online, change.at) for change in done.presence], done.seen.keys(),
                          lambda device_id: device.name if (device := by_id.get(device_id)) is not None else None)

    def _maybe_tick(self) -> None:
        if self.alerts.clock_due() <= 0:
            self.clock()

    def clock(self, now_us: int | None = None) -> int:
        """Run the alert clock now (the writer thread does every CLOCK_PERIOD; a test seam with `now_us`); how many
        alerts changed. A failure is said and tried again at the next period."""
        if self._conn is None:
            return 0
        try:
            return self.alerts.tick(self._conn, now_us)
        except SQLAlchemyError as err:
            self._conn.rollback()
            logger.warning("the alert clock failed (%s); trying again shortly", reason(err))
            self._reload()
            return 0

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
        for why, detail in done.drops:
            self.drops.add(why, detail)
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
        if self.committed is not None:
            self._call(self.committed, done)

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
            logger.warning("retention purge failed (%s); retrying later", reason(err))
            self.purger.delay(5.0)
        finally:
            deleted = self.purger.take_deleted_devices()
            if deleted:
                self.sessions.forget(deleted)
                self.alerts.deleted(deleted)
                if self.deleted is not None:
                    self._call(self.deleted, deleted)

    def _call(self, action: Callable[..., object], *args: object) -> None:
        """Acknowledge or publish; what is committed stays committed whatever paho says."""
        try:
            action(*args)
        except Exception as err:
            logger.error("could not %s %s: %s", getattr(action, "__name__", "call"), args[:2], err)


_METRICS = {Kind.LED: Metric.LED, Kind.BUTTON: Metric.BUTTON, Kind.LIGHT: Metric.LIGHT}


def _qos0_reading(item: Inbound | None) -> bool:
    """A QoS 0 reading: the only kind a batch may wait for company with, and the only kind the inbox may shed."""
    return item is not None and not item.qos and type(item.message) is Reading


def _hands_out(batch: Sequence[Inbound]) -> bool:
    """Whether `batch` may hand out a device id or a name (what another worker may have handed out first)."""
    return any(isinstance(item.message, (MacJoin, RenameRequest)) for item in batch)


def _device_id(device: Device) -> int:
    return device.id


def _now_us() -> int:
    return time.time_ns() // 1000
