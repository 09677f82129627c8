"""The session engine on its own (no broker, no database): every rule, and properties over random histories."""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from sensorhub.commands import LedRequest, RenameRequest
from sensorhub.ingest.sessions import (
    BrokerOutage,
    BrokerSessionLost,
    Cause,
    Decisions,
    Device,
    Inbound,
    Incoming,
    NewDevice,
    NewSession,
    Presence,
    Rename,
    Sessions,
    Sweep,
    SweepDue,
    cut_at_sweeps,
    wire,
)
from sensorhub.protocol import (
    MAX_SESSION,
    SESSION_RULE,
    Kind,
    Leave,
    MacJoin,
    Reading,
    SessionRef,
    Topic,
    check_name,
    check_session,
    format_led_command,
    parse_name_assign,
)
from sensorhub.timestamps import format_micros

T0 = 1_743_946_777_603_371
MACS = ["61:EC:ED:3B:25:B1", "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"]
CUSTOM_NAMES = ["salle B", "capteur02", "capteur03", "atelier", "capteur01-2"]


def assigned(decisions: Decisions) -> list[tuple[str, str, str]]:
    """(MAC, name, session) of each state/nameAssign decided."""
    found = []
    for topic, payload, qos in decisions.publishes:
        if topic == Topic.NAME_ASSIGN:
            assert qos == 2
            assign = parse_name_assign(payload)
            found.append((assign.mac, assign.name, assign.session))
    return found


def counting_sessions() -> Callable[[str | None], str]:
    """A repeatable source of session ids for an engine: s1, s2, s3..."""
    numbers = itertools.count(1)
    return lambda _previous: f"s{next(numbers)}"


class Harness:
    """An engine, a clock, and the table its decisions would have written (presence applied on the conditions
    of sensorhub.db.presence; tests/test_presence.py checks those on real databases)."""

    def __init__(self, engine: Sessions | None = None) -> None:
        self.engine = engine or Sessions(presence_timeout_us=15_000_000)
        self.now = T0
        self.table = {d.id: self.row(d) for d in self.engine.by_id.values()}
        self.presence_at: dict[int, str] = {}

    @staticmethod
    def row(device: Device) -> dict[str, object]:
        return {"name": device.name, "session_name": device.session_name, "mac": device.mac,
                "session_id": device.session_id, "online": device.online, "lost": device.lost,
                "joined_at": format_micros(device.joined_us), "last_seen": format_micros(device.last_seen_us)}

    def send(self, *messages: Incoming, qos: int = 0, step: int = 1000) -> Decisions:
        batch = []
        for number, message in enumerate(messages):
            self.now += step
            batch.append(Inbound(message, self.now, mid=number + 1 if qos else 0, qos=qos))
        decisions = self.engine.apply(batch)
        self.write(decisions)
        return decisions

    def write(self, decisions: Decisions) -> None:
        """What the writer does with decisions, on a dict standing for the device table."""
        sweeps = []
        for change in decisions.changes:
            match change:
                case NewDevice(device_id, name, mac, session_id, at):
                    assert device_id not in self.table
                    self.table[device_id] = {"name": name, "session_name": name, "mac": mac, "session_id": session_id,
                                             "online": False, "lost": False, "joined_at": format_micros(at),
                                             "last_seen": format_micros(at)}
                    self.presence_at[device_id] = format_micros(at)
                case NewSession(device_id, session_id, session_name, at):
                    self.table[device_id].update(session_id=session_id, session_name=session_name, online=False,
                                                 lost=False)
                    self.presence_at[device_id] = format_micros(at)
                case Presence(device_id, online, at, session_id, cause):
                    row, stamp = self.table[device_id], format_micros(at)
                    assert row["session_id"] == session_id, "presence decided in another session"
                    if cause is Cause.BACK:
                        assert row["lost"], "brought back a device that was not lost"
                    else:
                        assert self.presence_at.get(device_id, "") < stamp, "presence decided out of order"
                    changed = row["online"] is not online
                    assert changed or row["lost"], "a presence change that changes nothing"
                    row.update(online=online, lost=False)
                    self.presence_at[device_id] = max(stamp, self.presence_at.get(device_id, ""))
                    if changed:
                        decisions.presence.append(change)
                case Rename(device_id, name):
                    self.table[device_id]["name"] = name
                case Sweep():
                    sweeps.append(change)
        for device in decisions.seen.values():
            self.table[device.id]["last_seen"] = format_micros(device.last_seen_us)
        for sweep in sweeps:
            since = format_micros(sweep.since)
            swept = [(device_id, row["session_id"]) for device_id, row in self.table.items()
                     if row["online"] and row["last_seen"] < since and self.presence_at.get(device_id, "") < since]
            for device_id, _session in swept:
                self.table[device_id].update(online=False, lost=sweep.lost)
                self.presence_at[device_id] = since
                decisions.presence.append(Presence(device_id, False, sweep.since, _session, Cause.SWEPT))
            self.engine.swept(swept, sweep.since, sweep.lost)
        for rows in decisions.readings.values():
            for device_id, at, _value in rows:
                assert at > self.table[device_id]["joined_at"], "a reading before its device joined"

    def join(self, mac: str) -> tuple[str, str]:
        """The whole join: MAC, then name;session."""
        [(_, name, session)] = assigned(self.send(MacJoin(mac)))
        self.send(SessionRef(name, session))
        return name, session


