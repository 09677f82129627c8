"""The database writer on a real SQLite file (some tests: and PostgreSQL), without a broker: each kind of failure
injected, nothing lost."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import OperationalError

from sensorhub.commands import LedRequest, Outcome, RenameRequest, Reply
from sensorhub.db import dialect, writes
from sensorhub.db.engine import sqlite_path
from sensorhub.db.latest import refresh_latest
from sensorhub.ingest import writer as writer_module
from sensorhub.ingest.drops import Drops
from sensorhub.ingest.sessions import Decisions, Inbound, Sessions
from sensorhub.ingest.watchdog import Watchdog
from sensorhub.ingest.writer import Writer
from sensorhub.protocol import LIVE_TOPIC, Kind, MacJoin, Reading, SessionRef, Topic
from tests.pgcluster import Cluster
from tests.support import both_databases, wait_for


class Recorder:
    """The writer's view of paho: what it acknowledged and published, in order."""

    def __init__(self) -> None:
        self.acks: list[tuple[int, int]] = []
        self.publishes: list[tuple[str, bytes, int]] = []
        self.fail_acks = False
        #: Called at each acknowledgement, to look at the database at that moment.
        self.on_ack: Any = None

    def ack(self, mid: int, qos: int) -> None:
        if self.fail_acks:
            raise RuntimeError("paho is gone")
        if self.on_ack is not None:
            self.on_ack(mid)
        self.acks.append((mid, qos))

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        self.publishes.append((topic, payload, qos))


@pytest.fixture
def paho() -> Recorder:
    return Recorder()


@pytest.fixture
def writer(engine: Engine, paho: Recorder) -> Iterator[Writer]:
    started = Writer(engine, paho.publish, paho.ack, Drops())
    started.start()
    yield started
    started.failed.clear()
    started.stop(10)


def now() -> int:
    return time.time_ns() // 1000


def joined(writer: Writer, paho: Recorder, mac: str = "02:00:00:00:00:01") -> tuple[str, str]:
    """A device through the whole join; its name and session."""
    writer.submit(Inbound(MacJoin(mac), now()))
    wait_for(lambda: paho.publishes, 5, what="the name assignment")
    name, session = paho.publishes[-1][1].decode().split(";")[1:]
    writer.submit(Inbound(SessionRef(name, session), now()))
    wait_for(lambda: writer.sessions.by_session_name[name].online, 5, what="online")
    return name, session


def light(name: str, session: str, values: Sequence[int], qos: int = 1, first_mid: int = 1) -> list[Inbound]:
    return [Inbound(Reading(Kind.LIGHT, name, session, value), now(), first_mid + i, qos)
            for i, value in enumerate(values)]


def stored(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT value FROM light_reading ORDER BY id")).scalars())


def submit_all(writer: Writer, items: list[Inbound]) -> None:
    """Queue items so that the writer takes them as one batch."""
    writer.queue.put_many(items)


@pytest.fixture
def poison(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """Light values on which the session engine raises, whichever engine the writer has rebuilt."""
    values: set[int] = set()
    apply = Sessions.apply

    def failing_apply(self: Sessions, batch: Sequence[Inbound]) -> Decisions:
        for item in batch:
            if isinstance(item.message, Reading) and item.message.value in values:
                raise RuntimeError(f"engine bug on {item.message.value}")
        return apply(self, batch)

    monkeypatch.setattr(Sessions, "apply", failing_apply)
    return values


def quarantined(engine: Engine) -> list[tuple[str, str, str]]:
    """(topic, payload, reason) of each quarantined message."""
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text("SELECT topic, payload, reason FROM quarantine ORDER BY id"))]


@both_databases
def test_an_engine_exception_quarantines_only_its_message(writer: Writer, paho: Recorder, engine: Engine,
                                                       poison: set[int]) -> None:
    name, session = joined(writer, paho)
    poison.add(66)
    submit_all(writer, light(name, session, [10, 20, 66, 30, 40]))
    wait_for(lambda: len(paho.acks) == 5, 5, what="every message acknowledged")
    assert stored(engine) == [10, 20, 30, 40]
    assert sorted(paho.acks) == [(i, 1) for i in range(1, 6)]  # the bad one too: it is kept aside
    assert writer.drops.snapshot() == {"quarantined": 1}
    assert quarantined(engine) == [("photoresistor/status", f"{name};{session};66",
                                    "writer-error: RuntimeError: engine bug on 66")]
    # The batch, then 66 alone.
    assert writer.stats.failed_batches == 2 and writer.quarantine.quarantined == 1 and writer.alive
    submit_all(writer, light(name, session, [50], first_mid=9))
    wait_for(lambda: stored(engine)[-1:] == [50], 5, what="the writer to go on")


