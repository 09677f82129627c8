"""`python -m bench --scenario 100k [--boards N] [--minutes M] [--postgresql] [--quick]`: a fleet of boards on one
broker, each following the firmware's protocol (MAC join, name, session with its Will, a light reading every 60 s
with jitter), simulated by processes of paho clients on one epoll loop each (sensorhub.simulator.swarm).

In order, on one stack (mosquitto, one ingest client, SQLite or PostgreSQL): the first registration of the fleet
(new devices: the new-device flood limit is raised, as a first start of a large fleet needs; at most `gate` boards
of each simulator process wait for their name at once), the steady state (readings sent against stored, CPU and
memory of each part), presence (boards killed silently and with their sockets closed: how soon they are offline),
a broker restart (how soon every board is back, QoS 1 led/status acknowledged by the broker against stored) and
the power cut (every board reboots and joins at once, as the firmware does, without any gate).

`--storm-only` measures the power cut alone: the boards are known to the database (rows inserted, offline, as
after a power cut) and all start at once. `--no-name-filter` runs the broker without its name-assignment filter
(every waiting board then receives every assignment, as before the filter: the "before" of docs/scaling.md).
"""

from __future__ import annotations

import os
import resource
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import Engine, func, select

from bench.edges import EdgeBrokers
from bench.scenarios import Figure, percentile
from bench.stack import scratch_settings
from sensorhub import reserve
from sensorhub.broker import BASE_CONFIG, Broker
from sensorhub.config import Settings
from sensorhub.db.engine import make_engine
from sensorhub.db.models import Device, LedReading, LightReading
from sensorhub.db.schema import init_db
from sensorhub.health import read_heartbeat
from sensorhub.simulator.fleet import unique_macs
from sensorhub.simulator.swarmfleet import SwarmFleet
from sensorhub.supervisor import Supervisor
from sensorhub.telemetry import heartbeat_path
from tests.factories import device_row, insert_devices

#: Sockets the broker keeps besides the boards' (listeners, the ingest client, log, persistence, spare).
BROKER_SPARE = 100