# -- the rules, one by one ---------------------------------------------------------------------------------


def test_a_new_mac_gets_a_name_and_a_session_and_is_online_once_it_joins_in_it() -> None:
    h = Harness()
    decisions = h.send(MacJoin(MACS[0]), qos=2)
    [(mac, name, session)] = assigned(decisions)
    assert (mac, name) == (MACS[0], "capteur01") and h.table[1]["session_id"] == session
    assert decisions.acks == [(1, 2)]
    assert decisions.notes == [f"new device {MACS[0]}: capteur01"]
    assert h.table[1]["online"] is False
    decisions = h.send(SessionRef("capteur01", session))
    assert decisions.changes == [Presence(1, True)] and h.table[1]["online"] is True
    decisions = h.send(Reading(Kind.LIGHT, "capteur01", session, 58))
    assert decisions.readings[Kind.LIGHT] == [(1, format_micros(h.now), 58)] and decisions.stored == 1
    assert h.table[1]["last_seen"] == format_micros(h.now)


def test_a_session_id_is_not_the_time_of_its_join() -> None:
    """The session ids used to be the join's time in µs, which /appareil/<id> showed to anyone (issue 23): now
    random, at most 17 characters, valid for SESSION_RULE, and none the same as an earlier one."""
    h = Harness()
    handed_out: list[str] = []
    for _ in range(50):
        decisions = h.send(MacJoin(MACS[0]))
        joined = h.now / 1e6
        [(_, _, session)] = assigned(decisions)
        assert len(session) <= MAX_SESSION and SESSION_RULE.problem(session) is None
        assert session not in handed_out
        handed_out.append(session)
        if re.fullmatch(r"\d+(\.\d*)?", session):  # a number: not the time of the join, to within a second
            assert abs(float(session) - joined) > 1, f"{session} is the time of its join"


def test_a_known_mac_keeps_its_name_and_gets_a_new_session_offline() -> None:
    h = Harness()
    name, session = h.join(MACS[0])
    [(_, again, new_session)] = assigned(h.send(MacJoin(MACS[0])))
    assert again == name and new_session != session
    assert h.table[1]["online"] is False and h.table[1]["session_id"] == new_session
    assert len(h.table) == 1


