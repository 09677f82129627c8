"""Presence decided in the database (sensorhub.db.presence), with several workers sharing one database.

The real writers on a real database, stepped by the test in the order it chooses (no threads, no broker): each
message goes to one worker, as the broker's share group would send it, and the workers take their batches in
any interleaving. Whatever the order, once every message is taken a device is online exactly when its board is
connected in its current session.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from sensorhub.broker import Broker
from sensorhub.config import Settings
from sensorhub.db.engine import make_engine
from sensorhub.db.presence import Applied, bring_back, set_presence, sweep
from sensorhub.db.schema import upgrade
from sensorhub.ingest.drops import Drops
from sensorhub.ingest.sessions import BrokerOutage, BrokerSessionLost, Inbound, Incoming, SweepDue
from sensorhub.ingest.writer import Writer
from sensorhub.protocol import Kind, Leave, MacJoin, Reading, SessionRef, Topic, parse_name_assign
from sensorhub.simulator.fleet import Fleet
from sensorhub.timestamps import format_micros
from sensorhub.web import create_app
from tests.factories import device_row, insert_devices
from tests.stack import check_not_died, sensorhub, start
from tests.support import both_databases

T0 = 1_780_000_000_000_000
#: The presence timeout of the model's workers (µs): a sweep is due this long after the broker lost their session.
TIMEOUT_US = 1_000


class Worker:
    """A writer stepped by the test, and what it published."""

    def __init__(self, engine: Engine) -> None:
        self.publishes: list[tuple[str, bytes, int]] = []
        self.writer = Writer(engine, lambda topic, payload, qos: self.publishes.append((topic, payload, qos)),
                             lambda _mid, _qos: None, Drops(), shared=True, presence_timeout=TIMEOUT_US / 1e6,
                             linger=0)
        self.writer.open()
        self.inbox: list[Inbound] = []

    def take(self, count: int) -> list[tuple[str, str, str]]:
        """Commit the next `count` messages of the inbox; the (MAC, name, session) of each name it gave."""
        batch, self.inbox = self.inbox[:count], self.inbox[count:]
        self.publishes.clear()
        self.writer.process(batch)
        found = []
        for topic, payload, _qos in self.publishes:
            if topic == Topic.NAME_ASSIGN:
                assign = parse_name_assign(payload)
                found.append((assign.mac, assign.name, assign.session))
        return found


@dataclass
class Board:
    """What a board knows and does: its name and session once assigned, connected once it joined in them."""

    mac: str
    name: str | None = None
    session: str | None = None
    asked: bool = False  # a MAC join is on its way
    connected: bool = False


@dataclass
class Model:
    """Boards, workers sharing one database, and the clock of the broker's arrivals."""

    workers: list[Worker]
    boards: list[Board]
    now: int = T0
    log: list[str] = field(default_factory=list)

    def send(self, worker: int, message: Incoming) -> None:
        self.now += 10
        self.workers[worker].inbox.append(Inbound(message, self.now))
        self.log.append(f"{message} -> worker {worker}")

    def take(self, worker: int, count: int) -> None:
        for mac, name, session in self.workers[worker].take(count):
            board = next(b for b in self.boards if b.mac == mac)
            board.name, board.session, board.asked = name, session, False
        self.log.append(f"worker {worker} took {count}")


def devices(engine: Engine) -> dict[str, tuple[bool, str]]:
    """(online, session) of each device, by MAC."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT mac, online, session_id FROM device"))
        return {row[0]: (bool(row[1]), row[2]) for row in rows}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty database at the newest schema, copied for each example."""
    path = tmp_path_factory.mktemp("presence") / "template.sqlite3"
    upgrade(f"sqlite:///{path}")
    return path