def most_boards() -> int:
    """The most boards one mosquitto process can hold here: its open-file limit (inherited), less what it keeps."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = hard if hard != resource.RLIM_INFINITY else 1_000_000
    return max(10, min(100_000, limit - BROKER_SPARE))


@dataclass(frozen=True)
class HundredK:
    """The scenario's sizes."""

    boards: int
    interval: float = 60.0
    steady_minutes: float = 3.0
    gate: int = 10
    killed: int = 1_000
    storm_cap: float = 120.0
    restart_cap: float = 300.0
    per_process: int = 7_000
    #: Edge brokers bridged to the central one (bench/edges.py); None: as many as the boards need here (none when
    #: one broker process may hold them all).
    edges: int | None = None
    #: Only the power cut: known boards (rows inserted, offline) all starting at once, no step before it.
    storm_only: bool = False
    #: The brokers' name-assignment filter (mosquitto_reserve.c); off: every waiting board hears every assignment.
    name_filter: bool = True

    def edge_count(self) -> int:
        """How many edge brokers the boards are spread over (0: all on the central broker)."""
        if self.edges is not None:
            return self.edges
        most = most_boards()
        if self.boards <= most:
            return 0
        processes = -(-self.boards // self.per_process)
        per_edge = max(1, most // self.per_process)  # whole simulator processes an edge broker may hold
        return -(-processes // per_edge)


def quick() -> HundredK:
    """A few seconds' smoke run."""
    return HundredK(boards=60, interval=2.0, steady_minutes=0.1, gate=10, killed=5, storm_cap=30.0,
                    restart_cap=60.0)


def base_config(name_filter: bool) -> str | None:
    """The central broker's configuration: mqtt/mosquitto.conf's (None), or without the name-assignment filter."""
    if name_filter:
        return None
    return "".join(line for line in BASE_CONFIG.read_text().splitlines(keepends=True)
                   if not line.startswith(reserve.FILTER_OPTIONS))


def _known(engine: Engine, macs: list[str]) -> None:
    """The boards as the database knows them after a power cut: named, offline."""
    now_us = time.time_ns() // 1000
    with engine.begin() as conn:
        insert_devices(conn, [device_row(i + 1, joined_us=now_us - 3_600_000_000, online=False, mac=mac)
                              for i, mac in enumerate(macs)])


def _load() -> str:
    return "{:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg())


class Counter:
    """Reads the database: online devices, readings stored."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _scalar(self, query: Any) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def online(self, macs: list[str] | None = None) -> int:
        """Devices online (among `macs`)."""
        query = select(func.count()).select_from(Device).where(Device.online.is_(True))
        if macs is not None:
            query = query.where(Device.mac.in_(macs))
        return self._scalar(query)

    def sessions(self) -> set[tuple[str, str]]:
        """(MAC, session) of every device online."""
        with self.engine.connect() as conn:
            return {(mac, session) for mac, session in
                    conn.execute(select(Device.mac, Device.session_id).where(Device.online.is_(True)))}

    def devices(self) -> int:
        """Devices known."""
        return self._scalar(select(func.count()).select_from(Device))

    def light(self) -> int:
        """Light readings stored."""
        return self._scalar(select(func.count()).select_from(LightReading))

    def led(self) -> int:
        """LED readings stored."""
        return self._scalar(select(func.count()).select_from(LedReading))


def _until(predicate: Callable[[], bool], cap: float, poll: float = 0.5) -> float | None:
    """Seconds until `predicate()` holds, or None after `cap` seconds."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > cap:
            return None
        time.sleep(poll)
    return time.monotonic() - started


def _all_back(fleet: SwarmFleet, counter: Counter, alive: int) -> Callable[[], bool]:
    """Whether every living board is in a session the database shows online (the simulator's very session)."""
    def check() -> bool:
        boards = fleet.sessions()
        return len(boards) >= alive and len(boards & counter.sessions()) >= alive
    return check


def _client_back(settings: Settings, since: float) -> Callable[[], bool]:
    """Whether the ingest client says (its heartbeat, written each second) it is connected again since `since`
    (time.time()): until then a board's QoS 0 join is dropped by the broker, not queued for it."""
    def check() -> bool:
        beat = read_heartbeat(heartbeat_path(settings))
        return bool(beat and beat.get("broker") and float(beat.get("at", 0)) > since)
    return check


def _stable(read: Callable[[], int], quiet: float = 5.0, cap: float = 120.0) -> int:
    """`read()` once it has not changed for `quiet` seconds."""
    value, since, started = read(), time.monotonic(), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() - started < cap:
        time.sleep(0.5)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
    return value


class Parts:
    """The processes of each part, for their CPU time and memory (looked up again each time: a part restarted by
    the supervisor has a new process)."""

    def __init__(self, parts: dict[str, Callable[[], list[int]]]) -> None:
        self.parts = parts
        self._known: dict[int, psutil.Process] = {}

    def _each(self, name: str) -> list[psutil.Process]:
        procs = []
        for pid in self.parts[name]():
            if pid not in self._known:  # psutil's CPU times are per Process object: keep each one
                with suppress(psutil.Error):
                    self._known[pid] = psutil.Process(pid)
            if pid in self._known:
                procs.append(self._known[pid])
        if name == "postgresql":  # the postmaster's children come and go
            procs += [child for proc in list(procs) for child in proc.children()]
        return procs

    def _sum(self, measure: Callable[[psutil.Process], float]) -> dict[str, float]:
        """`measure` summed over each part's processes (one that ended meanwhile counts nothing)."""
        out: dict[str, float] = {}
        for name in self.parts:
            total = 0.0
            for proc in self._each(name):
                with suppress(psutil.Error):
                    total += measure(proc)
            out[name] = total
        return out

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) of each part so far."""
        return self._sum(lambda proc: sum(proc.cpu_times()[:2]))

    def rss(self) -> dict[str, int]:
        """Resident memory (bytes) of each part now."""
        return {name: int(total) for name, total in self._sum(lambda proc: proc.memory_info().rss).items()}


@contextmanager
def _database(postgresql: bool) -> Iterator[tuple[str | None, list[int]]]:
    """None (SQLite: the settings' file) or a new database of a durable throwaway cluster, and its postmaster."""
    if not postgresql:
        yield None, []
        return
    from tests.pgcluster import Cluster, binaries

    bindir = binaries()
    if bindir is None:
        raise SystemExit("--postgresql needs PostgreSQL's server binaries: sudo apt-get install postgresql")
    with Cluster(bindir, durable=True) as cluster:
        url = cluster.create_database()
        pid = int((cluster.data / "postmaster.pid").read_text().split()[0])
        yield url, [pid]


def hundred_k(sizes: HundredK, postgresql: bool, say: Callable[[str], None]) -> list[Figure]:
    """Every figure of the scenario, on one stack."""
    figures: list[Figure] = []
    n = sizes.boards
    per_k = n / 1000
    with tempfile.TemporaryDirectory(prefix="sensorhub-bench-100k-") as tmp, ExitStack() as stack:
        url, pg_pids = stack.enter_context(_database(postgresql))
        settings: Settings = scratch_settings(Path(tmp))
        if url:
            settings = settings.replace(database_url=url)
        engine = make_engine(settings.database_url, create_dir=True)
        init_db(engine)
        counter = Counter(engine)
        macs = unique_macs(28, n)
        if sizes.storm_only:
            _known(engine, macs)  # before the ingest client starts and loads the device table
        base = base_config(sizes.name_filter)
        broker = Broker(settings, stderr=subprocess.DEVNULL, base=base)  # its log file has it all
        broker.start()
        stack.callback(lambda: broker.stop())
        supervisor = Supervisor(settings, out=(Path(tmp) / "client.log").open("w"), components=("client",))
        supervisor.start()
        stack.callback(supervisor.stop)
        # As `sensorhub run` does: a client that exits (its watchdog: status 3) is restarted, and said in its log.
        threading.Thread(target=supervisor.watch, daemon=True).start()
        edge_plugin = reserve.build(Path(tmp)) if sizes.name_filter and sizes.edge_count() else None
        edges = (stack.enter_context(EdgeBrokers(sizes.edge_count(), settings.mqtt_port, Path(settings.broker_log),
                                                 Path(tmp) / "edges", edge_plugin))
                 if sizes.edge_count() else None)
        ports: int | list[int] = edges.ports if edges is not None else settings.mqtt_port
        fleet = stack.enter_context(SwarmFleet("127.0.0.1", ports, macs, interval=sizes.interval,
                                               keepalive=settings.keepalive, gate=sizes.gate,
                                               per_process=sizes.per_process))
        fleet.stats()  # every process is up
        assert broker.process is not None
        brokers = [broker]
        client = supervisor.component("client")
        parts: dict[str, Callable[[], list[int]]] = {
            "broker": lambda: [brokers[-1].process.pid] if brokers[-1].process else [],
            "client": lambda: [client.process.pid] if client.process else [], "simulator": lambda: fleet.pids}
        if edges is not None:
            parts["edge brokers"] = edges.pids
        if pg_pids:
            parts["postgresql"] = lambda: pg_pids
        procs = Parts(parts)
        base_rss = procs.rss()
        say(f"{n:,} boards in {len(fleet.pids)} simulator process(es)"
            + (f", over {len(edges.ports)} edge brokers bridged to the central one" if edges is not None else "")
            + f"; name-assignment filter {'on' if sizes.name_filter else 'off'}; load {_load()}")
        if sizes.storm_only:
            figures.append(_storm(fleet, counter, procs, n, sizes, lambda: fleet.start(spread=0.0, gate=0)))
            say(f"  {figures[-1].label}: {figures[-1].value}")
            engine.dispose()
            return figures

        # 1. The first registration: every board is new.
        started = time.monotonic()
        fleet.start(spread=0.0, gate=sizes.gate)
        took = _until(_all_back(fleet, counter, n), max(600.0, n / 20), poll=1.0)
        stats = fleet.stats()
        joined = counter.online()
        lat = stats["latencies"]
        figures.append(Figure(
            "hk_register", f"first registration: {n:,} new boards, {sizes.gate} a process waiting for a name at once",
            (f"all online in {took:.0f} s ({n / took:,.0f} joins/s)" if took else
             f"{joined:,} of {n:,} online after {time.monotonic() - started:.0f} s")
            + f"; join p50 {percentile(lat, 0.5):.2f} s, p99 {percentile(lat, 0.99):.2f} s; load {_load()}",
            "", None,
            {"boards": n, "seconds": took, "online": joined, "p50_s": percentile(lat, 0.5),
             "p99_s": percentile(lat, 0.99), "assigns_received": stats["counters"].assigns_seen, "load": _load()}))
        say(f"  {figures[-1].label}: {figures[-1].value}")

        # 2. The steady state.
        cpu0, t0 = procs.cpu(), time.monotonic()
        sent0, stored0 = fleet.stats()["counters"].written_readings, counter.light()
        time.sleep(sizes.steady_minutes * 60)
        cpu1, t1 = procs.cpu(), time.monotonic()
        rss = procs.rss()
        load = _load()
        fleet.pause(True)
        time.sleep(1)
        sent = fleet.stats()["counters"].written_readings
        stored = _stable(counter.light)
        fleet.pause(False)
        lost = sent - stored  # every reading since the boards started, all of them written and settled
        rate = (stored - stored0) / (t1 - t0)
        cpu = {name: 100 * (cpu1[name] - cpu0[name]) / (t1 - t0) for name in cpu1}
        figures.append(Figure(
            "hk_steady", f"steady state: {n:,} boards, a reading every {sizes.interval:g} s each, "
                         f"{sizes.steady_minutes:g} min",
            f"{rate:,.0f} readings/s stored; since the start {sent:,} sent, {stored:,} stored, {lost:,} lost; "
            f"load {load}",
            f"{n / sizes.interval:,.0f}/s, 0 lost", lost == 0 and rate >= 0.9 * n / sizes.interval,
            {"sent": sent, "stored": stored, "lost": lost, "window_sent": sent - sent0, "rate": round(rate, 1),
             "load": load}))
        say(f"  {figures[-1].label}: {figures[-1].value}")
        figures.append(Figure(
            "hk_cpu", "CPU of each part in the steady state (% of one core)",
            ", ".join(f"{name} {value:.1f} %" for name, value in cpu.items()) + f"; load {load}", "", None,
            {"cpu_percent": {k: round(v, 1) for k, v in cpu.items()}, "load": load}))
        say(f"  {figures[-1].label}: {figures[-1].value}")
        figures.append(Figure(
            "hk_memory", "memory of each part per 1,000 boards (RSS grown since the boards connected; total)",
            ", ".join(f"{name} {(rss[name] - base_rss[name]) / per_k / 2**20:.1f} MiB ({rss[name] / 2**20:.0f} MiB)"
                      for name in rss), "", None,
            {"rss_mib": {k: round(v / 2**20) for k, v in rss.items()},
             "per_1000_mib": {k: round((rss[k] - base_rss[k]) / per_k / 2**20, 2) for k in rss}}))
        say(f"  {figures[-1].label}: {figures[-1].value}")

        # 3. Presence: boards that die.
        k = min(sizes.killed, n // 10)
        bound = 1.5 * settings.keepalive
        for silent, first in ((True, 0), (False, k)):
            victims = list(range(first, first + k))
            gone = [macs[i] for i in victims]
            fleet.kill(victims, silent=silent)
            took = _until(lambda gone=gone: counter.online(gone) == 0, 60, poll=0.2)  # type: ignore[misc]
            how = "silent (sockets open, nothing sent)" if silent else "sockets closed"
            figures.append(Figure(
                f"hk_presence_{'silent' if silent else 'closed'}", f"presence: {k:,} boards killed at once, {how}",
                (f"all offline in {took:.1f} s" if took is not None else
                 f"{counter.online(gone):,} still online after 60 s") + f"; load {_load()}",
                f"<= {bound + 2.5:g} s (1.5 x keepalive {settings.keepalive} s, Mosquitto's 1 s check, commit)",
                took is not None and took <= bound + 2.5, {"boards": k, "seconds": took, "load": _load()}))
            say(f"  {figures[-1].label}: {figures[-1].value}")
        alive = n - 2 * k

        # 4. A broker restart (SIGTERM: its persistence saved), the boards back with the registration's gate.
        acked_before = fleet.stats()["counters"].acked_led
        broker.stop()
        broker = Broker(settings, stderr=subprocess.DEVNULL, base=base)
        broker.start()
        brokers.append(broker)
        back, restarted = time.monotonic(), time.time()
        # Back: the ingest client connected to the new broker, and every board online in the session it holds.
        reconnected, all_back = _client_back(settings, restarted), _all_back(fleet, counter, alive)
        took = _until(lambda: reconnected() and all_back(), sizes.restart_cap, poll=1.0)
        online = len(fleet.sessions() & counter.sessions())
        fleet.pause(True)
        time.sleep(1)
        acked = fleet.stats()["counters"].acked_led
        stored_led = _stable(counter.led)
        fleet.pause(False)
        figures.append(Figure(
            "hk_restart", (f"central broker restart with {alive:,} boards (they stay on their edge brokers)"
                           if edges is not None else
                           f"broker restart with {alive:,} boards ({sizes.gate} a process waiting for a name)"),
            (f"all back online, each in the session it holds, in {took:.0f} s" if took is not None else
             f"{online:,} of {alive:,} online after {time.monotonic() - back:.0f} s")
            + f"; QoS 1 led/status acknowledged {acked:,} (before the restart {acked_before:,}), stored "
              f"{stored_led:,}; load {_load()}",
            "<= 60 s, nothing lost at QoS 1", took is not None and took <= 60 and stored_led >= acked,
            {"boards": alive, "seconds": took, "online": online, "acked_led": acked, "stored_led": stored_led,
             "load": _load()}))
        say(f"  {figures[-1].label}: {figures[-1].value}")
        restarts = (Path(tmp) / "client.log").read_text(errors="replace").count("restarting it")
        figures.append(Figure("hk_client_restarts", "ingest client restarted by the supervisor (its watchdog)",
                              f"{restarts} time(s)", "0", restarts == 0, {"restarts": restarts}))

        # 5. The power cut: every board reboots and joins at once, as the firmware does (no gate).
        figures.append(_storm(fleet, counter, procs, alive, sizes, lambda: fleet.power_cut(gate=0)))
        say(f"  {figures[-1].label}: {figures[-1].value}")
        engine.dispose()
    return figures


def _storm(fleet: SwarmFleet, counter: Counter, procs: Parts, alive: int, sizes: HundredK,
           cut: Callable[[], None]) -> Figure:
    """The power cut's figure: `cut()` makes every living board join at once; how soon all are online again."""
    seen0 = fleet.stats()["counters"].assigns_seen
    cpu0 = procs.cpu()
    cut()
    started = time.monotonic()
    took = _until(_all_back(fleet, counter, alive), sizes.storm_cap, poll=1.0)
    cpu1 = procs.cpu()
    storm_cpu = {name: 100 * (cpu1[name] - cpu0[name]) / (time.monotonic() - started) for name in cpu1}
    online = len(fleet.sessions() & counter.sessions())
    stats = fleet.stats()
    seen = stats["counters"].assigns_seen - seen0
    hears = "its own name assignment only" if sizes.name_filter else "every name assignment"
    return Figure(
        "hk_storm", f"power cut: {alive:,} known boards joining at once (firmware: every waiting board subscribed "
                    f"to state/nameAssign; the broker delivers it {hears})",
        (f"all online in {took:.0f} s" if took is not None else
         f"{online:,} of {alive:,} online after {time.monotonic() - started:.0f} s")
        + f"; {seen:,} name assignments received by the boards ({stats['counters'].name_timeouts:,} "
          f"name timeouts in all); CPU " + ", ".join(f"{k} {v:.0f} %" for k, v in storm_cpu.items())
        + f"; load {_load()}",
        "<= 60 s", took is not None and took <= 60,
        {"boards": alive, "seconds": took, "online": online, "assigns_received": seen,
         "quadratic": alive * (alive + 1) // 2, "name_filter": sizes.name_filter, "storm_only": sizes.storm_only,
         "cpu_percent": {k: round(v) for k, v in storm_cpu.items()}, "load": _load()})