def test_out_of_band_and_unknown_messages_are_dropped_and_still_acknowledged() -> None:
    h = Harness()
    name, old = h.join(MACS[0])
    [(_, _, current)] = assigned(h.send(MacJoin(MACS[0])))
    h.send(SessionRef(name, current))
    decisions = h.send(Reading(Kind.LIGHT, name, old, 10), Reading(Kind.LED, name, old, 1), Leave(name, old),
                       Reading(Kind.LIGHT, "nobody", current, 5), qos=1)
    assert decisions.stored == 0 and decisions.changes == []
    assert [reason for reason, _ in decisions.drops] == ["out-of-band"] * 3 + ["unknown-device"]
    assert decisions.acks == [(1, 1), (2, 1), (3, 1), (4, 1)]
    assert h.table[1]["online"] is True, "a stale Will knocked the device offline"


def test_a_leave_in_the_current_session_marks_offline() -> None:
    h = Harness()
    name, session = h.join(MACS[0])
    assert h.send(Leave(name, session)).changes == [Presence(1, False)]
    assert h.send(Leave(name, session)).changes == []  # already offline: nothing to write


def test_with_several_workers_every_join_and_leave_goes_to_the_database() -> None:
    """An engine that is not the only one cannot tell from what it saw that a join or a leave changes nothing."""
    h = Harness(Sessions(presence_timeout_us=15_000_000, exact=False))
    name, session = h.join(MACS[0])
    h.table[1]["online"] = False  # another worker took a leave, then the board joined again in that session
    h.presence_at[1] = format_micros(h.now + 10)
    h.now += 100
    decisions = h.engine.apply([Inbound(SessionRef(name, session), h.now)])
    assert decisions.changes == [Presence(1, True)], "a join of a device online here was not written"
    decisions = h.engine.apply([Inbound(Leave(name, session), h.now + 1000)])
    assert decisions.changes == [Presence(1, False)]


def test_readings_are_never_stamped_before_the_join_even_if_the_clock_steps_back() -> None:
    h = Harness()
    name, session = h.join(MACS[0])
    last_seen = h.engine.by_id[1].last_seen_us
    decisions = h.send(Reading(Kind.BUTTON, name, session, 1), step=-60_000_000)
    [(_, at, _)] = decisions.readings[Kind.BUTTON]
    assert at == format_micros(last_seen + 1), "just after whatever came before, hence after the join"
    assert h.table[1]["last_seen"] == at, "last_seen never goes back"


def test_a_rename_takes_effect_at_the_next_session() -> None:
    h = Harness()
    name, session = h.join(MACS[0])
    decisions = h.send(RenameRequest(1, "salle B"))
    assert decisions.changes == [Rename(1, "salle B")]
    assert h.table[1]["name"] == "salle B" and h.table[1]["session_name"] == name
    assert h.send(Reading(Kind.LIGHT, name, session, 33)).stored == 1  # its session goes on under its old name
    [(_, new_name, new_session)] = assigned(h.send(MacJoin(MACS[0])))
    assert new_name == "salle B" and h.table[1]["session_name"] == "salle B"
    assert h.send(Reading(Kind.LIGHT, name, new_session, 1)).drops[0][0] == "unknown-device"


def test_renames_to_a_name_or_session_name_in_use_are_refused() -> None:
    h = Harness()
    h.join(MACS[0])
    h.join(MACS[1])
    h.send(RenameRequest(2, "salle B"))  # device 2 is called "salle B", its session still "capteur02"
    for taken in ("salle B", "capteur02"):
        decisions = h.send(RenameRequest(1, taken))
        assert decisions.changes == [] and decisions.drops[0][0] == "pipe-name-taken", taken
    assert h.send(RenameRequest(2, "capteur02")).changes == [Rename(2, "capteur02")]  # its own session name
    assert h.send(RenameRequest(9, "x")).drops[0][0] == "pipe-unknown-device"
    assert h.send(RenameRequest(1, "capteur01")).changes == []  # the same name: nothing to do


