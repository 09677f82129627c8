"""`make bench BENCH_ARGS="--scenario scale-out"`: sensorhub's stored rate against what a bare subscriber receives.

For each database (SQLite, and PostgreSQL when its server binaries are installed) and QoS (0, 1), on the same
machine in the same run: a bare paho subscriber that only counts, then `mosquitto_sub`, each on a broker of its
own receiving the same burst of readings; then sensorhub (broker and one ingest client) storing it. Each rate
is readings over the time from the first publish to the last one received (stored); sensorhub's is printed
as a fraction of both. Sensorhub runs with one ingest worker (plain subscriptions) and with two (MQTT 5
shared subscriptions `$share/sensorhub/…`, `sensorhub run --workers 2`), each on a database of its own; the quick
run (the test suite's smoke run) with two only: one worker's path is what every other ingest scenario's smoke run
proves loses nothing, on both databases.
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

from bench.loadgen import count_readings, publish, split
from bench.scenarios import Figure, Load, total, wait_stable
from bench.stack import Stack
from sensorhub.credentials import CLIENT_USER, client_password
from sensorhub.protocol import Topic


@dataclass(frozen=True)
class ScaleSizes:
    """How big the scale-out runs are."""

    readings: int = 100_000
    devices: int = 100
    publishers: int = 4
    timeout: float = 300.0
    #: Ingest workers sensorhub runs with, each configuration on a stack and a database of its own.
    workers: tuple[int, ...] = (1, 2)
    #: Both QoS on one stack per configuration, the second counting from where the first left off (the smoke run:
    #: it proves each runs and loses nothing; a stack with two workers is 2 s of CPU).
    one_stack: bool = False


SCALE_FULL = ScaleSizes()
SCALE_QUICK = ScaleSizes(readings=2_000, devices=10, publishers=1, timeout=60.0, workers=(2,),
                         one_stack=True)
#: Load devices for the bare subscribers: any name and session do, nobody checks them.
_FAKE = [(f"bench{i:03d}", f"1700000000.{i:06d}") for i in range(1000)]


def bare_paho(sizes: ScaleSizes, qos: int) -> tuple[int, float]:
    """(received, seconds) for a bare paho subscriber on a broker of its own."""
    with Stack(components=("broker",)) as stack:
        context = mp.get_context("spawn")
        out: mp.Queue[tuple[str, float]] = context.Queue()
        counter = context.Process(target=count_readings, args=(stack.settings.mqtt_port, CLIENT_USER,
                                                               client_password(stack.settings), qos,
                                                               sizes.readings, 5.0, out))
        counter.start()
        try:
            if out.get(timeout=30)[0] != "ready":
                raise RuntimeError("the bare subscriber did not subscribe")
            start = time.time()
            _send(stack, sizes, qos, _FAKE[:sizes.devices])
            received = int(out.get(timeout=sizes.timeout)[1])
            last = out.get(timeout=10)[1]
        finally:
            counter.join(30)
            if counter.is_alive():
                counter.terminate()
        return received, max(last - start, 1e-6)


def bare_mosquitto_sub(sizes: ScaleSizes, qos: int) -> tuple[int, float]:
    """(received, seconds) for `mosquitto_sub` on a broker of its own."""
    program = shutil.which("mosquitto_sub")
    if program is None:
        raise RuntimeError("mosquitto_sub is missing: sudo apt-get install mosquitto-clients")
    with Stack(components=("broker",)) as stack:
        output = stack.dir / "received.txt"
        command = [program, "-h", "127.0.0.1", "-p", str(stack.settings.mqtt_port), "-V", "5", "-u", CLIENT_USER,
                   "-P", client_password(stack.settings), "-t", Topic.PHOTORESISTOR_STATUS, "-q", str(qos),
                   "-C", str(sizes.readings), "-W", str(int(sizes.timeout))]
        with output.open("wb") as sink:
            subscriber = subprocess.Popen(command, stdout=sink, stderr=subprocess.DEVNULL)
            try:
                _wait_subscribed(stack)
                start = time.monotonic()
                _send(stack, sizes, qos, _FAKE[:sizes.devices])
                subscriber.wait(sizes.timeout + 10)
                seconds = time.monotonic() - start
            finally:
                if subscriber.poll() is None:
                    subscriber.kill()
                    subscriber.wait()
        received = output.read_bytes().count(b"\n")
        return received, seconds


def _wait_subscribed(stack: Stack, timeout: float = 10.0) -> None:
    """Until the broker's log shows a subscription of `mosquitto_sub` (it prints no other sign)."""
    log = stack.settings.broker_log
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(log, errors="replace") as handle:
                if f"u'{CLIENT_USER}'" in handle.read():  # "New client connected ... (p5, c1, k60, u'sensorhub')"
                    break
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    time.sleep(0.5)  # from the connection to the subscription: a round trip or two


