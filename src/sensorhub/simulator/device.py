"""One virtual ESP32 speaking the device side of the protocol, on one DeviceClient per connection."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random
import socket
import time
from typing import Final, Literal

from paho.mqtt.enums import MQTTProtocolVersion

from sensorhub.config import Settings
from sensorhub.credentials import DEVICE_USER
from sensorhub.errors import PayloadError, SensorhubError
from sensorhub.protocol import (
    DEVICE_TOPICS,
    QOS,
    NameAssign,
    Topic,
    format_reading,
    format_session_ref,
    normalize_mac,
    parse_led_command,
    parse_name_assign,
)
from sensorhub.simulator.client import DeviceClient, MqttError, Will

logger = logging.getLogger(__name__)

MQTT_VERSIONS: Final = ("5", "3.1.1")
#: Seconds between a button push and its release.
BUTTON_HOLD: Final = 0.2
#: Retry delays after a failure: the first, and the ceiling of the doubling.
BACKOFF_FIRST: Final = 0.5
BACKOFF_MAX: Final = 5.0
#: A session that lasted this long (s) was a success: the next failure starts the backoff from the beginning.
#: A shorter one counts as a failure, so that devices kicked out at once (say, two simulators with the same seed
#: taking over each other's client ids) slow down instead of reconnecting twice a second.
BACKOFF_RESET: Final = 10.0
#: How long a DeviceClient waits for one answer of the broker (CONNACK, SUBACK, PUBACK, PUBCOMP).
CALL_TIMEOUT: Final = 10.0

StopMode = Literal["leave", "crash"]


class SimulatorError(SensorhubError):
    """A virtual device cannot do what was asked."""


class DeviceNotReady(SimulatorError):
    """The device has no session right now (not joined yet, rejoining, or stopped)."""


class BrokerUnreachable(SimulatorError):
    """The broker refused the connection or did not answer it."""


class NoNameAssigned(SimulatorError):
    """No state/nameAssign answered the MAC join in time."""


#: Whose virtual boards: `make run`'s demo and `make simulate` beside it must not share MACs (each would kick the
#: other's boards off the broker, and none would be added).
DEMO = "demo"
SIMULATE = "simulate"


def default_seed(role: str = SIMULATE) -> int:
    """A seed derived from this machine's host name and `role`: a user's devices keep their MACs, hence their
    names, and the demo's differ from `sensorhub simulate`'s."""
    digest = hashlib.sha256(f"{socket.gethostname()}:{role}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def mac_address(seed: int, index: int, attempt: int = 0) -> str:
    """The MAC of device `index` for `seed`: stable, locally administered, unicast, upper case."""
    digest = hashlib.sha256(f"sensorhub-simulator:{seed}:{index}:{attempt}".encode()).digest()
    # Bit 1 of the first octet set: locally administered (never a vendor's); bit 0 clear: unicast.
    octets = bytes([(digest[0] & 0xFC) | 0x02]) + digest[1:6]
    return ":".join(f"{octet:02X}" for octet in octets)


class ProblemLog:
    """Warnings shared by a fleet's devices: at most one line per `period` seconds, counting the others."""

    def __init__(self, period: float = 0.5) -> None:
        self.period = period
        self._last = -math.inf
        self._swallowed = 0

    def warning(self, message: str, *args: object) -> None:
        """Log a warning now, or at debug level if one was logged less than `period` seconds ago."""
        now = time.monotonic()
        if now - self._last < self.period:
            self._swallowed += 1
            logger.debug(message, *args)
            return
        if self._swallowed:
            message += " (and %d similar since the previous message)"
            args = (*args, self._swallowed)
        self._last, self._swallowed = now, 0
        logger.warning(message, *args)


def _describe(err: BaseException) -> str:
    """An MQTT error with its cause: "Disconnected during message iteration" alone says little."""
    text = str(err) or type(err).__name__
    cause = err.__cause__
    return f"{text}: {cause}" if cause is not None and str(cause) else text