def test_default_names_skip_names_taken_by_renames_and_ids_are_never_reused() -> None:
    h = Harness()
    h.join(MACS[0])
    h.send(RenameRequest(1, "capteur02"))
    [(_, second, _)] = assigned(h.send(MacJoin(MACS[1])))
    assert second == "capteur02-2"
    reloaded = Harness(Sessions(copy.deepcopy(list(h.engine.by_id.values())), next_id=5))
    [(_, third, _)] = assigned(reloaded.send(MacJoin(MACS[2])))
    assert third == "capteur05"  # AUTOINCREMENT's sequence was 4: an id is never handed out twice


def test_concurrent_joins_of_one_mac_leave_only_the_last_session_current() -> None:
    h = Harness()
    decisions = h.send(MacJoin(MACS[0]), MacJoin(MACS[0]), qos=2)
    (_, name, first), (_, same, second) = assigned(decisions)
    assert same == name and second != first and len(h.table) == 1
    assert h.send(SessionRef(name, first)).drops[0][0] == "out-of-band"
    assert h.send(SessionRef(name, second)).changes == [Presence(1, True)]


def test_led_commands_go_to_online_devices_in_their_current_session_only() -> None:
    h = Harness()
    name, session = h.join(MACS[0])
    decisions = h.send(LedRequest(1, session, True))
    assert decisions.publishes == [(Topic.LED_COMMAND, format_led_command(name, session, True), 1)]
    assert h.send(LedRequest(1, "1.000000", True)).drops[0][0] == "pipe-offline"
    assert h.send(LedRequest(2, session, True)).drops[0][0] == "pipe-unknown-device"
    h.send(Leave(name, session))
    assert h.send(LedRequest(1, session, False)).drops[0][0] == "pipe-offline"


def test_after_the_broker_lost_our_session_silent_devices_go_offline() -> None:
    h = Harness()
    silent, _ = h.join(MACS[0])
    talker, talker_session = h.join(MACS[1])
    h.send(BrokerSessionLost())
    due = h.engine.sweep_due
    assert due == h.now + 15_000_000
    h.send(Reading(Kind.LIGHT, talker, talker_session, 50))
    assert h.send(SweepDue()).changes == [], "swept before it was due"
    h.now = due
    decisions = h.send(SweepDue())
    assert decisions.changes == [Sweep(due - 15_000_000, lost=False)] and h.engine.sweep_due is None
    assert decisions.presence == [Presence(1, False)]  # what the table took: the silent one
    assert h.table[1]["online"] is False and h.table[2]["online"] is True
    assert not h.engine.by_id[1].online and h.engine.by_id[2].online
    assert h.engine.by_id[1].name == silent


def test_a_rebuilt_engine_carries_on_a_presence_check() -> None:
    h = Harness()
    h.join(MACS[0])
    h.send(BrokerSessionLost())
    rebuilt = Sessions(copy.deepcopy(list(h.engine.by_id.values())))
    rebuilt.resume_presence_check(h.engine)
    assert (rebuilt.sweep_due, rebuilt.sweep_since) == (h.engine.sweep_due, h.engine.sweep_since)
    assert rebuilt.sweep_due is not None


# -- properties over random histories ---------------------------------------------------------------------


@dataclass
class World:
    """What the devices know: every session handed out, per MAC (the last is current)."""

    sessions: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def refs(self) -> list[tuple[str, str]]:
        return [ref for refs in self.sessions.values() for ref in refs]


