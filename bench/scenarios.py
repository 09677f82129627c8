"""The figures of the performance issue, each measured on the real stack."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.loadgen import publish, split
from bench.stack import Stack
from sensorhub.mqttclient import stop_loop
from sensorhub.protocol import Topic, format_reading
from sensorhub.simulator import Fleet
from sensorhub.timestamps import parse_timestamp, to_micros


@dataclass
class Figure:
    """One line of the results table."""

    key: str
    label: str
    value: str
    target: str
    ok: bool | None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is: the real figures, or a few seconds' smoke run."""

    devices: int = 100
    sustained_rate: int = 10_000
    sustained_seconds: float = 60
    burst: int = 100_000
    latency_rate: int = 5_000
    latency_seconds: float = 20
    fleet: int = 2_000
    fleet_seconds: float = 30
    web_devices: int = 1_000
    web_readings: int = 5_000_000
    web_requests: int = 200
    flood: int = 150_000
    browser_events: int = 200
    publishers: int = 4
    fast_fleet: int = 100
    fast_rate: int = 20
    fleet_browser_window: float = 10
    footprint_seconds: float = 30
    footprint_settle: float = 5


FULL = Sizes()
QUICK = Sizes(devices=10, sustained_rate=1_000, sustained_seconds=1, burst=2_000, latency_rate=500,
              latency_seconds=1, fleet=30, fleet_seconds=3, web_devices=20, web_readings=20_000, web_requests=20,
              flood=5_000, browser_events=10, publishers=1, fast_fleet=5, fast_rate=5, fleet_browser_window=2,
              footprint_seconds=2, footprint_settle=1)


