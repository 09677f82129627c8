"""Alert rules evaluated by the writer on a real database: hysteresis, durations across restarts, several workers,
presence and silence, reminders; and the pure state machine."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence

import pytest
from sqlalchemy import Engine, text

from sensorhub.alerting import Metric, Rule, RuleError, Severity, State, Step, Tracker, calm_interval, check_rule, step
from sensorhub.db import alerts as db
from sensorhub.ingest.alerts import Alerts
from sensorhub.ingest.drops import Drops
from sensorhub.ingest.sessions import Inbound
from sensorhub.ingest.writer import Writer
from sensorhub.protocol import Kind, Leave, MacJoin, Reading, SessionRef
from tests.support import both_databases

SECOND = 1_000_000


def rule(**fields: object) -> Rule:
    base: dict[str, object] = {"id": 0, "name": "bright", "metric": Metric.LIGHT, "operator": ">", "trigger": 80.0}
    return Rule(**{**base, **fields})  # type: ignore[arg-type]


# -- the pure state machine ----------------------------------------------------------------------------------------


def test_a_value_wandering_around_the_trigger_steps_once_each_way() -> None:
    bright = rule(clear=70.0)
    state: State | None = None
    steps = []
    for value in [79, 81, 79, 81, 75, 85, 71, 80, 70, 75, 81]:
        change = step(bright, state, value)
        steps.append(change)
        state = {Step.FIRE: State.FIRING, Step.RESOLVE: None}.get(change, state)  # type: ignore[arg-type]
    assert [s for s in steps if s is not Step.NOTHING] == [Step.FIRE, Step.RESOLVE, Step.FIRE]


@pytest.mark.parametrize(("operator", "trigger", "clear"), [(">", 80, 70), (">=", 80, 70), ("<", 10, 20),
                                                            ("<=", 10, 20)])
def test_a_value_inside_the_calm_interval_never_changes_an_alert(operator: str, trigger: float, clear: float) -> None:
    checked = rule(operator=operator, trigger=float(trigger), clear=float(clear))
    for state in (None, State.PENDING, State.FIRING, State.CLEARING):
        low, high = calm_interval(checked, state)
        for tenth in range(-10, 1010):
            value = tenth / 10
            if low < value < high:
                assert step(checked, state, value) is Step.NOTHING, (state, value)


def test_the_tracker_checks_only_values_outside_the_calm_interval() -> None:
    tracker = Tracker()
    tracker.set_rules([rule(id=1, clear=70.0), rule(id=2, name="dark", operator="<", trigger=10.0, clear=20.0),
                       rule(id=3, name="pressed", metric=Metric.BUTTON, operator="==", trigger=1.0)])
    assert tracker.calm(7, "salle B", Metric.LIGHT) == (10.0, 80.0)
    assert tracker.steps(7, "salle B", Metric.LIGHT, 50) == ()
    assert [(r.id, s) for r, _a, s in tracker.steps(7, "salle B", Metric.LIGHT, 90)] == [(1, Step.FIRE)]
    assert tracker.calm(7, "salle B", Metric.BUTTON) == (0.0, 0.0)  # equality: every value is checked


def test_selectors_pick_devices_by_id_list_and_case_insensitive_name_pattern() -> None:
    assert rule(selector="list", devices="3, 5").selects(5, "x")
    assert not rule(selector="list", devices="3").selects(5, "x")
    assert rule(selector="pattern", devices="salle*").selects(1, "Salle B")
    assert not rule(selector="pattern", devices="salle*").selects(1, "cuisine")


@pytest.mark.parametrize(("fields", "message"), [
    ({"name": ""}, "name"), ({"operator": "=~"}, "operator"), ({"trigger": 101.0}, "trigger"),
    ({"clear": 90.0}, "clear"), ({"for_seconds": -1.0}, "for"), ({"repeat_seconds": 0.5}, "repeat"),
    ({"selector": "list", "devices": "a,b"}, "devices"), ({"selector": "pattern", "devices": ""}, "devices"),
    ({"metric": Metric.SILENCE, "operator": "<", "trigger": 60.0}, "operator"), ({"trigger": math.nan}, "trigger"),
])
def test_a_rule_that_cannot_be_is_refused_naming_the_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(RuleError, match=message):
        check_rule(rule(**fields))


# -- on the database, through the writer ---------------------------------------------------------------------------

MAC = "02:00:00:00:00:01"


class Board:
    """A device that joined through a writer, and the times of its messages (µs, moving on by `advance`)."""

    def __init__(self, writer: Writer, at: int, mac: str = MAC) -> None:
        self.at = at
        publishes: list[tuple[str, bytes, int]] = []
        writer.publish = lambda topic, payload, qos: publishes.append((topic, payload, qos))
        writer.process([Inbound(MacJoin(mac), self.tick())])
        self.name, self.session = publishes[-1][1].decode().split(";")[1:]
        writer.process([Inbound(SessionRef(self.name, self.session), self.tick())])
        self.id = writer.sessions.by_session_name[self.name].id

    def tick(self, seconds: float = 0.001) -> int:
        self.at += round(seconds * SECOND)
        return self.at

    def light(self, values: Sequence[int], every: float = 0.1) -> list[Inbound]:
        return [Inbound(Reading(Kind.LIGHT, self.name, self.session, value), self.tick(every)) for value in values]


def make_writer(engine: Engine, *, shared: bool = False, channels: Sequence[str] = ("webhook",)) -> Writer:
    writer = Writer(engine, lambda *_: None, lambda *_: None, Drops(), shared=shared, alerts=Alerts(channels))
    writer.open()
    return writer


@pytest.fixture
def writer(engine: Engine) -> Iterator[Writer]:
    made = make_writer(engine)
    yield made
    made.close()


def add_rule(engine: Engine, writer: Writer | None = None, **fields: object) -> int:
    with engine.begin() as conn:
        rule_id = db.add_rule(conn, check_rule(rule(**fields)), time.time_ns() // 1000)
    if writer is not None:
        writer.clock()  # the clock notices the new rule
    return rule_id


def alerts(engine: Engine) -> list[tuple[str, float | None]]:
    with engine.connect() as conn:
        return [(str(s), v) for s, v in conn.execute(text("SELECT state, value FROM alert ORDER BY id"))]


def outbox(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        query = text("SELECT event FROM alert_outbox ORDER BY created_at, event")
        return [str(event) for event in conn.execute(query).scalars()]


@both_databases
def test_a_value_oscillating_around_the_trigger_fires_once_and_clears_once(engine: Engine, writer: Writer) -> None:
    add_rule(engine, writer, clear=70.0)
    board = Board(writer, time.time_ns() // 1000)
    writer.process(board.light([79, 81, 79, 82, 78, 81, 75, 90]))
    assert alerts(engine) == [("firing", 81.0)]
    assert outbox(engine) == ["firing"]
    writer.process(board.light([72, 69]))
    assert alerts(engine) == [("resolved", 81.0)]
    assert outbox(engine) == ["firing", "resolved"]
    assert writer.alerts.stats.fired == 1 and writer.alerts.stats.resolved == 1


@both_databases
def test_a_pending_duration_survives_a_restart_and_fires_once(engine: Engine, writer: Writer) -> None:
    add_rule(engine, writer, name="dark", operator="<", trigger=10.0, clear=20.0, for_seconds=60.0)
    board = Board(writer, time.time_ns() // 1000 - 120 * SECOND)  # two minutes ago
    writer.process(board.light([5]))
    started = board.at
    writer.clock(started + 30 * SECOND)
    assert alerts(engine) == [("pending", 5.0)]
    writer.close()
    restarted = make_writer(engine)  # a new client: the pending alert is in the database
    assert restarted.clock(started + 59 * SECOND) == 0
    assert alerts(engine) == [("pending", 5.0)]
    assert restarted.clock(started + 61 * SECOND) == 1
    assert alerts(engine) == [("firing", 5.0)]
    again = make_writer(engine)
    assert again.clock(started + 62 * SECOND) == 0
    assert outbox(engine) == ["firing"]
    again.close()
    restarted.close()


@both_databases
def test_a_pending_alert_whose_condition_stops_is_forgotten(engine: Engine, writer: Writer) -> None:
    add_rule(engine, writer, name="dark", operator="<", trigger=10.0, clear=20.0, for_seconds=60.0)
    board = Board(writer, time.time_ns() // 1000 - 120 * SECOND)
    writer.process(board.light([5, 8, 12]))  # 12 is not < 10: the condition stopped
    assert alerts(engine) == []
    writer.clock(board.at + 61 * SECOND)
    assert alerts(engine) == [] and outbox(engine) == []


@both_databases
def test_a_value_after_the_duration_fires_before_it_is_looked_at(engine: Engine, writer: Writer) -> None:
    # The clock had not run yet when the condition stopped holding: it held for the whole duration, so it fired.
    add_rule(engine, writer, name="dark", operator="<", trigger=10.0, clear=20.0, for_seconds=1.0)
    board = Board(writer, time.time_ns() // 1000 - 120 * SECOND)
    writer.process(board.light([5]))
    writer.process(board.light([30], every=2.0))
    assert alerts(engine) == [("resolved", 5.0)]
    assert outbox(engine) == ["firing", "resolved"]


@both_databases
def test_a_clear_duration_resolves_only_once_the_clear_condition_held_long_enough(engine: Engine,
                                                                                 writer: Writer) -> None:
    add_rule(engine, writer, clear=70.0, clear_for_seconds=30.0)
    board = Board(writer, time.time_ns() // 1000 - 120 * SECOND)
    writer.process(board.light([90, 60]))
    assert alerts(engine) == [("clearing", 90.0)]
    writer.process(board.light([85]))  # back above the clear value: firing again, not notified again
    assert alerts(engine) == [("firing", 90.0)]
    writer.process(board.light([50]))
    writer.clock(board.at + 29 * SECOND)
    assert alerts(engine) == [("clearing", 90.0)]
    writer.clock(board.at + 31 * SECOND)
    assert alerts(engine) == [("resolved", 90.0)]
    assert outbox(engine) == ["firing", "resolved"]


@both_databases
def test_two_workers_deciding_the_same_alert_fire_it_once(engine: Engine) -> None:
    first, second = make_writer(engine, shared=True), make_writer(engine, shared=True)
    add_rule(engine, first, clear=70.0)
    second.clock()
    board = Board(first, time.time_ns() // 1000 - 60 * SECOND)
    readings = board.light([90, 91, 60, 95, 96, 97])
    # The share group hands each worker every other reading.
    for index, item in enumerate(readings):
        (first if index % 2 == 0 else second).process([item])
    assert alerts(engine) == [("resolved", 90.0), ("firing", 95.0)]
    assert outbox(engine).count("firing") == 2 and outbox(engine).count("resolved") == 1
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alert WHERE state <> 'resolved'")).scalar() == 1
    first.close()
    second.close()


@both_databases
def test_the_database_refuses_a_second_active_alert_for_a_rule_and_device(engine: Engine, writer: Writer) -> None:
    rule_id = add_rule(engine, writer)
    board = Board(writer, time.time_ns() // 1000)
    stored = rule(id=rule_id)
    with engine.begin() as conn:
        assert db.open_alert(conn, stored, board.id, board.tick(), 90.0, ()) is not None
        assert db.open_alert(conn, stored, board.id, board.tick(), 91.0, ()) is None
    with pytest.raises(Exception, match=r"(?i)unique"), engine.begin() as conn:
        conn.execute(text("INSERT INTO alert (rule_id, device_id, state, since, reminders) "
                          "VALUES (:r, :d, 'firing', '2026-01-01 00:00:00.000000', 0)"), {"r": rule_id, "d": board.id})


@both_databases
def test_a_board_going_offline_fires_a_presence_rule_and_coming_back_resolves_it(engine: Engine,
                                                                                 writer: Writer) -> None:
    add_rule(engine, writer, name="offline", metric=Metric.PRESENCE, operator="==", trigger=0.0,
             severity=Severity.CRITICAL)
    board = Board(writer, time.time_ns() // 1000)
    writer.process([Inbound(Leave(board.name, board.session), board.tick())])
    assert alerts(engine) == [("firing", 0.0)]
    writer.process([Inbound(SessionRef(board.name, board.session), board.tick())])
    assert alerts(engine) == [("resolved", 0.0)]


@both_databases
def test_a_silent_board_fires_once_and_a_message_resolves_it(engine: Engine, writer: Writer) -> None:
    add_rule(engine, writer, name="silent", metric=Metric.SILENCE, operator=">=", trigger=300.0)
    board = Board(writer, time.time_ns() // 1000 - 400 * SECOND)  # last heard 400 s ago
    writer.clock(board.at + 299 * SECOND)
    assert alerts(engine) == []
    writer.clock(board.at + 301 * SECOND)
    writer.clock(board.at + 302 * SECOND)
    assert alerts(engine) == [("firing", 300.0)]
    writer.process(board.light([40], every=301.0))
    assert alerts(engine) == [("resolved", 300.0)]
    assert outbox(engine) == ["firing", "resolved"]


@both_databases
def test_reminders_repeat_while_firing_until_acknowledged(engine: Engine, writer: Writer) -> None:
    add_rule(engine, writer, repeat_seconds=60.0)
    board = Board(writer, time.time_ns() // 1000 - 600 * SECOND)
    writer.process(board.light([90]))
    fired = board.at
    writer.clock(fired + 59 * SECOND)
    assert outbox(engine) == ["firing"]
    writer.clock(fired + 61 * SECOND)
    writer.clock(fired + 62 * SECOND)
    assert outbox(engine) == ["firing", "reminder"]
    with engine.begin() as conn:
        alert_id = conn.execute(text("SELECT id FROM alert")).scalar_one()
        assert db.acknowledge(conn, alert_id, "alice", fired + 90 * SECOND)
    writer.clock(fired + 200 * SECOND)
    assert outbox(engine) == ["firing", "reminder"]


@both_databases
def test_a_snoozed_alert_reminds_again_only_after_the_snooze(engine: Engine, writer: Writer) -> None:
    add_rule(engine, writer, repeat_seconds=60.0)
    board = Board(writer, time.time_ns() // 1000 - 900 * SECOND)
    writer.process(board.light([90]))
    fired = board.at
    with engine.begin() as conn:
        assert db.snooze(conn, conn.execute(text("SELECT id FROM alert")).scalar_one(), fired + 300 * SECOND)
    writer.clock(fired + 120 * SECOND)
    assert outbox(engine) == ["firing"]
    writer.clock(fired + 301 * SECOND)
    assert outbox(engine) == ["firing", "reminder"]


@both_databases
def test_a_rule_added_while_running_is_applied_and_a_disabled_one_is_not(engine: Engine, writer: Writer) -> None:
    board = Board(writer, time.time_ns() // 1000)
    rule_id = add_rule(engine, writer, clear=70.0)
    with engine.begin() as conn:
        assert db.update_rule(conn, rule(id=rule_id, clear=70.0, enabled=False), time.time_ns() // 1000 + 1)
    writer.clock()
    writer.process(board.light([95]))
    assert alerts(engine) == []
    with engine.begin() as conn:
        assert db.update_rule(conn, rule(id=rule_id, clear=70.0), time.time_ns() // 1000 + 2)
    writer.clock()
    writer.process(board.light([96]))
    assert alerts(engine) == [("firing", 96.0)]


def test_a_pattern_rule_follows_a_rename(engine: Engine, writer: Writer) -> None:
    from sensorhub.commands import RenameRequest

    add_rule(engine, writer, selector="pattern", devices="salle*", clear=70.0)
    board = Board(writer, time.time_ns() // 1000)
    writer.process(board.light([95, 60]))
    assert alerts(engine) == []
    writer.process([Inbound(RenameRequest(board.id, "salle B"), board.tick())])
    writer.process(board.light([95]))
    assert alerts(engine) == [("firing", 95.0)]


@both_databases
def test_delivered_notifications_are_deleted_after_the_keeping_time_and_waiting_ones_never(engine: Engine,
                                                                                          writer: Writer) -> None:
    add_rule(engine, writer, clear=70.0)
    board = Board(writer, time.time_ns() // 1000 - 40 * 86_400 * SECOND)  # forty days ago
    writer.process(board.light([90, 60]))  # fired and resolved then: two notifications
    with engine.begin() as conn:
        first = conn.execute(text("SELECT id FROM alert_outbox WHERE event = 'firing'")).scalar_one()
        db.delivered(conn, first, board.at)
    restarted = make_writer(engine)  # the clock purges at its first look, then hourly
    restarted.clock()
    restarted.close()
    assert outbox(engine) == ["resolved"]  # the one never delivered stays, however old