def draw_message(data: st.DataObject, world: World, engine: Sessions) -> Incoming:
    """A message devices, the web page or the broker could send now, often stale, sometimes nonsense."""
    refs = world.refs()
    ref = data.draw(st.sampled_from(refs)) if refs and data.draw(st.integers(0, 9)) else (
        data.draw(st.sampled_from(["capteur01", "salle B", "nobody"])), "1743946777.000001")
    ids = st.integers(1, len(engine.by_id) + 1)
    kind = data.draw(st.sampled_from(["mac", "join", "leave", "reading", "led", "rename", "lost", "sweep",
                                      "unreachable"]))
    match kind:
        case "mac":
            return MacJoin(data.draw(st.sampled_from(MACS)))
        case "join":
            return SessionRef(*ref)
        case "leave":
            return Leave(*ref)
        case "reading":
            reading_kind = data.draw(st.sampled_from(list(Kind)))
            return Reading(reading_kind, *ref, data.draw(st.integers(0, 100 if reading_kind is Kind.LIGHT else 1)))
        case "led":
            return LedRequest(data.draw(ids), ref[1], data.draw(st.booleans()))
        case "rename":
            name = data.draw(st.one_of(st.sampled_from(CUSTOM_NAMES), st.sampled_from([*engine.by_name, "x"])))
            return RenameRequest(data.draw(ids), name)
        case "lost":
            return BrokerSessionLost()
        case "unreachable":
            return BrokerOutage(T0 + data.draw(st.integers(0, 60_000_000)))
    return SweepDue()


def check_invariants(h: Harness) -> None:
    """What must hold after any history."""
    engine = h.engine
    assert h.table == {d.id: Harness.row(d) for d in engine.by_id.values()}, "decisions do not describe the state"
    names = [d.name for d in engine.by_id.values()]
    session_names = [d.session_name for d in engine.by_id.values()]
    assert len(set(names)) == len(names) and len(set(session_names)) == len(session_names)
    for device in engine.by_id.values():
        check_name(device.name)
        check_name(device.session_name)
        check_session(device.session_id)
        assert not engine.name_taken(device.name, device.id) and not engine.name_taken(device.session_name, device.id)
        assert device.last_seen_us >= device.joined_us
        assert engine.by_mac[device.mac] is device and engine.by_session_name[device.session_name] is device
    assert len(engine.by_mac) == len(engine.by_id) == len(engine.by_name) == len(engine.by_session_name)


def check_one(before: Sessions, message: Incoming, decisions: Decisions, after: Sessions, qos: int,
              handed_out: frozenset[str] = frozenset()) -> None:
    """What one message must have decided, given the state before it and the session ids `handed_out` so far."""
    assert decisions.acks == ([(1, qos)] if qos else [])
    drops = [reason for reason, _ in decisions.drops]
    match message:
        case Reading(kind, name, session, _value):
            current = before.by_session_name.get(name)
            if current is not None and current.session_id == session:
                assert [row[0] for row in decisions.readings[kind]] == [current.id] and not drops
            else:
                assert decisions.stored == 0
                assert drops == ["unknown-device" if current is None else "out-of-band"]
        case MacJoin(mac):
            [(to, name, session)] = assigned(decisions)
            device = after.by_mac[mac]
            assert (to, name, session) == (mac, device.name, device.session_id) == (mac, device.session_name, session)
            assert not device.online
            previous = before.by_mac.get(mac)
            if previous is None:
                assert device.id == before.next_id and device.id not in before.by_id
            else:
                assert session != previous.session_id
            assert session not in handed_out  # a new session id is none of the earlier ones
        case SessionRef(name, session) | Leave(name, session):
            current = before.by_session_name.get(name)
            if current is not None and current.session_id == session:
                assert after.by_id[current.id].online is isinstance(message, SessionRef) and not drops
            else:
                assert decisions.changes == [] and len(drops) == 1
        case LedRequest(device_id, session, on):
            device = before.by_id.get(device_id)
            if device is not None and device.online and device.session_id == session:
                assert decisions.publishes == [(Topic.LED_COMMAND, format_led_command(device.session_name, session,
                                                                                      on), 1)]
            else:
                assert decisions.publishes == [] and len(drops) == 1
        case RenameRequest(device_id, name):
            device = before.by_id.get(device_id)
            renamed = device is not None and name != device.name and not before.name_taken(name, device_id)
            assert decisions.changes == ([Rename(device_id, name)] if renamed else [])
            if device is not None:
                assert after.by_id[device_id].session_name == device.session_name