def _send(stack: Stack, sizes: ScaleSizes, qos: int, devices: list[tuple[str, str]]) -> int:
    per_device = sizes.readings // len(devices)
    sent, _published, _acked = publish(split(stack.settings.mqtt_port, devices, per_device, 0, qos,
                                             sizes.publishers))
    return sent


def sensorhub_stored(sizes: ScaleSizes, qos: int, database_url: str | None, workers: int = 1,
                     on: tuple[Stack, Load] | None = None) -> tuple[int, float, int]:
    """(stored, seconds, sent) for sensorhub: the broker and `workers` ingest clients storing the burst, on a
    stack of its own (or `on` a running one, counting from where it is)."""
    with ExitStack() as scope:
        if on is None:
            stack = scope.enter_context(Stack(components=("broker", "client"), database_url=database_url,
                                              workers=workers))
            load = scope.enter_context(Load(stack, sizes.devices))
        else:
            stack, load = on
        before = stack.exact_total()
        fast_before = total(stack)
        start = time.monotonic()
        sent = _send(stack, sizes, qos, load.sessions)
        _stored, done = wait_stable(lambda: total(stack) - fast_before, sent, timeout=sizes.timeout, quiet=10.0)
        stored = stack.exact_total() - before
        return stored, max(done - start, 1e-6), sent


def scale_out(sizes: ScaleSizes, databases: list[tuple[str, Callable[[], str | None]]],
              say: Callable[[str], None]) -> list[Figure]:
    """One figure per database and QoS."""
    figures = []
    for label, new_database in databases:
        with ExitStack() as kept:
            figures += _scale_out_on(sizes, label, new_database, say, kept)
    return figures


def _scale_out_on(sizes: ScaleSizes, label: str, new_database: Callable[[], str | None],
                  say: Callable[[str], None], kept: ExitStack) -> list[Figure]:
    """The figures of one database; with `sizes.one_stack`, each configuration's stack kept in `kept`."""
    figures = []
    stacks: dict[int, tuple[Stack, Load]] = {}
    for qos in (0, 1):
        say(f"scale-out on {label}, QoS {qos}: bare paho subscriber ...")
        paho_received, paho_s = bare_paho(sizes, qos)
        say(f"  {paho_received:,} in {paho_s:.1f} s; mosquitto_sub ...")
        sub_received, sub_s = bare_mosquitto_sub(sizes, qos)
        paho_rate, sub_rate = paho_received / paho_s, sub_received / sub_s
        say(f"  {sub_received:,} in {sub_s:.1f} s")
        for workers in sizes.workers:
            say(f"  sensorhub, {workers} worker(s) ...")
            if sizes.one_stack and workers not in stacks:
                stack = kept.enter_context(Stack(components=("broker", "client"), database_url=new_database(),
                                                 workers=workers))
                stacks[workers] = (stack, kept.enter_context(Load(stack, sizes.devices)))
            stored, seconds, sent = sensorhub_stored(sizes, qos, None if sizes.one_stack else new_database(),
                                                     workers, stacks.get(workers))
            rate = stored / seconds
            lost = max(0, sent - stored)
            if workers == 1:
                target, ok = (">= 0.8 of paho (SQLite)", rate >= 0.8 * paho_rate) if label == "SQLite" else \
                    (">= 10,000/s, 0 lost", rate >= 10_000 and lost == 0)
            else:
                target, ok = "0 lost", lost == 0
            figures.append(Figure(
                f"scale_out_{label.lower()}_{workers}w_qos{qos}",
                f"scale-out, {label}, {workers} worker{'s' if workers > 1 else ''}, {sent:,} readings, QoS {qos}",
                f"{rate:,.0f}/s stored, {lost} lost = {rate / paho_rate:.2f} of paho ({paho_rate:,.0f}/s), "
                f"{rate / sub_rate:.2f} of mosquitto_sub ({sub_rate:,.0f}/s)",
                target, ok,
                {"workers": workers, "stored_per_s": round(rate), "lost": lost, "sent": sent,
                 "paho_per_s": round(paho_rate), "paho_received": paho_received,
                 "mosquitto_sub_per_s": round(sub_rate), "mosquitto_sub_received": sub_received,
                 "fraction_of_paho": round(rate / paho_rate, 3),
                 "fraction_of_mosquitto_sub": round(rate / sub_rate, 3)},
            ))
            say(f"  {figures[-1].value}")
    return figures