@both_databases
def test_a_row_the_database_refuses_is_quarantined_alone(writer: Writer, paho: Recorder, engine: Engine) -> None:
    name, session = joined(writer, paho)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":  # on PostgreSQL the batch goes through COPY: the whole COPY fails
            conn.execute(text("CREATE FUNCTION refuse_42() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                              "RAISE EXCEPTION 'no 42 here' USING ERRCODE = 'check_violation'; END $$"))
            conn.execute(text("CREATE TRIGGER refuse_42 BEFORE INSERT ON light_reading FOR EACH ROW "
                              "WHEN (NEW.value = 42) EXECUTE FUNCTION refuse_42()"))
        else:
            conn.execute(text("CREATE TRIGGER refuse_42 BEFORE INSERT ON light_reading WHEN NEW.value = 42 "
                              "BEGIN SELECT RAISE(ABORT, 'no 42 here'); END"))
    submit_all(writer, light(name, session, [41, 42, 43]))
    wait_for(lambda: len(paho.acks) == 3, 5, what="every message acknowledged")
    assert stored(engine) == [41, 43]
    drops = writer.drops.snapshot()
    assert drops == {"quarantined": 1} and writer.alive
    [(topic, payload, reason)] = quarantined(engine)
    assert (topic, payload) == ("photoresistor/status", f"{name};{session};42")
    assert reason.startswith("db-rejected: IntegrityError: no 42 here")


def test_a_refused_message_that_cannot_be_quarantined_stays_unacknowledged(writer: Writer, paho: Recorder,
                                                                           engine: Engine) -> None:
    name, session = joined(writer, paho)
    acked_before = len(paho.acks)
    with engine.begin() as conn:
        conn.execute(text("CREATE TRIGGER refuse_42 BEFORE INSERT ON light_reading WHEN NEW.value = 42 "
                          "BEGIN SELECT RAISE(ABORT, 'no 42 here'); END"))
        conn.execute(text("CREATE TRIGGER refuse_quarantine BEFORE INSERT ON quarantine "
                          "BEGIN SELECT RAISE(ABORT, 'no room'); END"))
    submit_all(writer, light(name, session, [41, 42, 43]))
    wait_for(lambda: stored(engine) == [41, 43], 5, what="the others stored")
    wait_for(lambda: writer.quarantine.discarded == 1, 5)
    assert sorted(paho.acks[acked_before:]) == [(1, 1), (3, 1)], "42 is left with the broker, unacknowledged"
    assert writer.drops.snapshot() == {"db-rejected": 1} and writer.alive


def test_a_database_that_cannot_be_written_is_retried_and_nothing_acknowledged_meanwhile(
        writer: Writer, paho: Recorder, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "RETRY_FIRST", 0.05)
    name, session = joined(writer, paho)
    acked_before = len(paho.acks)
    path = sqlite_path(str(engine.url))
    assert path is not None
    blocker = sqlite3.connect(path, isolation_level=None)
    # Waits for a transaction the writer may be finishing (its alert clock runs between batches), then holds the
    # lock as another writer would: the writer's own attempts then fail ("database is locked").
    blocker.execute("PRAGMA busy_timeout = 5000")
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with monkeypatch.context() as patched:
            patched.setattr(writer_module.Writer, "_transaction", _locked_once(writer_module.Writer._transaction))
            submit_all(writer, light(name, session, [1, 2, 3]))
            wait_for(lambda: writer.stats.failed_batches >= 2, 10, what="two failed attempts")
        assert len(paho.acks) == acked_before and stored(engine) == []
    finally:
        blocker.rollback()
        blocker.close()
    wait_for(lambda: stored(engine) == [1, 2, 3], 15, what="the rows once the lock is released")
    wait_for(lambda: len(paho.acks) == acked_before + 3, 5)
    assert writer.drops.snapshot() == {} and writer.alive


def _locked_once(transaction: Any) -> Any:
    """_transaction, but failing as SQLite does on a locked database without waiting its busy timeout."""

    def locked(self: Writer, batch: Sequence[Inbound]) -> Decisions:
        if self.stats.failed_batches < 2:
            raise OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
        result: Decisions = transaction(self, batch)
        return result

    return locked


def test_a_reload_that_fails_is_retried(writer: Writer, paho: Recorder, engine: Engine, poison: set[int],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    name, session = joined(writer, paho)
    monkeypatch.setattr(writer_module, "RETRY_FIRST", 0.01)
    load = writer_module.load_sessions
    failures = [OperationalError("SELECT", {}, sqlite3.OperationalError("disk I/O error"))] * 2

    def flaky_load(conn: Any, timeout: int, **options: Any) -> Sessions:
        if failures:
            raise failures.pop()
        return load(conn, timeout, **options)

    monkeypatch.setattr(writer_module, "load_sessions", flaky_load)
    poison.add(7)
    submit_all(writer, light(name, session, [6, 7, 8]))
    wait_for(lambda: len(paho.acks) >= 3 + 0, 10, what="the batch to get through")
    wait_for(lambda: stored(engine) == [6, 8], 5)
    assert failures == [] and writer.alive and writer.drops.snapshot() == {"quarantined": 1}


def test_a_writer_that_dies_is_reported_once_and_acknowledges_nothing(
        writer: Writer, paho: Recorder, engine: Engine, poison: set[int], monkeypatch: pytest.MonkeyPatch) -> None:
    name, session = joined(writer, paho)
    acked_before = len(paho.acks)

    def broken_load(conn: Any, timeout: int) -> Sessions:
        raise ValueError("a row this code cannot read")  # reloading can never succeed: retrying would spin

    monkeypatch.setattr(writer_module, "load_sessions", broken_load)
    failures: list[str] = []
    watchdog = Watchdog(writer, failures.append, interval=0.05)
    watchdog.start()
    poison.add(3)
    submit_all(writer, light(name, session, [1, 2, 3]))
    wait_for(lambda: failures, 5, what="the watchdog")
    assert not watchdog.step(), "a second look reported again"  # what its thread does next, at once: never again
    assert failures == ["the database writer thread died (0 message(s) queued)"]
    assert len(paho.acks) == acked_before and stored(engine) == []
    assert writer.failed.is_set() and not writer.alive
    assert writer.submit(light(name, session, [4])[0]) is False  # paho is not left waiting for room
    watchdog.stop()


def test_a_writer_that_stops_making_progress_is_reported(writer: Writer, paho: Recorder,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Stepped by hand on a clock that reads a minute past the writer's last sign of life: no thread, no waiting."""
    name, session = joined(writer, paho)
    release, stuck = threading.Event(), threading.Event()
    apply = Sessions.apply

    def hanging_apply(self: Sessions, batch: Sequence[Inbound]) -> Decisions:
        stuck.set()
        release.wait(10)  # stuck in a call that never returns
        return apply(self, batch)

    monkeypatch.setattr(Sessions, "apply", hanging_apply)
    failures: list[str] = []
    watchdog = Watchdog(writer, failures.append, stall_timeout=60, clock=lambda: writer.heartbeat + 61)
    try:
        writer.submit(light(name, session, [1])[0])
        wait_for(stuck.is_set, 5, what="the writer stuck in its batch")
        assert not watchdog.step() and failures == [], "nothing queued behind it yet: a slow batch is not a stall"
        assert not writer.failed.is_set()
        writer.submit(light(name, session, [2])[0])
        assert watchdog.step()
        assert failures == ["the database writer made no progress for 61 s with 1 message(s) queued"]
        assert writer.failed.is_set()
        assert not watchdog.step() and len(failures) == 1  # once
    finally:
        release.set()


@both_databases
def test_failing_acknowledgements_do_not_undo_a_commit(writer: Writer, paho: Recorder, engine: Engine) -> None:
    name, session = joined(writer, paho)
    paho.fail_acks = True
    submit_all(writer, light(name, session, [1, 2]))
    wait_for(lambda: stored(engine) == [1, 2], 5)
    paho.fail_acks = False
    submit_all(writer, light(name, session, [3], first_mid=3))
    wait_for(lambda: stored(engine) == [1, 2, 3], 5)
    wait_for(lambda: paho.acks[-1:] == [(3, 1)], 5)
    assert writer.alive and writer.stats.failed_batches == 0


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_lost_postgresql_connection_is_retried_and_nothing_acknowledged_meanwhile(
        writer: Writer, paho: Recorder, engine: Engine, postgresql: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "RETRY_FIRST", 0.05)
    name, session = joined(writer, paho)
    acked_before = len(paho.acks)
    with engine.begin() as conn:  # the server ends the writer's connection (a restart, a failover, an admin)
        ended = conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid != "
                                  "pg_backend_pid() AND datname = current_database()")).scalars().all()
    assert ended and all(ended)
    submit_all(writer, light(name, session, [1, 2, 3]))
    wait_for(lambda: stored(engine) == [1, 2, 3], 15, what="the rows on a new connection")
    wait_for(lambda: len(paho.acks) == acked_before + 3, 5)
    assert writer.stats.failed_batches >= 1 and writer.drops.snapshot() == {} and writer.alive
    submit_all(writer, light(name, session, [4], first_mid=9))
    wait_for(lambda: stored(engine) == [1, 2, 3, 4], 5, what="the writer to go on")


def test_stop_commits_and_acknowledges_everything_queued(writer: Writer, paho: Recorder, engine: Engine) -> None:
    name, session = joined(writer, paho)
    path = sqlite_path(str(engine.url))
    assert path is not None
    visible_at_ack: list[tuple[int, int]] = []
    paho.on_ack = lambda mid: visible_at_ack.append((mid, len(stored(engine))))
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    for item in light(name, session, [v % 101 for v in range(500)], qos=2):
        writer.submit(item)
    stopping = threading.Thread(target=writer.stop)
    stopping.start()
    blocker.rollback()
    blocker.close()
    stopping.join(30)
    assert not stopping.is_alive() and not writer.alive
    assert stored(engine) == [v % 101 for v in range(500)]
    assert [mid for mid, qos in paho.acks if qos == 2] == list(range(1, 501))
    assert all(visible >= mid for mid, visible in visible_at_ack), "acknowledged before it was committed"


@pytest.fixture
def other(engine: Engine) -> Iterator[tuple[Writer, Recorder]]:
    """A second worker's writer on the same database, started before the first one changed anything."""
    recorder = Recorder()
    started = Writer(engine, recorder.publish, recorder.ack, Drops())
    started.start()
    yield started, recorder
    started.stop(10)


@both_databases
def test_a_join_another_worker_got_first_is_applied_again_not_quarantined(
        other: tuple[Writer, Recorder], writer: Writer, paho: Recorder, engine: Engine) -> None:
    second, recorder = other  # its engine still hands out device 1, which the first writer now holds
    name, _session = joined(writer, paho, "02:00:00:00:00:01")
    second.submit(Inbound(MacJoin("02:00:00:00:00:02"), now(), 7, 2))
    wait_for(lambda: recorder.acks, 5, what="the join acknowledged")
    assert recorder.acks == [(7, 2)]
    assert recorder.publishes[0][1].decode().startswith("02:00:00:00:00:02;capteur02;")
    assert second.stats.failed_batches == 1 and second.quarantine.quarantined == 0
    assert second.drops.snapshot() == {} and quarantined(engine) == []
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, name, mac FROM device ORDER BY id")).all()
    assert [tuple(row) for row in rows] == [(1, name, "02:00:00:00:00:01"), (2, "capteur02", "02:00:00:00:00:02")]


@both_databases
def test_messages_of_a_session_another_worker_started_are_checked_against_the_database(
        other: tuple[Writer, Recorder], writer: Writer, paho: Recorder, engine: Engine) -> None:
    second, recorder = other
    name, session = joined(writer, paho)  # the join reached the first worker; the rest reaches the second
    submit_all(second, light(name, session, [10], first_mid=20))  # not started as one of several: no look
    wait_for(lambda: recorder.acks == [(20, 1)], 5, what="the drop acknowledged")
    assert second.stats.rechecked == 0 and stored(engine) == []
    recorder.acks.clear()
    second.shared = True  # one of several workers: another may have started the session
    submit_all(second, [*light(name, session, [11, 22]), Inbound(SessionRef(name, session), now(), 3, 2),
                        *light(name, "0000", [99], first_mid=4), *light("nobody", session, [98], first_mid=5)])
    wait_for(lambda: len(recorder.acks) == 5, 5, what="every message acknowledged")
    assert stored(engine) == [11, 22]
    assert second.stats.rechecked == 1  # one rebuild for the whole batch
    assert second.drops.snapshot() == {"out-of-band": 1, "unknown-device": 2}  # 10, then unknown to the db too
    submit_all(second, light(name, "0000", [97], first_mid=6))  # already known to be out of band: no rebuild
    wait_for(lambda: len(recorder.acks) == 6, 5, what="acknowledged")
    assert second.stats.rechecked == 1 and stored(engine) == [11, 22]


@both_databases
def test_a_led_command_for_a_device_another_worker_put_online_is_checked_against_the_database(
        other: tuple[Writer, Recorder], writer: Writer, paho: Recorder, engine: Engine) -> None:
    """The command reaches a worker that never heard of the device (another took its join): the database says
    it is online in that session, so the LED is switched; a command for a session gone stays refused."""
    second, recorder = other
    second.shared = True
    name, session = joined(writer, paho)
    second.submit(Inbound(LedRequest(1, session, True), now(), 8, 1))
    wait_for(lambda: recorder.acks == [(8, 1)], 5, what="the command acknowledged")
    assert recorder.publishes == [(Topic.LED_COMMAND, f"{name};{session};1".encode(), 1)]
    assert second.drops.snapshot() == {}
    second.submit(Inbound(LedRequest(1, "1.000000", True), now(), 9, 1))  # not the device's session
    wait_for(lambda: len(recorder.acks) == 2, 5, what="the stale command acknowledged")
    assert len(recorder.publishes) == 1 and second.drops.snapshot() == {"pipe-offline": 1}


@both_databases
def test_a_worker_reads_only_the_rows_a_batch_needs_never_the_whole_device_table(
        other: tuple[Writer, Recorder], writer: Writer, paho: Recorder, engine: Engine) -> None:
    """Joins and renames under the lock, and sessions another worker started, read a few rows by index: with
    100,000 devices the whole table takes seconds to read, and every join batch would pay for it."""
    second, recorder = other
    second.shared = True
    name, session = joined(writer, paho, "02:00:00:00:00:01")  # through the first worker
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", record)
    try:
        submit_all(second, [Inbound(MacJoin("02:00:00:00:00:02"), now(), 1, 2),
                            Inbound(RenameRequest(1, "salle B"), now()), *light(name, session, [5], first_mid=2)])
        wait_for(lambda: len(recorder.acks) == 2, 5, what="the batch acknowledged")
    finally:
        event.remove(engine, "before_cursor_execute", record)
    reads = [statement for statement in statements if statement.startswith("SELECT") and "FROM device" in statement]
    assert reads and all(" WHERE " in statement for statement in reads), reads
    assert stored(engine) == [5] and second.drops.snapshot() == {}  # the reading's session was read, not dropped
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, name, session_name FROM device ORDER BY id")).all()
    assert [tuple(row) for row in rows] == [(1, "salle B", name), (2, "capteur02", "capteur02")]


@both_databases
def test_joins_arriving_at_two_workers_at_once_each_get_a_device_and_a_name(engine: Engine) -> None:
    """Two workers' writers (`shared`): joins are decided under the database's lock, so none collides."""
    recorders = [Recorder(), Recorder()]
    writers = [Writer(engine, recorder.publish, recorder.ack, Drops(), shared=True) for recorder in recorders]
    for started in writers:
        started.start()
    macs = [f"02:00:00:00:01:{n:02X}" for n in range(60)]
    try:
        for number, started in enumerate(writers):
            for n, mac in enumerate(macs[number::2]):  # one at a time: as many batches as joins
                started.submit(Inbound(MacJoin(mac), now(), n + 1, 2))
        wait_for(lambda: [len(recorder.acks) for recorder in recorders] == [30, 30], 20,
                 what="every join acknowledged")
    finally:
        for started in writers:
            started.stop(10)
    assigned = {payload.decode().split(";")[0]: payload.decode().split(";")[1]
                for recorder in recorders for _topic, payload, _qos in recorder.publishes}
    with engine.connect() as conn:
        rows = {mac: name for mac, name in conn.execute(text("SELECT mac, session_name FROM device"))}
    assert rows == assigned and len(rows) == 60  # one device each, the name the database holds
    assert quarantined(engine) == [] and [w.drops.snapshot() for w in writers] == [{}, {}]
    assert [w.stats.failed_batches for w in writers] == [0, 0]  # no collision to retry


LATEST = "SELECT last_led, last_button, last_light, last_led_at, last_button_at, last_light_at FROM device WHERE id = 1"


def latest_columns(engine: Engine) -> tuple[Any, ...]:
    """Device 1's latest value columns as stored, and as recomputed from its readings (rolled back)."""
    with engine.connect() as conn:
        kept = tuple(conn.execute(text(LATEST)).one())
        refresh_latest(conn, [1])
        recomputed = tuple(conn.execute(text(LATEST)).one())
        conn.rollback()
    assert kept == recomputed, "the writer's latest values differ from the readings"
    return kept


@both_databases
def test_the_writer_keeps_each_kinds_latest_value_in_the_device_row(writer: Writer, paho: Recorder,
                                                                     engine: Engine) -> None:
    name, session = joined(writer, paho)
    assert latest_columns(engine) == (None,) * 6

    def reading(kind: Kind, value: int, mid: int) -> Inbound:
        return Inbound(Reading(kind, name, session, value), now(), mid, 1)

    submit_all(writer, [reading(Kind.LED, 1, 1), reading(Kind.LIGHT, 10, 2), reading(Kind.LIGHT, 20, 3),
                        reading(Kind.BUTTON, 1, 4), reading(Kind.LED, 0, 5)])
    wait_for(lambda: len(paho.acks) == 5, 5, what="the batch acknowledged")
    assert latest_columns(engine)[:3] == (0, 1, 20)
    submit_all(writer, light(name, session, [30], first_mid=6))  # a batch of one kind leaves the others alone
    wait_for(lambda: len(paho.acks) == 6, 5, what="acknowledged")
    values = latest_columns(engine)
    assert values[:3] == (0, 1, 30) and values[3] < values[5]


@both_databases
def test_an_older_batch_never_replaces_a_newer_latest_value(writer: Writer, paho: Recorder, engine: Engine) -> None:
    """Another worker may commit an older batch after a newer one: its values (older stamps) are not kept."""
    name, session = joined(writer, paho)
    submit_all(writer, light(name, session, [40]))
    wait_for(lambda: len(paho.acks) == 1, 5, what="acknowledged")
    led, button, light_value, _, _, newest = latest_columns(engine)
    assert (led, button, light_value) == (None, None, 40)
    with engine.connect() as conn:
        seen = conn.execute(text("SELECT last_seen FROM device WHERE id = 1")).scalar_one()
        older = "2000-01-01 00:00:00.000000"
        # (last_seen x2, then per kind led, button, light: stamp, value, stamp, stamp; device id)
        dialect.execute(conn, writes.SET_LAST_SEEN, [
            (older, older, older, 1, older, older, None, None, None, None, older, 99, older, older, 1)])
        conn.commit()
        row = conn.execute(text(LATEST)).one()
        assert (row[0], row[1], row[2], row[5]) == (1, None, 40, newest)  # led was unknown: taken; light kept
        assert conn.execute(text("SELECT last_seen FROM device WHERE id = 1")).scalar_one() == seen
        dialect.execute(conn, writes.SET_LAST_SEEN, [
            (older, older, None, None, None, None, None, None, None, None, newest, 77, newest, newest, 1)])
        conn.commit()
        assert conn.execute(text("SELECT last_light FROM device WHERE id = 1")).scalar_one() == 77  # same stamp


def test_qos0_readings_wait_a_little_for_company_and_acknowledged_messages_do_not(
        engine: Engine, paho: Recorder) -> None:
    """Group commit: QoS 0 readings arriving within the linger share one transaction (and one live message);
    a QoS 1 reading, which the broker stops sending 20 of until we acknowledge, is committed at once."""
    started = Writer(engine, paho.publish, paho.ack, Drops(), linger=2.0)
    started.start()
    try:
        name, session = joined(started, paho)
        batches = started.stats.batches
        for item in light(name, session, [10, 11, 12], qos=0):
            started.submit(item)
            time.sleep(0.05)  # kept: arrivals spread in time, each well inside the linger, are what is tested
        wait_for(lambda: started.stats.stored["light"] == 3, 5, what="the three QoS 0 readings")
        assert started.stats.batches == batches + 1
        live = [payload for topic, payload, _qos in paho.publishes if topic == LIVE_TOPIC]
        assert live == [b"1;p;10\n1;p;11\n1;p;12"]
        started.linger = 60.0  # a QoS 1 reading that waited for the linger would not be acknowledged in time below
        started.submit(light(name, session, [13], qos=1, first_mid=40)[0])
        wait_for(lambda: paho.acks == [(40, 1)], 10, what="the QoS 1 reading acknowledged, not lingering")
    finally:
        started.stop(10)


def test_commands_are_answered_after_commit_and_dropped_once_their_web_server_stopped_waiting(
        engine: Engine, paho: Recorder) -> None:
    """A command from the broker gets its outcome once committed, after the board's `led/command`; one whose web
    server has stopped waiting (its deadline passed in the queue) is dropped and acknowledged, not carried out."""
    answers: list[tuple[Reply, Outcome]] = []

    def answer(reply: Reply, outcome: Outcome) -> None:
        answers.append((reply, outcome))
        paho.publishes.append((reply.topic, outcome.value.encode(), 1))  # to see the order

    drops = Drops()
    started = Writer(engine, paho.publish, paho.ack, drops, answer=answer)
    started.start()
    try:
        name, session = joined(started, paho)
        device = started.sessions.by_session_name[name].id
        waiting, late = (Reply("sensorhub/replies/0123456789abcdef", number, time.monotonic() + delay)
                         for number, delay in ((b"\0\0\0\1", 60.0), (b"\0\0\0\2", -1.0)))
        started.submit(Inbound(LedRequest(device, "1.000000", True), now(), 11, 1, waiting))
        started.submit(Inbound(LedRequest(device, session, False), now(), 12, 1, late))
        started.submit(Inbound(RenameRequest(device, "salle B"), now(), 13, 1, waiting))
        started.submit(Inbound(LedRequest(device, session, True), now(), 14, 1, waiting))
        wait_for(lambda: len(answers) == 3, 5, what="the answers")
        assert [outcome for _reply, outcome in answers] == [Outcome.OFFLINE, Outcome.RENAMED, Outcome.SENT]
        command = paho.publishes.index((Topic.LED_COMMAND, f"{name};{session};1".encode(), 1))
        assert command < paho.publishes.index(("sensorhub/replies/0123456789abcdef", b"sent", 1))
        assert not any(payload.endswith(b";0") for _topic, payload, _qos in paho.publishes)
        wait_for(lambda: {11, 12, 13, 14} <= {mid for mid, _qos in paho.acks}, 5, what="the acknowledgements")
        assert drops.snapshot() == {"pipe-offline": 1, "command-late": 1}
    finally:
        started.stop(10)


def test_after_an_outage_the_wal_is_given_back_at_each_idle_moment_until_the_backlog_is_in(tmp_path: Any) -> None:
    """The broker hands a backlog over in bursts: an idle moment between two bursts truncates the WAL, and the next
    idle moment after the next burst does again; the first idle moment with nothing written since ends it, and so
    does the window. (It ended at the first idle moment before: on a busy machine, mid-backlog.)"""
    from sensorhub.db.engine import make_engine
    from sensorhub.ingest.outage import QUIET, TRUNCATE_WINDOW, Outage

    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    engine = make_engine(url, create_dir=True)
    wal = tmp_path / "db.sqlite3-wal"
    now = [0.0]
    outage = Outage(url, lambda: 0, clock=lambda: now[0])

    def burst(conn: Any) -> None:
        conn.execute(text("INSERT INTO t (v) VALUES (:v)"), [{"v": "x" * 200} for _ in range(50)])
        conn.commit()
        assert wal.stat().st_size > 0

    try:
        with engine.connect() as conn:
            conn.execute(text("CREATE TABLE t (v TEXT)"))
            conn.commit()
            outage.since = 0.0  # the disk was full
            burst(conn)
            outage.written(conn)  # writing again: truncated at once
            assert wal.stat().st_size == 0 and outage.since is None
            for _ in range(3):  # the backlog in bursts, idle moments in between, the first before any burst
                now[0] += 1.0
                outage.idle(conn)
                burst(conn)
                outage.written(conn)
                now[0] += 1.0
                outage.idle(conn)
                assert wal.stat().st_size == 0 and outage.truncate_until is not None
            now[0] += QUIET
            outage.idle(conn)  # nothing written for a while: the backlog is in
            assert outage.truncate_until is None
            burst(conn)
            outage.written(conn)
            outage.idle(conn)  # no outage: the WAL is SQLite's to manage
            assert wal.stat().st_size > 0
            outage.since = now[0]  # another outage, and a backlog longer than the window
            outage.written(conn)
            burst(conn)
            now[0] += TRUNCATE_WINDOW + 1
            outage.idle(conn)
            assert wal.stat().st_size > 0 and outage.truncate_until is None
    finally:
        engine.dispose()