@settings(max_examples=150, deadline=None)  # no timing in tests: a loaded machine is not a failure
@given(st.data())
def test_any_history_keeps_the_rules(data: st.DataObject) -> None:
    """One message at a time: each decision is what the rules say, and the state stays consistent."""
    h = Harness()
    world = World()
    for _ in range(data.draw(st.integers(1, 40))):
        message = draw_message(data, world, h.engine)
        qos = data.draw(st.sampled_from([0, 1, 2]))
        h.now += data.draw(st.integers(-3_000_000, 5_000_000))  # the clock may step back
        before = copy.deepcopy(h.engine)
        decisions = h.engine.apply([Inbound(message, h.now, 1 if qos else 0, qos)])
        h.write(decisions)
        check_one(before, message, decisions, h.engine, qos,
                  frozenset(session for _, session in world.refs()))
        for mac, name, session in assigned(decisions):
            world.sessions.setdefault(mac, []).append((name, session))
        check_invariants(h)


@settings(max_examples=100)
@given(st.data())
def test_a_batch_decides_what_its_messages_decide_one_by_one(data: st.DataObject) -> None:
    """The writer retries a failed batch one message at a time: that must not change any decision."""
    world = World()
    # Session ids are random: each engine draws the same repeatable ones, so that their decisions compare.
    whole, single = (Harness(Sessions(presence_timeout_us=15_000_000, new_session=counting_sessions()))
                     for _ in range(2))
    for _ in range(data.draw(st.integers(1, 6))):
        batch = []
        for number in range(data.draw(st.integers(1, 8))):
            whole.now += data.draw(st.integers(-1_000_000, 2_000_000))
            qos = data.draw(st.sampled_from([0, 1, 2]))
            batch.append(Inbound(draw_message(data, world, whole.engine), whole.now, number + 1 if qos else 0, qos))
        for part in cut_at_sweeps(batch):  # as the writer does: a sweep ends its part
            together = whole.engine.apply(part)
            whole.write(together)
            apart = [single.engine.apply([item]) for item in part]
            for decisions in apart:
                single.write(decisions)
            for field_name in ("changes", "publishes", "acks", "drops", "notes", "presence"):
                assert getattr(together, field_name) == [x for d in apart for x in getattr(d, field_name)], field_name
            for kind in Kind:
                assert together.readings[kind] == [row for d in apart for row in d.readings[kind]]
            assert whole.table == single.table
            for mac, name, session in assigned(together):
                world.sessions.setdefault(mac, []).append((name, session))
            check_invariants(whole)


# -- clock steps and broker outages (reliability) -----------------------------------------------------------


def test_a_clock_step_back_keeps_each_devices_stamps_increasing_and_after_its_join() -> None:
    h = Harness()
    name, session = h.join(MACS[0])
    joined = h.table[1]["joined_at"]
    h.now -= 600_000_000  # NTP steps the clock 10 minutes back
    decisions = h.send(*(Reading(Kind.LIGHT, name, session, value) for value in range(5)),
                       Reading(Kind.LED, name, session, 1))
    stamps = [at for rows in (decisions.readings[Kind.LIGHT], decisions.readings[Kind.LED]) for _, at, _ in rows]
    assert decisions.stored == 6 and not decisions.drops
    assert stamps == sorted(stamps) and len(set(stamps)) == 6
    assert all(stamp > str(joined) for stamp in stamps)
    assert h.table[1]["last_seen"] == max(stamps)  # never goes back
    h.now += 1_200_000_000  # and forward again: the wall clock is used as soon as it is ahead
    decisions = h.send(Reading(Kind.LIGHT, name, session, 9))
    assert decisions.readings[Kind.LIGHT] == [(1, format_micros(h.now), 9)]


