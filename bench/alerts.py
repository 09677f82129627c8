"""The alerts' figures (issue 25, item 4): what 100 rules over 1,000 devices cost ingest, and a silence rule over
10,000 devices.

Ingest cost: the real stack (broker and ingest client processes, as `sustained_qos0`), 1,000 devices inserted in
the database before the client starts (online, in a known session), the load generator publishing their light
readings (QoS 0), a few button (QoS 0) and LED (QoS 1) readings. Phases without and with the rules alternate on
the same stack and database, without, with, with, without (a drift over the run weighs on both kinds alike): the
rules are enabled and disabled in the database between phases and the client reloads them (its alert clock, every
0.5 s). Each phase: readings stored per second, lost per device, the client's CPU time per reading.

Silence: 10,000 online devices inserted with `last_seen` such that one silence rule becomes due at a known
moment, a `Writer` run in this process (its thread and alert clock, `Alerts(("mqtt",))` so that each alert writes
its outbox row): how long after that moment every alert exists, and how long the clock's tick that fired them took.
"""

from __future__ import annotations

import math
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy import Connection, Engine

from bench.loadgen import Share, publish, split
from bench.scenarios import Figure, total, wait_stable
from bench.stack import Stack
from sensorhub.alerting import Metric, Rule
from sensorhub.db import alerts as db
from sensorhub.db.engine import make_engine
from sensorhub.db.schema import init_db, migrated_engine
from sensorhub.ingest.alerts import Alerts
from sensorhub.ingest.drops import Drops
from sensorhub.ingest.sessions import Inbound
from sensorhub.ingest.writer import Writer
from sensorhub.protocol import Kind, Reading, Topic
from sensorhub.timestamps import format_micros, micros_of
from tests.factories import device_row, insert_devices

DAY_US = 86_400 * 1_000_000


@dataclass(frozen=True)
class AlertSizes:
    """How big the alerts scenario is."""

    devices: int = 1_000
    rules: int = 100
    rate: int = 11_000  # light readings offered per second, QoS 0 (10 % above the ingest target, as sustained_qos0)
    seconds: float = 30  # per phase
    rounds: int = 2  # (without, with) pairs, alternated
    publishers: int = 4
    silent_devices: int = 10_000
    silence_seconds: float = 60  # the silence rule's trigger
    lead_seconds: float = 5  # from the writer's start to the moment every device becomes due


ALERTS_FULL = AlertSizes()
ALERTS_QUICK = AlertSizes(devices=40, rules=10, rate=400, seconds=5, rounds=1, publishers=1, silent_devices=200,
                          silence_seconds=5, lead_seconds=2)

#: Light values: most devices wander in a calm band; one in 25 makes an excursion each cycle (≈ 20 s at 11 readings
#: a second), up to 98 for 40 readings and down to 3 for 30, so that the bright and dark rules fire and clear.
CALM = tuple(44 + abs(8 - k % 16) for k in range(16))
EXCURSION = (tuple(range(45, 98, 5)) + (98,) * 40 + tuple(range(98, 45, -5)) + (45,) * 40 + tuple(range(45, 3, -4))
             + (3,) * 30 + tuple(range(3, 45, 4)) + (45,) * 60)
#: One device in EXCURSIONS makes them.
EXCURSIONS = 25
BUTTON = (0,) * 8 + (1,) * 2
LED = (0,) * 6 + (1,) * 6


def device_name(number: int) -> str:
    """The name of device `number` (tests/factories.py's default)."""
    return f"capteur{number:04d}"