MACS = [f"02:00:00:00:01:{i:02X}" for i in range(6)]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data(), worker_count=st.sampled_from([2, 3]))
def test_several_workers_agree_on_presence_whatever_the_order(template: Path, tmp_path_factory: pytest.TempPathFactory,
                                                               data: st.DataObject, worker_count: int) -> None:
    path = tmp_path_factory.mktemp("example") / "db.sqlite3"
    shutil.copy(template, path)
    engine = make_engine(f"sqlite:///{path}")
    model = Model([Worker(engine) for _ in range(worker_count)], [Board(mac) for mac in MACS[:data.draw(
        st.integers(1, 3))]])
    any_worker = st.integers(0, worker_count - 1)
    try:
        for _ in range(data.draw(st.integers(20, 80))):
            action = data.draw(st.sampled_from(["board"] * 6 + ["take"] * 5 + ["restart"]))
            board = data.draw(st.sampled_from(model.boards))
            if action == "board":  # the board's next step of the protocol
                if board.connected:
                    assert board.name is not None and board.session is not None
                    if data.draw(st.booleans()):
                        model.send(data.draw(any_worker), Reading(Kind.LIGHT, board.name, board.session, 50))
                    else:
                        model.send(data.draw(any_worker), Leave(board.name, board.session))
                        board.connected, board.name, board.session = False, None, None  # MAC join first again
                elif board.name is not None and board.session is not None:
                    board.connected = True
                    model.send(data.draw(any_worker), SessionRef(board.name, board.session))
                elif not board.asked:
                    board.asked = True
                    model.send(data.draw(any_worker), MacJoin(board.mac))
            elif action == "take":
                worker = data.draw(any_worker)
                model.take(worker, data.draw(st.integers(1, 4)))
            else:  # the broker restarts: every board drops without a Will
                model.now += 10
                for worker in model.workers:
                    worker.inbox.append(Inbound(BrokerSessionLost(), model.now))
                for each in model.boards:
                    each.connected, each.name, each.session = False, None, None
                model.log.append("broker restart")
        while any(worker.inbox for worker in model.workers):  # every message taken, in any order
            worker = data.draw(st.sampled_from([i for i, w in enumerate(model.workers) if w.inbox]))
            model.take(worker, data.draw(st.integers(1, 4)))
        model.now += 10 * TIMEOUT_US
        for number, worker in enumerate(model.workers):  # the sweeps that came due
            worker.inbox.append(Inbound(SweepDue(), model.now))
            model.take(number, 1)
        found = devices(engine)
        for board in model.boards:
            if board.mac not in found:
                assert not board.connected
                continue
            online, session = found[board.mac]
            expected = board.connected and session == board.session
            assert online == expected, (f"{board.mac}: online {online} in session {session}, board {board}\n"
                                        + "\n".join(model.log))
    finally:
        for worker in model.workers:
            worker.writer.close()
        engine.dispose()


# -- the conditions, on both databases ---------------------------------------------------------------------------


@pytest.fixture
def row(engine: Engine) -> Iterator[Engine]:
    """One device in session "1.000000", offline, its presence decided at T0."""
    stamp = format_micros(T0)
    with engine.begin() as conn:
        insert_devices(conn, [device_row(1, joined_us=T0, online=False, name="a", session="1.000000")])
        conn.execute(text("UPDATE device SET presence_at = :at WHERE id = 1"), {"at": stamp})
    yield engine


def state(engine: Engine) -> tuple[bool, bool, str]:
    with engine.connect() as conn:
        online, lost, presence_at = conn.execute(text("SELECT online, lost, presence_at FROM device")).one()
    return bool(online), bool(lost), str(presence_at)


@both_databases
def test_of_a_join_and_a_leave_the_later_wins_in_whatever_order_they_are_applied(row: Engine) -> None:
    join, leave = format_micros(T0 + 10), format_micros(T0 + 20)
    with row.begin() as conn:
        assert set_presence(conn, 1, "1.000000", False, leave) is Applied.CURRENT  # offline already
        assert set_presence(conn, 1, "1.000000", True, join) is Applied.STALE  # older than the leave
    assert state(row) == (False, False, leave)
    with row.begin() as conn:
        assert set_presence(conn, 1, "1.000000", True, format_micros(T0 + 30)) is Applied.CHANGED
        assert set_presence(conn, 1, "2.000000", False, format_micros(T0 + 40)) is Applied.STALE  # another session
    assert state(row)[0] is True


@both_databases
def test_a_sweep_takes_only_devices_nobody_heard_and_a_lost_one_comes_back_in_its_session(row: Engine) -> None:
    with row.begin() as conn:
        set_presence(conn, 1, "1.000000", True, format_micros(T0 + 10))
        assert sweep(conn, format_micros(T0), lost=True) == []  # heard at T0 + 0: not before T0
        assert sweep(conn, format_micros(T0 + 100), lost=True) == [(1, "1.000000", "a")]
        assert bring_back(conn, 1, "2.000000", format_micros(T0 + 200)) is Applied.STALE
    assert state(row) == (False, True, format_micros(T0 + 100))
    with row.begin() as conn:
        assert bring_back(conn, 1, "1.000000", format_micros(T0 + 50)) is Applied.CHANGED
        assert bring_back(conn, 1, "1.000000", format_micros(T0 + 60)) is Applied.STALE  # not lost any more
    assert state(row) == (True, False, format_micros(T0 + 100))  # presence_at never goes back


