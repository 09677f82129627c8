"""Footprint of `make run DEMO=0`: memory and CPU of each process, idle and with 100 devices at 1 reading/s.

`sensorhub run --demo 0` is started as `make run` starts it (on free ports and a temporary database); the
virtual devices run in this process, outside the measured tree. Memory is given as RSS (what `ps` and `top`
show) and PSS (proportional set size: pages shared between processes, as gunicorn's forked workers share the
app, counted once in total); the total that matters is the PSS sum.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.ports import free_port
from bench.scenarios import Figure, Sizes
from bench.stack import NO_FLOOD_LIMITS, raise_open_files
from sensorhub.config import Settings
from sensorhub.process import Child
from sensorhub.simulator import Fleet

MIB = 2**20
#: Targets of issue 14 for the idle stack.
IDLE_MIB = 160
IDLE_CPU_PERCENT = 2.0


@dataclass
class Sample:
    """One process over a window."""

    label: str
    rss: float  # MiB
    pss: float  # MiB
    cpu: float  # % of one core


def _command(process: psutil.Process) -> str | None:
    """The sensorhub subcommand a process runs (`run`, `web`...), "mosquitto", or None."""
    try:
        argv = process.cmdline()
    except psutil.Error:
        return None
    if argv and Path(argv[0]).name == "mosquitto":
        return "mosquitto"
    if "sensorhub" in argv:
        rest = argv[argv.index("sensorhub") + 1:]
        return rest[0] if rest else None
    return None


def _label(process: psutil.Process) -> str:
    command = _command(process)
    if command == "web":  # the watcher forks gunicorn's master, which forks the workers
        parent = process.parent()
        depth = 0
        while parent is not None and _command(parent) == "web":
            depth, parent = depth + 1, parent.parent()
        return ("web: watcher", "web: gunicorn master", "web: gunicorn worker")[min(depth, 2)]
    if command == "run":
        return "sensorhub run (supervisor)"
    if command is None:
        return process.name()
    return command if command == "mosquitto" else f"sensorhub {command}"


def _tree(root: psutil.Process) -> list[psutil.Process]:
    return [root, *root.children(recursive=True)]


def measure(root: psutil.Process, seconds: float) -> list[Sample]:
    """Memory at the end and CPU over `seconds` of every process of the tree."""
    processes = _tree(root)
    before = {}
    for process in processes:
        try:
            times = process.cpu_times()
            before[process.pid] = times.user + times.system
        except psutil.Error:
            continue
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    samples = []
    for process in processes:
        try:
            times = process.cpu_times()
            memory = process.memory_full_info()
            label = _label(process)
        except psutil.Error:
            continue
        cpu = (times.user + times.system - before.get(process.pid, times.user + times.system)) / elapsed * 100
        samples.append(Sample(label, memory.rss / MIB, getattr(memory, "pss", memory.rss) / MIB, cpu))
    return sorted(samples, key=lambda sample: sample.label)


def _settings(directory: Path) -> Settings:
    return Settings().replace(
        database_url=f"sqlite:///{directory / 'db.sqlite3'}", mqtt_port=free_port(), mqtt_ws_port=free_port(),
        web_port=free_port(), web_host="127.0.0.1", fifo=str(directory / "led.fifo"),
        broker_log=str(directory / "mosquitto.log"), state_dir=str(directory / "var"), broker_max_connections=-1,
        **NO_FLOOD_LIMITS,  # 100 new devices joining at once
    )


def table(title: str, samples: list[Sample]) -> str:
    """The samples as lines of text, with the totals."""
    lines = [title, f"  {'process':<28} {'RSS MiB':>8} {'PSS MiB':>8} {'CPU %':>6}"]
    lines += [f"  {s.label:<28} {s.rss:8.1f} {s.pss:8.1f} {s.cpu:6.2f}" for s in samples]
    lines.append(f"  {'total':<28} {sum(s.rss for s in samples):8.1f} {sum(s.pss for s in samples):8.1f} "
                 f"{sum(s.cpu for s in samples):6.2f}")
    return "\n".join(lines)


@dataclass
class Totals:
    """A window's processes and their sums."""

    samples: list[Sample]

    @property
    def pss(self) -> float:
        return round(sum(s.pss for s in self.samples), 1)

    @property
    def rss(self) -> float:
        return round(sum(s.rss for s in self.samples), 1)

    @property
    def cpu(self) -> float:
        return round(sum(s.cpu for s in self.samples), 2)

    def data(self) -> dict[str, object]:
        return {"processes": [{"process": s.label, "rss_mib": round(s.rss, 1), "pss_mib": round(s.pss, 1),
                               "cpu_percent": round(s.cpu, 2)} for s in self.samples],
                "rss_mib": self.rss, "pss_mib": self.pss, "cpu_percent": self.cpu}


def footprint(sizes: Sizes, say: Callable[[str], None] = print) -> list[Figure]:
    """`sensorhub run --demo 0` idle, then with sizes.devices devices at 1/s: each process's memory and CPU."""
    raise_open_files()
    window = sizes.footprint_seconds
    with tempfile.TemporaryDirectory(prefix="sensorhub-footprint-") as tmp:
        settings = _settings(Path(tmp))
        run = Child("run", [sys.executable, "-m", "sensorhub", "run", "--demo", "0"],
                    env={**os.environ, **settings.environ()}, cwd=Path(tmp))
        run.start()
        try:
            run.wait_ready(120)
            root = psutil.Process(run.pid)
            time.sleep(sizes.footprint_settle)  # start-up work (imports, first queries) is over
            idle = Totals(measure(root, window))
            fleet = Fleet(settings, sizes.devices, interval=1.0, button_every=None, seed=9)
            fleet.start()
            try:
                fleet.wait_joined(60)
                time.sleep(sizes.footprint_settle)
                loaded = Totals(measure(root, window))
            finally:
                fleet.stop()
        finally:
            run.stop(60)
    say(table(f"`sensorhub run --demo 0`, idle ({window:g} s):", idle.samples))
    say(table(f"... with {sizes.devices} devices at 1 reading/s ({window:g} s):", loaded.samples))
    return [
        Figure("footprint_idle", f"`sensorhub run --demo 0` idle, {len(idle.samples)} processes",
               f"PSS {idle.pss} MiB (RSS {idle.rss}), CPU {idle.cpu} % of a core",
               f"<= {IDLE_MIB} MiB, <= {IDLE_CPU_PERCENT:g} %", idle.pss <= IDLE_MIB and idle.cpu <= IDLE_CPU_PERCENT,
               idle.data()),
        Figure("footprint_loaded", f"... with {sizes.devices} devices at 1 reading/s",
               f"PSS {loaded.pss} MiB (RSS {loaded.rss}), CPU {loaded.cpu} % of a core", "", None, loaded.data()),
    ]
