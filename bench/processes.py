"""The fleet-browser bench's load and its reference subscriber, each in a process of its own.

In the bench's process, the 2,000 simulated devices (one asyncio loop, about 60 % of a core) shared the GIL with
the probe device that is timed, with the paho subscriber meant as a reference, and with the HTTP client timing the
server: each of them waited for the fleet's loop. Here the fleet runs in a child process (still 2,000 real MQTT
connections, one per device), and so does the subscriber.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from sensorhub.config import Settings
from sensorhub.mqttclient import stop_loop
from sensorhub.protocol import LIVE_CODES, LIVE_TOPIC, Kind

logger = logging.getLogger(__name__)

#: Fresh interpreters: nothing of the bench's threads (Playwright, the probe's loop) is copied into the children.
_CONTEXT = mp.get_context("spawn")


def _fleet_main(settings: Settings, count: int, interval: float, seed: int, name_timeout: float,
                join_timeout: float, joined: Connection, stop: Event) -> None:
    """Run a fleet, send back its devices' (name, session) once all joined, keep it running until `stop`."""
    from sensorhub.simulator import Fleet

    fleet = Fleet(settings, count, interval=interval, button_every=None, seed=seed, name_timeout=name_timeout)
    fleet.start(timeout=30)
    try:
        fleet.wait_joined(join_timeout)
        joined.send([(d.name or "", d.session or "") for d in fleet.devices if d.joined and d.name and d.session])
        stop.wait()
    except BaseException as err:  # the parent waits for an answer: give it the failure
        joined.send(f"{type(err).__name__}: {err}")
        raise
    finally:
        fleet.stop(timeout=180)


class FleetProcess:
    """A fleet of `count` virtual devices publishing every `interval` s, in a child process."""

    def __init__(self, settings: Settings, count: int, interval: float, seed: int, *, name_timeout: float = 60,
                 join_timeout: float = 300) -> None:
        self._stop = _CONTEXT.Event()
        self._answer, child_end = _CONTEXT.Pipe(duplex=False)
        self.process = _CONTEXT.Process(
            target=_fleet_main, name="bench-fleet", daemon=True,
            args=(settings, count, interval, seed, name_timeout, join_timeout, child_end, self._stop))
        self.join_timeout = join_timeout
        #: (session name, session id) of every device that joined.
        self.sessions: list[tuple[str, str]] = []

    def start(self) -> list[tuple[str, str]]:
        """Start the fleet and wait until every device joined; their (session name, session id)."""
        self.process.start()
        if not self._answer.poll(self.join_timeout + 60):
            raise TimeoutError("the fleet's process did not report its joins")
        try:
            answer = self._answer.recv()
        except EOFError as err:
            raise RuntimeError(f"the fleet's process ended (exit code {self.process.exitcode})") from err
        if isinstance(answer, str):
            raise RuntimeError(f"the fleet's process failed: {answer}")
        self.sessions = answer
        return answer

    def stop(self) -> None:
        """Make the devices leave and end the process (if it was started)."""
        _end(self.process, self._stop, 200)


def _subscriber_main(port: int, prefix: bytes, arrivals: Any, counts: Any, ready: Event, stop: Event) -> None:
    """Subscribe to the live feed over WebSockets; put (value, wall-clock ms) of each line starting `prefix`;
    count the messages and readings received (what a page receives)."""

    def on_message(_client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        at = time.time() * 1000
        lines = message.payload.split(b"\n")
        counts[0] += 1
        counts[1] += len(lines)
        for line in lines:
            if line.startswith(prefix):
                arrivals.put((int(line.rsplit(b";", 1)[1]), at))

    client = mqtt.Client(CallbackAPIVersion.VERSION2, transport="websockets", protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.on_subscribe = lambda *_args: ready.set()
    client.connect("127.0.0.1", port)
    client.subscribe(LIVE_TOPIC, 0)
    client.loop_start()
    stop.wait()
    stop_loop(client)
    client.disconnect()


class Subscriber:
    """A paho subscriber to the live feed on the broker's WebSockets port, as the page is, in a process of its
    own: when the probe's readings arrive there (what the ingest client, the broker and the machine add before
    the page)."""

    def __init__(self, settings: Settings, device_id: int) -> None:
        self._arrivals: Any = _CONTEXT.Queue()
        self._ready = _CONTEXT.Event()
        self._stop = _CONTEXT.Event()
        #: Messages and readings received (the subscriber's process counts; read with `rates`).
        self._counts: Any = _CONTEXT.Array("q", 2, lock=False)
        self._since = (0.0, 0, 0)
        prefix = f"{device_id};{LIVE_CODES[Kind.LIGHT]};".encode()
        self.process = _CONTEXT.Process(
            target=_subscriber_main, name="bench-subscriber", daemon=True,
            args=(settings.mqtt_ws_port, prefix, self._arrivals, self._counts, self._ready, self._stop))

    def mark(self) -> None:
        """Start counting rates from now."""
        self._since = (time.monotonic(), self._counts[0], self._counts[1])

    def rates(self) -> tuple[float, float]:
        """Messages and readings received a second since `mark`."""
        started, messages, readings = self._since
        elapsed = max(time.monotonic() - started, 1e-9)
        return (self._counts[0] - messages) / elapsed, (self._counts[1] - readings) / elapsed

    def start(self) -> None:
        """Start the process; return once subscribed."""
        self.process.start()
        if not self._ready.wait(30):
            raise TimeoutError("the reference subscriber did not subscribe")

    def drain(self) -> list[tuple[int, float]]:
        """The (value, wall-clock ms) arrivals since the last call."""
        found = []
        while True:
            try:
                found.append(self._arrivals.get_nowait())
            except queue.Empty:
                return found

    def arrival(self, value: int, after: float, timeout: float = 2.0) -> float | None:
        """The wall-clock ms at which `value` arrived after `after` (ms), waiting up to `timeout` s; None."""
        deadline = time.monotonic() + timeout
        while True:
            for got, at in self.drain():
                if got == value and at >= after:
                    return at
            if time.monotonic() > deadline:
                return None
            time.sleep(0.01)

    def close(self) -> None:
        """End the process (if it was started)."""
        _end(self.process, self._stop, 10)


def _end(process: Any, stop: Event, wait: float) -> None:
    """Ask a started child `process` to stop; terminate it if it has not ended within `wait` s."""
    if process.pid is None:
        return
    stop.set()
    process.join(wait)
    if process.is_alive():
        logger.warning("%s did not end within %s s: terminating it", process.name, wait)
        process.terminate()
        process.join(10)