async def _cancel(*tasks: asyncio.Task[object]) -> None:
    """Cancel tasks and wait for them, swallowing whatever they end with (it has been handled or logged)."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        # Cancel again until they end: a cancellation that arrives just as an awaited future completes may be
        # swallowed (Python 3.11's asyncio.wait_for does), and the task would carry on.
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: asyncio does not log it as never retrieved


class VirtualDevice:
    """A virtual ESP32: joins, reports its light level, obeys LED commands, presses its button, rejoins.

    `run()` runs it in the current asyncio loop until `leave()` or `crash()`. Its public attributes are plain
    values written only by the loop, so other threads may read them.
    """

    def __init__(
        self,
        settings: Settings,
        index: int,
        mac: str,
        *,
        interval: float = 2.0,
        mqtt_version: str = "5",
        button_every: tuple[float, float] | None = None,
        name_timeout: float = 10.0,
        rng: random.Random | None = None,
        join_gate: asyncio.Semaphore | None = None,
        problems: ProblemLog | None = None,
    ) -> None:
        if mqtt_version not in MQTT_VERSIONS:
            raise ValueError(f"mqtt_version is one of {', '.join(MQTT_VERSIONS)}, not {mqtt_version!r}")
        if not interval > 0:
            raise ValueError("interval must be positive")
        if button_every is not None and not 0 < button_every[0] <= button_every[1]:
            raise ValueError("button_every is (shortest, longest) seconds between presses, 0 < shortest <= longest")
        self.settings = settings
        self.index = index
        self.mac = normalize_mac(mac)
        self.client_id = "sim-" + self.mac.replace(":", "")
        self.interval = interval
        self.mqtt_version = mqtt_version
        self.button_every = button_every
        self.name_timeout = name_timeout
        self.name: str | None = None
        self.session: str | None = None
        self.led = False
        self.button = False
        self.joined = False
        self.stopped = False
        self.sessions = 0
        self.commands_received = 0
        # Messages published per channel. Every key exists from the start, so another thread can copy the
        # dict while the loop counts.
        self.sent: dict[str, int] = {str(topic): 0 for topic in DEVICE_TOPICS}
        self._rng = rng if rng is not None else random.Random(self.mac)
        # The light level drifts slowly around the brightness of the device's "room".
        self._ambient = self._rng.uniform(25.0, 85.0)
        self._level = self._ambient
        self.light = round(self._level)
        self._join_gate = join_gate if join_gate is not None else asyncio.Semaphore(1)
        self._problems = problems if problems is not None else ProblemLog()
        # MQTT 3.1.1 mode behaves like the real firmware, which publishes its joins at QoS 0.
        self._join_qos = 0 if mqtt_version == "3.1.1" else QOS[Topic.JOIN]
        self._protocol = MQTTProtocolVersion.MQTTv311 if mqtt_version == "3.1.1" else MQTTProtocolVersion.MQTTv5
        self._stop = asyncio.Event()
        self._stop_mode: StopMode = "leave"
        self._finished = asyncio.Event()
        self._button_lock = asyncio.Lock()
        self._client: DeviceClient | None = None
        self._silenced = False
        self._running = False
        self._session_started: float | None = None

    def __repr__(self) -> str:
        return f"<VirtualDevice {self.label}>"

    @property
    def label(self) -> str:
        """How logs and errors name this device: index, MAC and, once assigned, name."""
        name = f" {self.name}" if self.name else ""
        return f"#{self.index} {self.mac}{name}"

    @property
    def stop_requested(self) -> bool:
        """Whether leave() or crash() was called."""
        return self._stop.is_set()

    # -- life cycle -------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Live until leave() or crash(): join, report, and start again from the MAC join after a lost connection."""
        if self._running:
            raise RuntimeError(f"device {self.label} is already running")
        self._running = True
        failures = 0
        try:
            while not self._stop.is_set():
                problem: str
                try:
                    await self._live()
                    problem = f"{self.label}: the session ended"
                except BrokerUnreachable as err:
                    problem = str(err)
                except NoNameAssigned as err:
                    problem = f"{self.label}: {err}"
                except (MqttError, SimulatorError, OSError) as err:
                    problem = f"{self.label}: connection lost ({_describe(err)})"
                except Exception:
                    # A bug must not take the other devices of the fleet down with it: log loudly, retry.
                    logger.exception("%s: unexpected error", self.label)
                    problem = f"{self.label}: unexpected error"
                if self._stop.is_set():
                    break
                started, self._session_started = self._session_started, None
                if started is not None and time.monotonic() - started > BACKOFF_RESET:
                    failures = 0
                failures += 1
                # Jitter, so that a fleet that lost the broker does not come back in one burst.
                delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (failures - 1)) * self._rng.uniform(0.75, 1.0)
                self._problems.warning("%s; retrying in %.1f s", problem, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
        finally:
            self.joined = False
            self._client = None
            self.stopped = True
            self._finished.set()

    async def leave(self) -> None:
        """Leave gracefully (state/leave, then DISCONNECT) and stay stopped; return once done."""
        await self._request_stop("leave")

    async def crash(self) -> None:
        """Drop the TCP connection without DISCONNECT, so that the broker publishes the Will; stay stopped."""
        await self._request_stop("crash")

    async def _request_stop(self, mode: StopMode) -> None:
        if not self._stop.is_set():
            self._stop_mode = mode
            self._stop.set()
        if self._running:
            await self._finished.wait()
        else:
            self.stopped = True

    async def _live(self) -> None:
        assign = await self._get_name()
        if assign is not None:
            await self._hold_session(assign)

    async def _connect(self, stack: contextlib.AsyncExitStack, will: Will | None) -> DeviceClient:
        client = DeviceClient(
            self.settings.mqtt_host,
            self.settings.mqtt_port,
            identifier=self.client_id,
            # Boards log in only when the broker asks for it (SENSORHUB_DEVICE_PASSWORD); else anonymous.
            username=DEVICE_USER if self.settings.device_password else None,
            password=self.settings.device_password or None,
            protocol=self._protocol,
            will=will,
            keepalive=self.settings.keepalive,
            timeout=CALL_TIMEOUT,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        where = f"{self.settings.mqtt_host}:{self.settings.mqtt_port}"
        try:
            return await stack.enter_async_context(client)
        except MqttError as err:
            client.discard()
            hint = ""
            if "refused" in str(err):
                hint = " (is it running? `sensorhub broker` starts it)"
            elif "timed out" in str(err) or "before CONNACK" in str(err):
                hint = " (no CONNACK: has the broker reached its connection limit, SENSORHUB_BROKER_MAX_CONNECTIONS?)"
            raise BrokerUnreachable(f"cannot connect to the MQTT broker at {where}: {err}{hint}") from None

    async def _get_name(self) -> NameAssign | None:
        """Steps 1-2: connect, subscribe to state/nameAssign, publish the MAC join, wait for the answer."""
        # The gate bounds how many devices wait for a name at once: each of them receives every assignment.
        async with self._join_gate, contextlib.AsyncExitStack() as stack:
            if self._stop.is_set():
                return None
            client = await self._connect(stack, will=None)
            if self._stop.is_set():
                return None
            # Subscribed (SUBACK received) before the join, so that the answer cannot be missed.
            await client.subscribe(str(Topic.NAME_ASSIGN), qos=QOS[Topic.NAME_ASSIGN])
            listener = asyncio.create_task(self._await_name(client), name=f"name-{self.client_id}")
            try:
                await self._publish(client, Topic.JOIN, self.mac.encode("ascii"), self._join_qos)
                if await self._stop_requested_before(listener):
                    await self._interrupt(client, [], listener)
                    return None
                return listener.result()
            finally:
                await _cancel(listener)

    async def _await_name(self, client: DeviceClient) -> NameAssign:
        own = self.mac.encode("ascii")
        try:
            async with asyncio.timeout(self.name_timeout):
                async for message in client.messages:
                    payload = message.payload
                    if payload[:17].upper() != own:
                        continue  # another device's name
                    try:
                        assign = parse_name_assign(payload)
                    except PayloadError as err:
                        logger.debug("%s: ignored state/nameAssign %r: %s", self.label, payload, err)
                        continue
                    if assign.mac == self.mac:
                        return assign
        except TimeoutError:
            raise NoNameAssigned(
                f"no state/nameAssign within {self.name_timeout:g} s (is the ingest client running?)"
            ) from None
        raise MqttError("the message stream ended")

    async def _hold_session(self, assign: NameAssign) -> None:
        """Steps 3-4: reconnect with the Will, join with name;session, then report and obey until stopped."""
        self.name, self.session = assign.name, assign.session
        ref = format_session_ref(assign.name, assign.session)
        will = Will(str(Topic.LEAVE), ref, qos=QOS[Topic.LEAVE])
        async with contextlib.AsyncExitStack() as stack:
            client = await self._connect(stack, will)
            # Listening from the start: crash() relies on it to see the dropped connection.
            listener = asyncio.create_task(self._obey(client), name=f"obey-{self.client_id}")
            workers: list[asyncio.Task[None]] = []
            try:
                await client.subscribe(str(Topic.LED_COMMAND), qos=QOS[Topic.LED_COMMAND])
                await self._publish(client, Topic.JOIN, ref, self._join_qos)
                # Like a firmware that reports its state on start: the web UI knows the LED from the first moment.
                await self._publish(client, Topic.LED_STATUS, self._reading(int(self.led)), QOS[Topic.LED_STATUS])
                self.joined, self._client, self._session_started = True, client, time.monotonic()
                self.sessions += 1
                logger.info("device %d joined: %s -> %s (session %s)", self.index, self.mac, self.name, self.session)
                workers.append(asyncio.create_task(self._report_light(client), name=f"light-{self.client_id}"))
                if self.button_every is not None:
                    workers.append(asyncio.create_task(self._press_now_and_then(client),
                                                       name=f"button-{self.client_id}"))
                if not await self._stop_requested_before(listener, *workers):
                    for task in (listener, *workers):
                        error = task.exception() if task.done() and not task.cancelled() else None
                        if error is not None:
                            raise error
                    raise MqttError("the session ended")
                await self._interrupt(client, workers, listener, ref)
            finally:
                self.joined, self._client = False, None
                await _cancel(listener, *workers)

    async def _stop_requested_before(self, *tasks: asyncio.Task[object]) -> bool:
        """Wait until a task ends or a stop is requested; True if a stop is requested."""
        stop = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait((*tasks, stop), return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _cancel(stop)
        return self._stop.is_set()

    async def _interrupt(self, client: DeviceClient, workers: list[asyncio.Task[None]],
                         listener: asyncio.Task[object], ref: bytes | None = None) -> None:
        """End the connection as the stop asks: crash drops it; leave publishes state/leave (if joined) first."""
        await _cancel(*workers)  # a press under way ends with its release (see _press)
        if self._stop_mode == "crash":
            if listener.done():
                return  # the connection is already gone
            client.drop()
            # The listener sees the connection close: the client then knows it is disconnected.
            await asyncio.wait((listener,), timeout=CALL_TIMEOUT)
            logger.info("device %d crashed (dropped its connection without DISCONNECT)", self.index)
            return
        if ref is not None:
            async with self._button_lock:
                self._silenced = True  # nothing is published after the leave
                await client.publish(str(Topic.LEAVE), ref, qos=QOS[Topic.LEAVE])
                self.sent[str(Topic.LEAVE)] += 1
            logger.info("device %d left: %s (session %s)", self.index, self.name, self.session)

    # -- behaviour --------------------------------------------------------------------------------------------

    async def _obey(self, client: DeviceClient) -> None:
        async for message in client.messages:
            if not message.matches(str(Topic.LED_COMMAND)):
                continue
            try:
                command = parse_led_command(message.payload)
            except PayloadError as err:
                logger.debug("%s: ignored led/command %r: %s", self.label, message.payload, err)
                continue
            if command.name != self.name or command.session != self.session:
                continue  # another device's, or an old session's
            self.commands_received += 1
            self.led = command.on
            # Confirmed even when the LED was already in that state, so that every web UI shows the truth.
            await self._publish(client, Topic.LED_STATUS, self._reading(int(self.led)), QOS[Topic.LED_STATUS])
        raise MqttError("the message stream ended")

    async def _report_light(self, client: DeviceClient) -> None:
        loop = asyncio.get_running_loop()
        # The first reading comes within one interval, at a random phase: a fleet's readings spread over time,
        # and the server sees the QoS 2 join (delivered on PUBREL) before this device's first QoS 0 reading.
        due = loop.time() + self.interval * self._rng.uniform(0.5, 1.0)
        while True:
            delay = due - loop.time()
            if delay < 0:  # late (an overloaded loop): skip the missed readings rather than burst
                due, delay = loop.time(), 0.0
            await asyncio.sleep(delay)
            self.light = self._drift()
            await self._publish(client, Topic.PHOTORESISTOR_STATUS, self._reading(self.light),
                                QOS[Topic.PHOTORESISTOR_STATUS])
            due += self.interval

    async def _press_now_and_then(self, client: DeviceClient) -> None:
        assert self.button_every is not None
        while True:
            await asyncio.sleep(self._rng.uniform(*self.button_every))
            await self._press(client)

    async def _press(self, client: DeviceClient) -> None:
        async with self._button_lock:
            if self._silenced or client is not self._client:
                raise DeviceNotReady(f"device {self.label} has no session")
            self.button = True
            await self._publish(client, Topic.BUTTON_STATUS, self._reading(1), QOS[Topic.BUTTON_STATUS])
            try:
                await asyncio.sleep(BUTTON_HOLD)
            finally:
                # Released even when the press is interrupted, so the server never keeps a pushed button.
                self.button = False
                await self._publish(client, Topic.BUTTON_STATUS, self._reading(0), QOS[Topic.BUTTON_STATUS])

    def _drift(self) -> int:
        self._level += self._rng.gauss(0.0, 1.5) + 0.05 * (self._ambient - self._level)
        self._level = min(100.0, max(0.0, self._level))
        return round(self._level)

    def _reading(self, value: int) -> bytes:
        assert self.name is not None and self.session is not None
        return format_reading(self.name, self.session, value)

    async def _publish(self, client: DeviceClient, topic: Topic, payload: bytes, qos: int) -> None:
        if self._silenced:
            raise DeviceNotReady(f"device {self.label} has left")
        # Counted as soon as paho has it (the coroutine's first step, before any await): a publish that is
        # cancelled while waiting for its confirmation has still been sent, and the benchmarks count on it.
        self.sent[str(topic)] += 1
        try:
            await client.publish(str(topic), payload, qos=qos)
        except asyncio.CancelledError:
            raise
        except BaseException:
            self.sent[str(topic)] -= 1
            raise

    def _session_client(self) -> DeviceClient:
        client = self._client
        if client is None or not self.joined or self._stop.is_set():
            raise DeviceNotReady(f"device {self.label} has no session right now")
        return client

    # -- actions (tests, benchmarks, Fleet) -------------------------------------------------------------------

    async def press_button(self) -> None:
        """Push the button, hold it BUTTON_HOLD seconds, release it: button/status 1 then 0."""
        await self._press(self._session_client())

    async def set_light(self, value: int) -> None:
        """Publish one light reading of `value` (0-100) now; the slow drift continues from there."""
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
            raise ValueError(f"a light reading is a whole number from 0 to 100, not {value!r}")
        client = self._session_client()
        self._level, self.light = float(value), value
        await self._publish(client, Topic.PHOTORESISTOR_STATUS, self._reading(value), QOS[Topic.PHOTORESISTOR_STATUS])
