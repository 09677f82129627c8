"""Load generator: several processes, each publishing readings for its share of the devices at a set rate."""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.process import BaseProcess

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from sensorhub.mqttclient import stop_loop
from sensorhub.protocol import Topic


@dataclass(frozen=True)
class Share:
    """What one publisher process sends."""

    port: int
    devices: tuple[tuple[str, str], ...]  # (session name, session id)
    per_device: int
    rate: float  # messages per second for this process (0: as fast as possible)
    qos: int
    topic: str = Topic.PHOTORESISTOR_STATUS
    #: Each device's values, cycled (parallel to `devices`); empty: 0 to 100 and again, for every device.
    values: tuple[tuple[int, ...], ...] = ()


def _publish(share: Share, results: mp.Queue[tuple[int, float, float]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(2000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", share.port, keepalive=30)
    client.loop_start()
    while not client.is_connected():
        time.sleep(0.01)
    prefixes = [f"{name};{session};".encode() for name, session in share.devices]
    ramp = tuple(str(v).encode() for v in range(101))
    cycles = [tuple(str(v).encode() for v in seq) for seq in share.values] or [ramp] * len(prefixes)
    start = time.perf_counter()
    sent = 0
    chunk = max(1, int(share.rate / 200)) if share.rate else 500
    for number in range(share.per_device):
        for prefix, cycle in zip(prefixes, cycles, strict=True):
            client.publish(share.topic, prefix + cycle[number % len(cycle)], share.qos)
            sent += 1
            if sent % chunk == 0:
                if share.rate:
                    ahead = start + sent / share.rate - time.perf_counter()
                    if ahead > 0:
                        time.sleep(ahead)
                elif share.qos:
                    while len(client._out_messages) > 20_000:
                        time.sleep(0.001)
    published = time.perf_counter()
    if share.qos:
        while client._out_messages:
            time.sleep(0.01)
    acknowledged = time.perf_counter()
    client.disconnect()
    stop_loop(client)
    results.put((sent, published - start, acknowledged - start))


def publish(shares: list[Share]) -> tuple[int, float, float]:
    """Run one process per share; return (messages sent, seconds to publish, seconds until all acknowledged)."""
    context = mp.get_context("spawn")
    results: mp.Queue[tuple[int, float, float]] = context.Queue()
    processes = [context.Process(target=_publish, args=(share, results)) for share in shares]
    try:
        for process in processes:
            process.start()
        outcomes = [_result(results, processes) for _ in processes]
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()  # interrupted, or a publisher failed: none is left publishing
            if process.pid is not None:
                process.join()
    return sum(o[0] for o in outcomes), max(o[1] for o in outcomes), max(o[2] for o in outcomes)


def _result(results: mp.Queue[tuple[int, float, float]], processes: list[BaseProcess]) -> tuple[int, float, float]:
    """The next publisher's result; RuntimeError as soon as one died without giving it."""
    while True:
        try:
            return results.get(timeout=1)
        except queue.Empty:
            dead = [p for p in processes if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a publisher process exited with status {dead[0].exitcode}") from None


def split(port: int, devices: list[tuple[str, str]], per_device: int, rate: float, qos: int,
          processes: int, values: Mapping[str, tuple[int, ...]] | None = None,
          topic: str = Topic.PHOTORESISTOR_STATUS) -> list[Share]:
    """Share the devices between `processes` publishers; `values`: each device's values by name (default: the
    0-100 ramp)."""
    groups = [tuple(devices[i::processes]) for i in range(processes)]
    return [Share(port, group, per_device, rate * len(group) / len(devices), qos, topic,
                  tuple(values[name] for name, _session in group) if values is not None else ())
            for group in groups if group]


def count_readings(port: int, user: str, password: str, qos: int, expected: int, idle: float,
                   out: mp.Queue[tuple[str, float]]) -> None:
    """A paho subscriber that only counts light readings (the target of a process of its own, as a worker would
    be: here, so that the process imports paho and not the bench's stack, SQLAlchemy and all).

    Puts ("ready", 0) once subscribed, then ("done", received) and ("last", when the last one arrived) once it
    received `expected`, or nothing more for `idle` seconds after the first.
    """
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, password)
    received = 0
    last = 0.0

    def on_message(_c: mqtt.Client, _u: object, _m: mqtt.MQTTMessage) -> None:
        nonlocal received, last
        received += 1
        last = time.time()

    client.on_message = on_message
    client.on_subscribe = lambda *_args: out.put(("ready", 0.0))
    client.on_connect = lambda c, *_args: c.subscribe(Topic.PHOTORESISTOR_STATUS, qos)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    deadline = time.monotonic() + 600
    while received < expected and time.monotonic() < deadline:
        time.sleep(0.05)
        if received and time.time() - last > idle:
            break  # nothing more for `idle` seconds: the rest was lost
    client.disconnect()
    stop_loop(client)
    out.put(("done", float(received)))
    out.put(("last", last))
