"""A fleet of virtual devices in one asyncio loop, driven from other threads or from the command line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

from sensorhub.config import Settings
from sensorhub.process import notify
from sensorhub.simulator.device import MQTT_VERSIONS, ProblemLog, VirtualDevice, default_seed, mac_address

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How many devices may wait for their name at once (each of them receives every state/nameAssign).
JOIN_CONCURRENCY: Final = 16
#: How long a call from another thread (press_button, leave...) may take.
CALL_TIMEOUT: Final = 30.0


def unique_macs(seed: int, count: int) -> list[str]:
    """`count` distinct MAC addresses, stable for `seed`."""
    macs: list[str] = []
    seen: set[str] = set()
    for index in range(count):
        attempt = 0
        mac = mac_address(seed, index)
        while mac in seen:  # 46 random bits: a collision is very unlikely, but must not happen
            attempt += 1
            mac = mac_address(seed, index, attempt)
        seen.add(mac)
        macs.append(mac)
    return macs


def raise_open_file_limit(wanted: int) -> None:
    """Raise the soft limit on open files towards `wanted` (a device holds one socket, two while joining)."""
    try:
        import resource
    except ImportError:  # not a Unix
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    if new < wanted:
        logger.warning("only %d files may be open at once, not all devices may connect (raise `ulimit -n`)", new)


class Fleet:
    """Virtual devices sharing one asyncio loop: `start()` runs it in a background thread, `run()` in yours."""

    def __init__(
        self,
        settings: Settings,
        count: int = 3,
        interval: float = 2.0,
        mqtt_version: str = "5",
        seed: int | None = None,
        button_every: tuple[float, float] | None = (10.0, 30.0),
        *,
        name_timeout: float = 10.0,
        join_concurrency: int = JOIN_CONCURRENCY,
    ) -> None:
        if count < 1:
            raise ValueError("a fleet has at least one device")
        if mqtt_version not in MQTT_VERSIONS:
            raise ValueError(f"mqtt_version is one of {', '.join(MQTT_VERSIONS)}, not {mqtt_version!r}")
        self.settings = settings
        self.interval = interval
        self.mqtt_version = mqtt_version
        self.seed = default_seed() if seed is None else seed
        # Created outside any loop: asyncio binds them to the loop that first waits on them, the fleet's.
        self._join_gate = asyncio.Semaphore(join_concurrency)
        self._stopping = asyncio.Event()
        problems = ProblemLog()
        self.devices: list[VirtualDevice] = [
            VirtualDevice(
                settings, index, mac, interval=interval, mqtt_version=mqtt_version, button_every=button_every,
                name_timeout=name_timeout, rng=random.Random(f"{self.seed}:{index}"), join_gate=self._join_gate,
                problems=problems,
            )
            for index, mac in enumerate(unique_macs(self.seed, count))
        ]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._ran = False
        self.error: BaseException | None = None

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- in the loop ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run every device in the running loop until stop is requested; then they all leave gracefully."""
        if self._ran:
            raise RuntimeError("a Fleet runs once: make a new one")
        self._ran = True
        self._loop = asyncio.get_running_loop()
        raise_open_file_limit(2 * len(self.devices) + 100)
        tasks = [asyncio.create_task(device.run(), name=f"sim-device-{device.index}") for device in self.devices]
        self._ready.set()
        try:
            await self._stopping.wait()
            await asyncio.gather(*(device.leave() for device in self.devices))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def request_stop(self) -> None:
        """Ask the fleet to stop (all devices leave gracefully); from any thread, returns at once."""
        loop = self._loop
        if loop is None:
            self._stopping.set()  # not running yet: no loop is bound to the event, a run() would end at once
            return
        with contextlib.suppress(RuntimeError):  # the loop has already ended
            loop.call_soon_threadsafe(self._stopping.set)

    # -- from other threads -----------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Run the fleet's loop in a background thread; return once the devices are starting."""
        if self._thread is not None or self._ran:
            raise RuntimeError("a Fleet starts once: make a new one")
        self._thread = threading.Thread(target=self._thread_main, name="sensorhub-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the simulator's loop did not start within {timeout:g} s")
        if self.error is not None:
            raise RuntimeError("the simulator's loop failed to start") from self.error

    def _thread_main(self) -> None:
        try:
            asyncio.run(self.run())
        except BaseException as err:
            self.error = err
            logger.exception("the simulator's loop failed")
        finally:
            self._ready.set()

    def stop(self, timeout: float = CALL_TIMEOUT) -> None:
        """Make the remaining devices leave gracefully, end the loop and join its thread."""
        self.request_stop()
        thread = self._thread
        if thread is None:
            return
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"the simulator did not stop within {timeout:g} s")

    def wait_joined(self, timeout: float = 10.0) -> None:
        """Wait until every device not asked to stop has published its name;session join."""
        deadline = time.monotonic() + timeout
        while True:
            waiting = [d for d in self.devices if not d.joined and not d.stopped and not d.stop_requested]
            if not waiting:
                return
            if self._thread is not None and not self._thread.is_alive():
                raise RuntimeError("the simulator's loop has ended") from self.error
            if time.monotonic() >= deadline:
                shown = ", ".join(device.label for device in waiting[:10])
                more = f" and {len(waiting) - 10} more" if len(waiting) > 10 else ""
                raise TimeoutError(
                    f"{len(waiting)} of {len(self.devices)} device(s) did not join within {timeout:g} s: {shown}{more}"
                )
            time.sleep(0.02)

    def _call(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float = CALL_TIMEOUT) -> T:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            raise RuntimeError("the fleet is not running (call start() first)")
        if threading.current_thread() is thread:
            raise RuntimeError("called from the fleet's own loop: await the device's coroutine instead")
        future = asyncio.run_coroutine_threadsafe(make(), loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def press_button(self, i: int) -> None:
        """Device `i` pushes its button and releases it ~200 ms later (button/status 1 then 0)."""
        self._call(self.devices[i].press_button)

    def set_light(self, i: int, value: int) -> None:
        """Device `i` publishes the light reading `value` (0-100) now."""
        device = self.devices[i]
        self._call(lambda: device.set_light(value))

    def leave(self, i: int) -> None:
        """Device `i` publishes state/leave, disconnects, and stays stopped."""
        self._call(self.devices[i].leave)

    def crash(self, i: int) -> None:
        """Device `i` drops its TCP connection without DISCONNECT (the broker fires its Will), stays stopped."""
        self._call(self.devices[i].crash)


async def _run_until_signalled(fleet: Fleet) -> None:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    received = 0

    def on_signal(signum: int) -> None:
        nonlocal received
        received += 1
        if received == 1:
            logger.info("%s: the devices leave the network (again to quit at once)", signal.Signals(signum).name)
            fleet.request_stop()
        elif main is not None:
            main.cancel()

    installed: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread, or not Unix: stop with request_stop()
    # Ready once the devices start (fleet.run creates their tasks before it first waits).
    loop.call_soon(notify, "READY=1")
    try:
        await fleet.run()
    except asyncio.CancelledError:
        if received < 2:
            raise
        logger.warning("stopped without waiting for every device to leave")
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def run_simulator(
    settings: Settings,
    devices: int = 3,
    interval: float = 2.0,
    mqtt_version: str = "5",
    seed: int | None = None,
) -> None:
    """Run virtual devices until Ctrl-C or SIGTERM, then make them leave gracefully (blocking)."""
    fleet = Fleet(settings, count=devices, interval=interval, mqtt_version=mqtt_version, seed=seed)
    logger.info("simulating %d device(s) speaking MQTT %s to %s:%d, a light reading every %g s "
                "(seed %d: the same MAC addresses on every run); Ctrl-C stops them",
                devices, mqtt_version, settings.mqtt_host, settings.mqtt_port, interval, fleet.seed)
    limit = settings.broker_max_connections
    if limit != -1 and devices > limit:
        logger.warning("a broker started by sensorhub accepts %d connections: %d devices need "
                       "SENSORHUB_BROKER_MAX_CONNECTIONS=-1 (or more) when it starts", limit, devices)
    asyncio.run(_run_until_signalled(fleet))
    logger.info("simulator stopped")