def percentile(values: list[float], fraction: float) -> float:
    """The value below which `fraction` of the values lie (nearest rank)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def wait_stable(read: Callable[[], int], expected: int, timeout: float, quiet: float = 3.0) -> tuple[int, float]:
    """Poll until `read()` reaches `expected` or stops growing for `quiet` seconds; return (value, when)."""
    deadline = time.monotonic() + timeout
    last, last_change = read(), time.monotonic()
    while last < expected and time.monotonic() < deadline and time.monotonic() - last_change < quiet:
        time.sleep(0.05)
        now = read()
        if now != last:
            last, last_change = now, time.monotonic()
    return last, last_change if last < expected else time.monotonic()


def total(stack: Stack, table: str = "light_reading") -> int:
    """Rows in a reading table: its largest rowid, in constant time.

    Nothing is ever deleted and a rolled-back insert leaves no gap, so the largest id is the count. count(*)
    reads the whole table: polled every 50 ms on a table of a million rows, it took a good part of a core
    from the client being measured, and more as the table grew.
    """
    assert stack.db is not None
    return int(stack.db.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0])


class Load:
    """The load devices: joined through the real protocol by the simulator, then driven by the load generator.

    A context manager: the devices leave on the way out, whatever happened.
    """

    def __init__(self, stack: Stack, count: int, seed: int = 7) -> None:
        self.fleet = Fleet(stack.settings, count=count, interval=86_400, button_every=None, seed=seed)
        self.sessions: list[tuple[str, str]] = []

    def __enter__(self) -> Load:
        self.fleet.start()
        try:
            self.fleet.wait_joined(60)
        except BaseException:
            self.stop()
            raise
        self.sessions = [(device.name or "", device.session or "") for device in self.fleet.devices]
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def own_sent(self) -> dict[str, int]:
        """Light readings the simulated devices published themselves."""
        return {d.name: d.sent.get(Topic.PHOTORESISTOR_STATUS, 0) for d in self.fleet.devices}

    def stop(self) -> None:
        """Let the devices leave."""
        self.fleet.stop()


def sustained(stack: Stack, load: Load, sizes: Sizes, qos: int) -> Figure:
    """Readings from `devices` devices at (a bit above) the target rate for a while: throughput, loss, duplicates."""
    offered = sizes.sustained_rate * 1.1  # offer more than the target: the figure is what got stored
    per_device = int(offered * sizes.sustained_seconds / len(load.sessions))
    before, own_before = stack.counts(), load.own_sent()
    start = time.monotonic()
    sent, published, _acked = publish(split(stack.settings.mqtt_port, load.sessions, per_device, offered, qos,
                                            sizes.publishers))
    stored, done = wait_stable(lambda: total(stack) - sum(before.values()), sent + _own_delta(load, own_before),
                               timeout=120)
    after, own_after = stack.counts(), load.own_sent()
    lost = duplicated = 0
    for name, _session in load.sessions:
        expected = before.get(name, 0) + per_device + own_after[name] - own_before[name]
        got = after.get(name, 0)
        lost += max(0, expected - got)
        duplicated += max(0, got - expected)
    rate = stored / (done - start)
    target = sizes.sustained_rate
    ok = rate >= target and lost == 0 and (duplicated == 0 or qos == 1)
    return Figure(
        f"sustained_qos{qos}",
        f"sustained readings, {len(load.sessions)} devices, {sizes.sustained_seconds:g} s, QoS {qos}",
        f"{rate:,.0f}/s stored (offered {sent / published:,.0f}/s), {lost} lost, {duplicated} duplicated",
        f">= {target:,}/s, 0 lost" + (", 0 duplicated" if qos == 0 else ""), ok,
        {"stored_per_s": round(rate), "offered_per_s": round(sent / published), "sent": sent, "lost": lost,
         "duplicated": duplicated, "lag_s": round(done - start - published, 2)},
    )


def _own_delta(load: Load, before: dict[str, int]) -> int:
    return sum(load.own_sent().values()) - sum(before.values())


def burst(stack: Stack, load: Load, sizes: Sizes) -> Figure:
    """As many QoS 1 readings as fast as possible: are they all stored, and how fast."""
    per_device = sizes.burst // len(load.sessions)
    before = total(stack)
    before_exact = stack.exact_total()
    start = time.monotonic()
    sent, published, acked = publish(split(stack.settings.mqtt_port, load.sessions, per_device, 0, 1,
                                           sizes.publishers))
    stored, done = wait_stable(lambda: total(stack) - before, sent, timeout=300)
    stored = stack.exact_total() - before_exact
    lost = max(0, sent - stored)
    return Figure(
        "burst_qos1", f"burst of {sent:,} QoS 1 readings, as fast as possible",
        f"{stored:,} stored ({lost} lost) in {done - start:.1f} s = {stored / (done - start):,.0f}/s "
        f"(published in {published:.1f} s)",
        "all stored", lost == 0,
        {"sent": sent, "stored": stored, "seconds": round(done - start, 2), "published_s": round(published, 2),
         "acknowledged_s": round(acked, 2)},
    )


#: Probes are this far apart; their values repeat every 101 probes (2 s), twice the longest wait for a row.
PROBE_INTERVAL = 0.02
PROBE_WINDOW_US = 1_000_000


def latency(stack: Stack, load: Load, sizes: Sizes) -> Figure:
    """Publish -> committed latency of a probe device while the others publish at the set rate.

    Each probe is matched to its own row: the row of the probe's value whose arrival time (`at`, stamped by
    the client) falls within a second after the probe was published. A lost probe is counted as missing;
    it never shifts the others. The probe device publishes nothing else, on a database of this figure.
    """
    probe_name, probe_session = load.sessions[0]
    others = load.sessions[1:]
    probe_id = stack.device_id(probe_name)
    db = sqlite3.connect(f"file:{stack.dir / 'db.sqlite3'}?mode=ro", uri=True, check_same_thread=False)
    last_id = int(db.execute("SELECT coalesce(max(id), 0) FROM light_reading").fetchone()[0])
    per_device = int(sizes.latency_rate * sizes.latency_seconds / len(others))
    background = threading.Thread(target=publish, args=(split(stack.settings.mqtt_port, others, per_device,
                                                              sizes.latency_rate, 0, sizes.publishers),))
    seen: dict[int, tuple[float, int, int]] = {}  # row id -> (when first seen, at in µs, value)
    stop = threading.Event()

    def watch() -> None:
        nonlocal last_id
        query = "SELECT id, at, value FROM light_reading WHERE device_id = ? AND id > ?"
        while not stop.is_set():
            rows = db.execute(query, (probe_id, last_id)).fetchall()
            moment = time.time()
            for row_id, at, value in rows:
                seen[row_id] = (moment, to_micros(parse_timestamp(at)), value)
                last_id = max(last_id, row_id)
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    probes: list[tuple[float, int]] = []  # (published at, value)
    try:
        client.connect("127.0.0.1", stack.settings.mqtt_port)
        client.loop_start()
        background.start()
        time.sleep(1.0)  # let the load settle
        watcher.start()
        for number in range(int(sizes.latency_seconds / PROBE_INTERVAL)):
            value = number % 101
            probes.append((time.time(), value))
            client.publish(Topic.PHOTORESISTOR_STATUS, format_reading(probe_name, probe_session, value), 0)
            time.sleep(PROBE_INTERVAL)
        deadline = time.monotonic() + 10
        while len(seen) < len(probes) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join()
        if background.is_alive():
            background.join()
        client.disconnect()
        stop_loop(client)
        db.close()
    delays, unmatched = match_probes(probes, seen)
    missing = len(probes) - len(delays)
    p50, p99 = percentile(delays, 0.5), percentile(delays, 0.99)
    return Figure(
        "latency_p99_ms", f"publish -> committed, at {sizes.latency_rate:,}/s", f"p50 {p50:.1f} ms, p99 {p99:.1f} ms "
        f"({len(delays)} probes, {missing} missing)", "p99 <= 150 ms, none missing",
        p99 <= 150 and missing == 0 and not unmatched,
        {"p50_ms": round(p50, 1), "p99_ms": round(p99, 1), "max_ms": round(max(delays, default=0), 1),
         "probes": len(probes), "measured": len(delays), "missing": missing, "unmatched_rows": unmatched},
    )


def match_probes(probes: list[tuple[float, int]], rows: dict[int, tuple[float, int, int]],
                 ) -> tuple[list[float], int]:
    """Each probe's delay (ms) to its own row, and how many rows matched no probe."""
    free = sorted(rows.values(), key=lambda row: row[1])
    delays = []
    for published, value in probes:
        start = int(published * 1_000_000)
        for index, (seen_at, at, row_value) in enumerate(free):
            if row_value == value and start <= at < start + PROBE_WINDOW_US:
                delays.append((seen_at - published) * 1000)
                del free[index]
                break
    return delays, len(free)