def test_the_broker_out_of_reach_takes_every_device_offline_until_it_is_heard_from() -> None:
    h = Harness()
    first, first_session = h.join(MACS[0])
    second, second_session = h.join(MACS[1])
    decisions = h.send(BrokerOutage(h.now + 1))
    assert decisions.changes == [Sweep(h.now - 999, lost=True)]
    assert decisions.presence == [Presence(1, False), Presence(2, False)]
    assert [change.session_id for change in decisions.presence] == [first_session, second_session]
    assert not h.table[1]["online"] and not h.table[2]["online"]
    assert h.send(BrokerOutage(h.now)).presence == []  # nothing more to do
    # A reading in its session shows the first device was there all along; it is stored too.
    decisions = h.send(Reading(Kind.LIGHT, first, first_session, 40))
    assert decisions.changes == [Presence(1, True)] and decisions.stored == 1 and h.table[1]["online"]
    assert h.send(Reading(Kind.LIGHT, first, first_session, 41)).changes == []
    # The second one comes back with a new session: offline until it joins in it, as always.
    [(_, _, new_session)] = assigned(h.send(MacJoin(MACS[1])))
    assert h.send(Reading(Kind.LIGHT, second, second_session, 1)).drops  # its old session is over
    assert not h.table[2]["online"]
    assert h.send(SessionRef(second, new_session)).changes == [Presence(2, True)]


def test_a_device_that_left_during_the_outage_is_not_brought_back_by_a_late_reading() -> None:
    h = Harness()
    name, session = h.join(MACS[0])
    h.send(BrokerOutage(h.now + 1))
    assert h.send(Leave(name, session)).presence == []  # offline already: only `lost` is cleared
    decisions = h.send(Reading(Kind.LIGHT, name, session, 3))
    assert decisions.changes == [] and decisions.stored == 1 and not h.table[1]["online"]


def test_wire_gives_back_the_channel_and_payload_of_each_message() -> None:
    assert wire(Reading(Kind.LIGHT, "capteur01", "1.2", 58)) == ("photoresistor/status", "capteur01;1.2;58")
    assert wire(MacJoin(MACS[0])) == ("state/join", MACS[0])
    assert wire(Leave("capteur01", "1.2")) == ("state/leave", "capteur01;1.2")
    assert wire(SessionRef("capteur01", "1.2")) == ("state/join", "capteur01;1.2")


def test_upsert_takes_rows_another_worker_changed() -> None:
    """A rename and a new session elsewhere: the old name is free again here, the new one taken; presence and
    `lost` as the database holds them; stamps never go back; devices added elsewhere move next_id on."""
    engine = Sessions([Device(1, "a", "a", "02:00:00:00:00:01", "1.000000", True, T0, T0 + 50),
                       Device(2, "b", "b", "02:00:00:00:00:02", "2.000000", True, T0, T0)], next_id=3)
    engine.upsert([Device(1, "salle B", "a", "02:00:00:00:00:01", "1.000000", False, T0, T0 + 10, lost=True),
                   Device(2, "b", "b", "02:00:00:00:00:02", "3.000000", True, T0, T0 + 20),
                   Device(7, "g", "g", "02:00:00:00:00:07", "7.000000", False, T0, T0)], next_id=8)
    assert not engine.name_taken("a", 1) and engine.name_taken("salle B") and engine.by_name.get("a") is None
    assert engine.by_session_name["a"].id == 1 and engine.by_mac["02:00:00:00:00:07"].id == 7
    one, two = engine.by_id[1], engine.by_id[2]
    assert (one.online, one.lost, one.last_seen_us) == (False, True, T0 + 50)  # stamps never go back
    assert two.online and two.session_id == "3.000000"
    assert engine.next_id == 8
    engine.mark_lost([])  # the database says nobody is lost any more
    assert not one.lost
    engine.mark_lost([(2, "2.000000")])  # lost in a session that is over: not this one
    assert not two.lost and two.online