@both_databases
def test_a_device_lost_by_one_worker_is_brought_back_by_the_worker_that_hears_it(engine: Engine) -> None:
    """A worker cut from the broker marks the devices nobody heard since offline; the next reading another worker
    takes brings them back, although that worker never saw them lost."""
    first, second = Worker(engine), Worker(engine)
    try:
        first.inbox.append(Inbound(MacJoin(MACS[0]), T0))
        [(_mac, name, session)] = first.take(1)
        second.inbox.append(Inbound(SessionRef(name, session), T0 + 10))
        second.take(1)
        assert devices(engine)[MACS[0]] == (True, session)
        first.inbox.append(Inbound(BrokerOutage(T0 + 100), T0 + 2_000))
        first.take(1)
        assert devices(engine)[MACS[0]] == (False, session)
        second.inbox.append(Inbound(Reading(Kind.LIGHT, name, session, 7), T0 + 3_000))
        second.take(1)
        assert devices(engine)[MACS[0]] == (True, session)
        assert second.writer.stats.joins == 2  # its join, and its return
    finally:
        first.writer.close()
        second.writer.close()


@both_databases
def test_a_join_taken_after_the_later_leave_by_another_worker_changes_nothing(engine: Engine) -> None:
    """Found by the model above: the leave moved last_seen on, and the worker taking the older join afterwards
    stamped it after that (as the only worker does, for whom processing order is event order): online."""
    first, second = Worker(engine), Worker(engine)
    try:
        first.inbox.append(Inbound(MacJoin(MACS[1]), T0))
        [(_mac, name, session)] = first.take(1)
        second.inbox.append(Inbound(SessionRef(name, session), T0 + 10))
        first.inbox.append(Inbound(Leave(name, session), T0 + 20))
        first.take(1)
        second.take(1)
        assert devices(engine)[MACS[1]] == (False, session)
    finally:
        first.writer.close()
        second.writer.close()


# -- end to end: real workers, a real broker, 200 boards ----------------------------------------------------------


def online_macs(client: FlaskClient) -> set[str]:
    """The MACs /api/devices shows online."""
    answer = client.get("/api/devices")
    assert answer.status_code == 200, answer.data
    return {device["mac"] for device in answer.get_json() if device["online"]}


#: Seconds /api/devices has to show the boards connected: less than the presence timeout of the test's settings
#: (3 x keepalive = 30 s), so that only the boards' messages can have done it.
SHOWN = 20.0


def shown_within(client: FlaskClient, expected: set[str], seconds: float, what: str) -> float:
    """How long /api/devices took to show exactly `expected` online; fail after `seconds`."""
    started = time.monotonic()
    while (shown := online_macs(client)) != expected:
        if time.monotonic() - started > seconds:
            raise AssertionError(f"{what}: after {seconds} s /api/devices shows {len(shown)} online, "
                                 f"{len(shown - expected)} of them gone, {len(expected - shown)} connected missing")
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.integration
@both_databases
@pytest.mark.parametrize("count", [2, 3])
def test_with_several_workers_the_api_shows_exactly_the_boards_connected(
        settings: Settings, engine: Engine, count: int) -> None:
    """200 boards join through `count` workers, half of them leave, the broker is killed once and restarted: each
    time /api/devices shows exactly the boards connected, from the boards' own messages: sooner than the presence
    timeout, so no sweep did it (how soon is the bench's business, not a wall-clock limit a loaded machine misses)."""
    # 200 new boards at once: beyond 60 a minute per worker. A keepalive of 10 s puts the presence timeout (3x) at
    # 30 s, beyond SHOWN: a board that left is shown offline by its Leave, never by a sweep.
    settings = settings.replace(new_devices_per_minute=0, keepalive=10)
    assert 3 * settings.keepalive > SHOWN
    broker = Broker(settings)
    broker.start()
    workers = [start(sensorhub(f"worker{n}", ["client"], settings.replace(worker=n))) for n in range(1, count + 1)]
    client = create_app(settings).test_client()
    try:
        with Fleet(settings, count=200, interval=1.0, seed=2200 + count, button_every=None) as fleet:
            fleet.wait_joined(60)
            macs = {device.mac for device in fleet.devices}
            shown_within(client, macs, SHOWN, "after the joins")
            for index in range(0, 200, 2):
                fleet.leave(index)
            staying = {device.mac for device in fleet.devices[1::2]}
            shown_within(client, staying, SHOWN, "after half of them left")
            sessions = [device.sessions for device in fleet.devices]
            broker.crash()  # no Will for anyone: the boards that stay come back with new sessions
            broker = Broker(settings)
            broker.start()
            back = [device for device in fleet.devices[1::2]]
            deadline = time.monotonic() + 60
            while not all(device.joined and device.sessions > sessions[device.index] for device in back):
                assert time.monotonic() < deadline, "the boards did not come back within 60 s"
                time.sleep(0.02)
            shown_within(client, staying, SHOWN, "after the broker restart")
        for worker in workers:
            check_not_died(worker)
    finally:
        for worker in workers:
            worker.stop()
        broker.stop()