def many_devices(stack: Stack, sizes: Sizes) -> Figure:
    """Thousands of simulated devices at once, one reading per second each: join time, then loss."""
    before = stack.counts()
    start = time.monotonic()
    fleet = Fleet(stack.settings, count=sizes.fleet, interval=1.0, button_every=None, seed=11,
                  name_timeout=60)
    fleet.start(timeout=30)
    joined_in = float("nan")
    try:
        fleet.wait_joined(120)
        joined_in = time.monotonic() - start
        time.sleep(sizes.fleet_seconds)
    finally:
        stopping = time.monotonic()
        fleet.stop(timeout=120)
        stopped_in = time.monotonic() - stopping
    sent = {d.name: d.sent.get(Topic.PHOTORESISTOR_STATUS, 0) for d in fleet.devices}
    expected_total = sum(sent.values())
    settling = time.monotonic()
    wait_stable(lambda: sum(stack.counts().get(name, 0) - before.get(name, 0) for name in sent), expected_total,
                timeout=60)
    settled_in = time.monotonic() - settling
    after = stack.counts()
    lost = sum(max(0, n - (after.get(name, 0) - before.get(name, 0))) for name, n in sent.items())
    duplicated = sum(max(0, (after.get(name, 0) - before.get(name, 0)) - n) for name, n in sent.items())
    return Figure(
        "devices_2000", f"{sizes.fleet:,} simultaneous virtual devices, 1 reading/s each",
        f"all joined in {joined_in:.1f} s, {expected_total:,} readings, {lost} lost, {duplicated} duplicated",
        "all joined within 30 s, nothing lost", joined_in <= 30 and lost == 0,
        {"devices": sizes.fleet, "joined_s": round(joined_in, 1), "readings": expected_total, "lost": lost,
         "duplicated": duplicated,
         "left_s": round(stopped_in, 1), "settled_s": round(settled_in, 1)},
    )


#: What one queued reading may take in the client, at most (Inbound, Reading, strings, queue slot): the bound
#: of the client's growth is QUEUE_MAX of them.
QUEUED_BYTES = 512


def memory(stack: Stack, load: Load, sizes: Sizes) -> Figure:
    """Client memory while a flood waits behind a database that cannot be written (another writer holds it)."""
    from sensorhub.ingest.writer import QUEUE_MAX

    bound = QUEUE_MAX * QUEUED_BYTES / 2**20
    process = stack.client_process()
    baseline = process.memory_info().rss
    blocker = sqlite3.connect(stack.dir / "db.sqlite3", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    peak = baseline
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            with contextlib.suppress(Exception):
                peak = max(peak, process.memory_info().rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    before = total(stack)
    per_device = sizes.flood // len(load.sessions)
    try:
        try:
            sent, _published, _ = publish(split(stack.settings.mqtt_port, load.sessions, per_device, 0, 0,
                                                sizes.publishers))
            time.sleep(2)  # what the broker still holds reaches the client
        finally:
            blocker.rollback()
            blocker.close()
        stored, _ = wait_stable(lambda: total(stack) - before, sent, timeout=120, quiet=15)
    finally:
        stop.set()
        sampler.join()
    grown = (peak - baseline) / 2**20
    return Figure(
        "client_memory", f"ingest client memory, {sent:,} readings queued behind a locked database",
        f"{baseline / 2**20:.0f} MiB -> peak {peak / 2**20:.0f} MiB (+{grown:.0f} MiB); {stored:,} stored afterwards",
        f"grows <= {bound:.0f} MiB ({QUEUE_MAX:,} queued x {QUEUED_BYTES} B), {QUEUE_MAX:,} at least stored",
        # Beyond QUEUE_MAX waiting, QoS 0 readings are shed and counted so that paho never stops answering the
        # broker (ingest/inbox.py): the flood's first QUEUE_MAX readings are all stored.
        stored >= min(sent, QUEUE_MAX) and grown <= bound,
        {"baseline_mib": round(baseline / 2**20), "peak_mib": round(peak / 2**20), "grown_mib": round(grown, 1),
         "bound_mib": round(bound), "queue_max": QUEUE_MAX, "sent": sent, "stored": stored},
    )