def rule_mix(devices: int, count: int) -> list[Rule]:
    """`count` rules over devices 1..`devices`: in each ten, six on light (thresholds with hysteresis and durations),
    one on the LED, one on the button, one on presence, one silence; selectors all, pattern and list in turn."""
    rules: list[Rule] = []
    hundreds = max(1, math.ceil(devices / 100))
    for n in range(count):
        which = n % 3
        if which == 0:
            selector, chosen = "all", ""
        elif which == 1:  # a hundred devices by name: capteur00*, capteur01*, ...
            selector, chosen = "pattern", f"capteur{(n // 3) % hundreds:02d}*" if devices >= 100 else "capteur00*"
        else:  # twenty devices by id, spread out
            step = max(1, devices // 20)
            selector, chosen = "list", ",".join(str(1 + (n + k * step) % devices) for k in range(min(20, devices)))
        kind = n % 10
        name = f"bench-{n:03d}"
        if kind in (0, 1):
            rule = Rule(0, name, Metric.LIGHT, ">", 80.0 + kind * 5, 70.0, for_seconds=2.0, clear_for_seconds=1.0)
        elif kind in (2, 3):
            rule = Rule(0, name, Metric.LIGHT, "<", 10.0 - kind, 20.0, for_seconds=1.0)
        elif kind == 4:
            rule = Rule(0, name, Metric.LIGHT, ">=", 95.0, 90.0)
        elif kind == 5:
            rule = Rule(0, name, Metric.LIGHT, "<=", 5.0, 30.0, for_seconds=0.5, clear_for_seconds=0.5)
        elif kind == 6:
            rule = Rule(0, name, Metric.LED, "==", 1.0, for_seconds=0.2)
        elif kind == 7:
            rule = Rule(0, name, Metric.BUTTON, "==", 1.0)
        elif kind == 8:
            rule = Rule(0, name, Metric.PRESENCE, "==", 0.0, for_seconds=30.0)
        else:
            rule = Rule(0, name, Metric.SILENCE, ">=", 300.0)
        rules.append(replace(rule, selector=selector, devices=chosen))
    return rules


def _wait_for_log(path: Path, line: str, seen: int, timeout: float = 15.0) -> int:
    """Wait until `line` appears more than `seen` times in the client's log; return how many times it does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = path.read_text(errors="replace").count(line)
        if count > seen:
            return count
        time.sleep(0.05)
    raise RuntimeError(f"the ingest client did not log {line!r} within {timeout:g} s")


def _set_enabled(engine: Engine, rules: list[Rule], enabled: bool) -> None:
    with engine.connect() as conn:
        now = time.time_ns() // 1000
        for rule in rules:
            db.update_rule(conn, replace(rule, enabled=enabled), now)
        conn.commit()


def _counts(stack: Stack) -> dict[str, dict[str, int]]:
    return {table: stack.counts(table) for table in ("light_reading", "button_reading", "led_reading")}


@dataclass
class Phase:
    """One phase of the ingest-cost scenario."""

    rules: bool
    rate: float
    lost: int
    duplicated: int
    cpu_us: float  # the ingest client's CPU time per reading stored


def _phase(stack: Stack, sessions: list[tuple[str, str]], sizes: AlertSizes, rules: bool) -> Phase:
    """Publish one phase's readings; what was stored, per device."""
    per_device = int(sizes.rate * sizes.seconds / len(sessions))
    light_values = {name: EXCURSION if n % EXCURSIONS == 0 else CALM for n, (name, _s) in enumerate(sessions, 1)}
    shares = split(stack.settings.mqtt_port, sessions, per_device, sizes.rate, 0, sizes.publishers, light_values)
    extra = sessions[:max(1, len(sessions) // 20)]  # one device in twenty: a button press every 5 s, the LED
    shares.append(Share(stack.settings.mqtt_port, tuple(extra), int(2 * sizes.seconds), 2.0 * len(extra), 0,
                        Topic.BUTTON_STATUS, tuple(BUTTON for _ in extra)))
    shares.append(Share(stack.settings.mqtt_port, tuple(extra), int(sizes.seconds), 1.0 * len(extra), 1,
                        Topic.LED_STATUS, tuple(LED for _ in extra)))
    expected = {"light_reading": per_device, "button_reading": int(2 * sizes.seconds),
                "led_reading": int(sizes.seconds)}
    before = _counts(stack)
    process = stack.client_process()
    cpu_before = sum(process.cpu_times()[:2])
    light_before = total(stack)
    sent, _published, _acked = publish(shares)
    light_sent = per_device * len(sessions)
    stored, _done = wait_stable(lambda: total(stack) - light_before, light_sent, timeout=120)
    done_us = time.time_ns() // 1000 if stored >= light_sent else micros_of(_last_at(stack, light_before))
    # From the first reading's arrival (stamped by the client) to the moment the last was seen stored: the
    # publishers' start (spawned processes) is not counted.
    seconds = (done_us - micros_of(_first_at(stack, light_before))) / 1e6
    extras = {table: {name for name, _s in extra} for table in ("button_reading", "led_reading")}
    extras_before = sum(sum(before[table].values()) for table in extras)
    wait_stable(lambda: sum(sum(stack.counts(table).values()) for table in extras) - extras_before,
                sent - light_sent, timeout=30, quiet=1)
    cpu = sum(process.cpu_times()[:2]) - cpu_before
    after = _counts(stack)
    lost = duplicated = 0
    for table, per in expected.items():
        names = extras.get(table, {name for name, _s in sessions})
        for name in names:
            got = after[table].get(name, 0) - before[table].get(name, 0)
            lost += max(0, per - got)
            duplicated += max(0, got - per)
    return Phase(rules, stored / seconds, lost, duplicated, cpu / max(1, stored) * 1e6)


def _first_at(stack: Stack, after_id: int) -> str:
    assert stack.db is not None
    return str(stack.db.execute("SELECT min(at) FROM light_reading WHERE id > ?", (after_id,)).fetchone()[0])


def _last_at(stack: Stack, after_id: int) -> str:
    assert stack.db is not None
    return str(stack.db.execute("SELECT max(at) FROM light_reading WHERE id > ?", (after_id,)).fetchone()[0])


def ingest_cost(sizes: AlertSizes) -> Figure:
    """Light readings stored per second from `devices` devices, phases without and with the rules alternated."""
    stack = Stack(components=("broker", "client"))
    path = stack.dir / "db.sqlite3"
    engine = make_engine(f"sqlite:///{path}", create_dir=True)
    init_db(engine)
    now = time.time_ns() // 1000
    rows = [device_row(n, joined_us=now - DAY_US, last_seen_us=now) for n in range(1, sizes.devices + 1)]
    with engine.begin() as conn:
        insert_devices(conn, rows)
        rules = [replace(rule, id=db.add_rule(conn, replace(rule, enabled=False), now), enabled=False)
                 for rule in rule_mix(sizes.devices, sizes.rules)]
    sessions = [(str(row[2]), str(row[5])) for row in rows]
    phases: list[Phase] = []
    reloaded = {True: 0, False: 0}
    try:
        with stack:
            for round_ in range(sizes.rounds):
                # without, with, with, without, ...: a drift over the run (tables growing, the machine's other
                # load) weighs on both kinds of phase alike
                for enabled in (False, True) if round_ % 2 == 0 else (True, False):
                    _set_enabled(engine, rules, enabled)
                    line = f"alert rules reloaded: {len(rules) if enabled else 0} enabled"
                    reloaded[enabled] = _wait_for_log(stack.log_path, line, reloaded[enabled])
                    phases.append(_phase(stack, sessions, sizes, enabled))
            fired, resolved, doubled = _alert_counts(stack)
    finally:
        engine.dispose()
    without = [p.rate for p in phases if not p.rules]
    with_rules = [p.rate for p in phases if p.rules]
    ratio = sum(with_rules) / sum(without)
    lost = sum(p.lost for p in phases)
    duplicated = sum(p.duplicated for p in phases)
    cpu_without = sum(p.cpu_us for p in phases if not p.rules) / len(without)
    cpu_with = sum(p.cpu_us for p in phases if p.rules) / len(with_rules)
    return Figure(
        "alerts_ingest",
        f"{sizes.devices:,} devices, {sizes.rate:,} light readings/s offered (QoS 0), without / with "
        f"{sizes.rules} rules",
        f"{' '.join(f'{r:,.0f}' for r in without)} / {' '.join(f'{r:,.0f}' for r in with_rules)} per s stored: "
        f"{ratio:.1%}; {lost} lost, {duplicated} duplicated; client CPU {cpu_without:.0f} / {cpu_with:.0f} µs a "
        f"reading; {fired:,} alerts fired, {resolved:,} resolved, {doubled} (rule, device) with two active",
        ">= 90 % of the rate without rules, 0 lost, at most one active alert per rule and device",
        ratio >= 0.9 and lost == 0 and doubled == 0,
        {"without_per_s": [round(r) for r in without], "with_per_s": [round(r) for r in with_rules],
         "lost_without": [p.lost for p in phases if not p.rules], "lost_with": [p.lost for p in phases if p.rules],
         "ratio": round(ratio, 3), "lost": lost, "duplicated": duplicated, "cpu_us_without": round(cpu_without, 1),
         "cpu_us_with": round(cpu_with, 1), "fired": fired, "resolved": resolved, "doubled": doubled,
         "rules": sizes.rules, "devices": sizes.devices},
    )


def _alert_counts(stack: Stack) -> tuple[int, int, int]:
    """(alerts that fired, alerts resolved, (rule, device) pairs with more than one active alert)."""
    assert stack.db is not None
    fired = int(stack.db.execute("SELECT count(*) FROM alert WHERE fired_at IS NOT NULL").fetchone()[0])
    resolved = int(stack.db.execute("SELECT count(*) FROM alert WHERE state = 'resolved'").fetchone()[0])
    doubled = int(stack.db.execute(
        "SELECT count(*) FROM (SELECT 1 FROM alert WHERE state <> 'resolved' GROUP BY rule_id, device_id "
        "HAVING count(*) > 1)").fetchone()[0])
    return fired, resolved, doubled


class TimedAlerts(Alerts):
    """Alerts whose clock ticks are timed: (start µs, seconds, the writer thread's CPU seconds, alerts changed)."""

    def __init__(self, channels: tuple[str, ...]) -> None:
        super().__init__(channels)
        self.ticks: list[tuple[int, float, float, int]] = []

    def tick(self, conn: Connection, now_us: int | None = None) -> int:
        """The clock's tick, timed."""
        started_us = time.time_ns() // 1000
        started, cpu = time.perf_counter(), time.thread_time()
        changed = super().tick(conn, now_us)
        self.ticks.append((started_us, time.perf_counter() - started, time.thread_time() - cpu, changed))
        return changed


def silence(sizes: AlertSizes) -> Figure:
    """`silent_devices` online devices become silent for the rule's trigger at one moment: when are all alerts there?"""
    with tempfile.TemporaryDirectory(prefix="sensorhub-alerts-") as directory:
        path = Path(directory) / "db.sqlite3"
        engine = migrated_engine(f"sqlite:///{path}")
        now = time.time_ns() // 1000
        due_us = now + round(sizes.lead_seconds * 1e6)
        trigger_us = round(sizes.silence_seconds * 1e6)
        with engine.begin() as conn:
            insert_devices(conn, [device_row(n, joined_us=now - DAY_US, last_seen_us=due_us - trigger_us)
                                  for n in range(1, sizes.silent_devices + 1)])
            rule_id = db.add_rule(conn, Rule(0, "silent", Metric.SILENCE, ">=", sizes.silence_seconds), now)
        alerts = TimedAlerts(("mqtt",))
        writer = Writer(engine, lambda _t, _p, _q: None, lambda _m, _q: None, Drops(), alerts=alerts)
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        done_us: int | None = None
        writer.start()
        try:
            deadline = due_us + 60_000_000
            while time.time_ns() // 1000 < deadline:
                count = reader.execute("SELECT count(*) FROM alert WHERE rule_id = ?", (rule_id,)).fetchone()[0]
                if count >= sizes.silent_devices:
                    done_us = time.time_ns() // 1000
                    break
                time.sleep(0.01)
            outbox = int(reader.execute("SELECT count(*) FROM alert_outbox").fetchone()[0])
            early = int(reader.execute("SELECT count(*) FROM alert WHERE since < ?",
                                       (format_micros(due_us),)).fetchone()[0])
        finally:
            writer.stop()
            reader.close()
            engine.dispose()
    firing = [tick for tick in alerts.ticks if tick[3]]
    late = (done_us - due_us) / 1e6 if done_us is not None else math.inf
    tick_s = sum(seconds for _s, seconds, _cpu, _c in firing)
    tick_cpu = sum(cpu for _s, _seconds, cpu, _c in firing)
    first = (firing[0][0] - due_us) / 1e6 if firing else math.nan
    return Figure(
        "alerts_silence",
        f"a silence rule ({sizes.silence_seconds:g} s) due at once for {sizes.silent_devices:,} online devices",
        f"all {alerts.stats.fired:,} fired {late:.2f} s after the due moment; the clock's firing tick started "
        f"{first:.2f} s after it and took {tick_s:.2f} s ({tick_cpu:.2f} s of CPU, {len(firing)} tick(s)); "
        f"{outbox:,} outbox rows",
        "within 2 s, each alert once", late <= 2 and alerts.stats.fired == sizes.silent_devices and early == 0,
        {"devices": sizes.silent_devices, "late_s": round(late, 3), "tick_s": round(tick_s, 3),
         "tick_started_s": round(first, 3), "tick_cpu_s": round(tick_cpu, 3), "ticks": len(firing),
         "fired": alerts.stats.fired, "outbox": outbox,
         "early": early},
    )


def _writer_rate(directory: Path, sizes: AlertSizes, rules: bool, label: str) -> tuple[float, float, int]:
    """Light readings through a `Writer` in this process (no broker), the same devices, values and rules as
    `ingest_cost`, stamped as if `rate` a second arrived; (readings per second, this process's CPU µs a reading,
    alerts fired)."""
    engine = migrated_engine(f"sqlite:///{directory / f'writer-{label}.sqlite3'}")
    count = round(sizes.rate * sizes.seconds)
    t0 = time.time_ns() // 1000 - round(sizes.seconds * 1e6) - 1_000_000
    rows = [device_row(n, joined_us=t0 - DAY_US, last_seen_us=t0) for n in range(1, sizes.devices + 1)]
    with engine.begin() as conn:
        insert_devices(conn, rows)
        if rules:
            for rule in rule_mix(sizes.devices, sizes.rules):
                db.add_rule(conn, rule, t0)
    acked = 0
    finished = threading.Event()

    def ack(_mid: int, _qos: int) -> None:  # the writer thread's: no lock needed
        nonlocal acked
        acked += 1
        if acked == count:
            finished.set()

    writer = Writer(engine, lambda _t, _p, _q: None, ack, Drops(), alerts=Alerts(("mqtt",)))
    sessions = [(str(row[2]), str(row[5])) for row in rows]
    cycles = [EXCURSION if n % EXCURSIONS == 0 else CALM for n in range(1, len(sessions) + 1)]
    items = []
    for k in range(count):
        number, index = divmod(k, len(sessions))
        name, session = sessions[index]
        cycle = cycles[index]
        items.append(Inbound(Reading(Kind.LIGHT, name, session, cycle[number % len(cycle)]),
                             t0 + round(k * 1e6 / sizes.rate), k + 1, 1))
    writer.start()
    try:
        started, cpu = time.perf_counter(), time.process_time()
        writer.queue.put_many(items)
        if not finished.wait(300):
            raise RuntimeError(f"the writer acknowledged {acked:,} of {count:,} readings in 300 s")
        rate = count / (time.perf_counter() - started)
        cpu_us = (time.process_time() - cpu) / count * 1e6
        fired = writer.alerts.stats.fired
    finally:
        writer.stop()
        engine.dispose()
    return rate, cpu_us, fired


def writer_cost(sizes: AlertSizes) -> Figure:
    """The writer's own ceiling without and with the rules: runs alternated; CPU time a reading, the best of each."""
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    fired = 0
    with tempfile.TemporaryDirectory(prefix="sensorhub-alerts-") as directory:
        for round_ in range(sizes.rounds + 1):
            for rules in (False, True):
                rate, cpu_us, got = _writer_rate(Path(directory), sizes, rules, f"{round_}-{rules}")
                rates[rules].append(rate)
                cpu[rules].append(cpu_us)
                fired = max(fired, got)
    without, with_rules = min(cpu[False]), min(cpu[True])
    ratio = without / with_rules
    return Figure(
        "alerts_writer",
        f"the writer alone (no broker), {round(sizes.rate * sizes.seconds):,} light readings of {sizes.devices:,} "
        f"devices queued at once, without / with {sizes.rules} rules",
        f"CPU {without:.1f} / {with_rules:.1f} µs a reading (best of {len(cpu[False])}): {ratio:.1%} of the rate "
        f"without rules, +{with_rules - without:.1f} µs; wall {' '.join(f'{r:,.0f}' for r in rates[False])} / "
        f"{' '.join(f'{r:,.0f}' for r in rates[True])} per s; {fired:,} alerts fired in a run with rules",
        "(the writer's ceiling, above what the broker delivers)", None,
        {"cpu_us_without": [round(c, 2) for c in cpu[False]], "cpu_us_with": [round(c, 2) for c in cpu[True]],
         "without_per_s": [round(r) for r in rates[False]], "with_per_s": [round(r) for r in rates[True]],
         "ratio": round(ratio, 3), "cost_us": round(with_rules - without, 2), "fired": fired},
    )


def run_alerts(quick: bool) -> list[Figure]:
    """The three figures."""
    sizes = ALERTS_QUICK if quick else ALERTS_FULL
    return [ingest_cost(sizes), writer_cost(sizes), silence(sizes)]
