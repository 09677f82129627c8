"""A small asyncio MQTT client for the simulator's boards, on paho's public external-loop API only.

Hundreds of these share one event loop, so three things are done with care:

1. Sockets are registered with the loop only from the loop's own thread, and only the socket paho holds at that
   moment: the blocking TCP connect runs in an executor thread with no socket callbacks set, and the reader is
   added once it returns. A closed file descriptor (or one another device's socket already reuses) is never
   handed to the loop.
2. A publish is written in the loop's next step rather than through the socket's writability: no wake-up of the
   loop and no two epoll changes per message (with 2,000 devices at 1 reading/s, those were a quarter of the
   simulator's CPU). Only what the socket's buffer does not take waits for it to be writable.
3. paho 2.2 refreshes its "last message out" time only when it pings, and while DISCONNECT waits to be written
   its keepalive check (loop_misc) would close the socket without it, and the broker would publish the Will of a
   device that left cleanly. The keepalive task stops before DISCONNECT is queued.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from sensorhub.errors import SensorhubError

logger = logging.getLogger(__name__)

#: Seconds between two looks at a client's keepalive (paho's loop_misc).
MISC_PERIOD: Final = 1.0

#: (level, option, value), as socket.setsockopt takes them.
SocketOption = tuple[int, int, int]


class MqttError(SensorhubError):
    """The MQTT connection could not be made, was refused or lost, or the broker did not answer in time."""


@dataclass(frozen=True, slots=True)
class Will:
    """The message the broker publishes when the connection drops without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Message:
    """A message received on a subscription."""

    topic: str
    payload: bytes
    qos: int
    retain: bool

    def matches(self, subscription: str) -> bool:
        """Whether the topic matches `subscription` (which may hold + and # wildcards)."""
        return mqtt.topic_matches_sub(subscription, self.topic)


def _describe(code: ReasonCode | MQTTErrorCode | int) -> str:
    """A reason code or paho error as one short text: "[code:135] Not authorized"."""
    if isinstance(code, ReasonCode):
        return f"[code:{code.value}] {code}"
    return f"[code:{int(code)}] {mqtt.error_string(code)}"


class DeviceClient:
    """One MQTT connection driven by the running asyncio loop: `async with` connects (CONNACK received) and
    disconnects (DISCONNECT written); subscribe and publish wait for the broker's answer; `messages` yields what
    the subscriptions receive and raises MqttError once the connection is gone."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        identifier: str,
        username: str | None = None,
        password: str | None = None,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
        will: Will | None = None,
        keepalive: int = 60,
        timeout: float = 10.0,
        socket_options: Iterable[SocketOption] = (),
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.identifier = identifier
        self._host, self._port, self._keepalive, self.timeout = host, port, keepalive, timeout
        self._socket_options = tuple(socket_options)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=identifier, protocol=protocol,
                             reconnect_on_failure=False)
        if username is not None:
            client.username_pw_set(username, password)
        if will is not None:
            client.will_set(will.topic, will.payload, will.qos, will.retain)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._client = client
        self._connack: asyncio.Future[None] | None = None
        self._connected = False
        self._refused: MqttError | None = None  # a negative CONNACK
        self._gone = False  # the connection ended (or was never made)
        self._lost: MqttError | None = None  # why it ended, unless on purpose
        self._gone_waiter: asyncio.Future[None] | None = None
        # Futures of the subscriptions and QoS>0 publishes waiting for their answer, by message id (paho takes
        # both from one counter), and of the QoS 0 publishes waiting to be written.
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._queue: collections.deque[Message] = collections.deque()
        self._message_waiter: asyncio.Future[None] | None = None
        self._misc_task: asyncio.Task[None] | None = None
        self._entered = False

    # -- connection -------------------------------------------------------------------------------------------

    async def __aenter__(self) -> DeviceClient:
        """Connect and wait for a positive CONNACK."""
        if self._entered:
            raise RuntimeError("a DeviceClient connects once")
        self._entered = True
        self._connack = self._loop.create_future()
        connecting = self._loop.run_in_executor(None, self._connect_blocking)
        try:
            await asyncio.shield(connecting)
        except asyncio.CancelledError:
            # The connection may still open in the thread: close it once it has.
            connecting.add_done_callback(self._abandon)
            raise
        except (OSError, ValueError, mqtt.WebsocketConnectionError) as err:
            self._gone = True
            raise MqttError(str(err)) from None
        self._attach()
        try:
            async with asyncio.timeout(self.timeout):
                await self._connack
        except TimeoutError:
            raise MqttError("Operation timed out") from None
        if self._gone:
            raise MqttError("the connection closed before CONNACK" + (f" ({self._lost})" if self._lost else ""))
        if self._refused is not None:
            raise self._refused
        self._connected = True
        self._misc_task = self._loop.create_task(self._misc_loop(), name=f"misc-{self.identifier}")
        return self

    def _abandon(self, connecting: asyncio.Future[None]) -> None:
        if not connecting.cancelled():
            connecting.exception()  # retrieved: asyncio does not log it as never retrieved
        self.discard()

    def _connect_blocking(self) -> None:
        """Open the TCP connection and queue CONNECT (in an executor thread: connect() blocks)."""
        # No socket callbacks yet: paho writes CONNECT itself, in this thread, and the loop is told of the socket
        # by _attach, in its own thread, once this returns.
        self._client.on_socket_open = self._set_socket_options
        self._client.connect(self._host, self._port, self._keepalive)

    def _set_socket_options(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if isinstance(sock, socket.socket):
            for option in self._socket_options:
                sock.setsockopt(*option)

    def _attach(self) -> None:
        """Hand the socket paho holds now to the loop, and take over its writes from here on."""
        client = self._client
        client.on_socket_open = None
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        sock = client.socket()
        if sock is None:
            self._set_gone(None)
            return
        self._loop.add_reader(sock, self._on_readable)
        if client.want_write():  # CONNECT did not fit in the socket's buffer at once
            self._loop.add_writer(sock, self._on_writable)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Disconnect: DISCONNECT written, then the socket closed, with paho's keepalive check out of the way."""
        await self._stop_misc()
        if self._gone:
            return
        waiter = self._gone_waiter = self._loop.create_future()
        if self._client.disconnect() != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._close()
            return
        try:
            async with asyncio.timeout(self.timeout):
                await waiter
        except TimeoutError:
            logger.debug("%s: DISCONNECT not written in time, closing", self.identifier)
            self._close()

    async def _stop_misc(self) -> None:
        task, self._misc_task = self._misc_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _misc_loop(self) -> None:
        while self._client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS:
            await asyncio.sleep(MISC_PERIOD)

    def drop(self) -> None:
        """Close the TCP connection without DISCONNECT: to the broker, an unexpected loss (it publishes the Will)."""
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            # shutdown, not close: the reader then sees the end of the stream and paho notes the disconnection.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def discard(self) -> None:
        """Release the socket of a connection that failed before CONNACK."""
        self._close()

    def _close(self) -> None:
        """Close the socket at once (no DISCONNECT), through paho so that it lets go of it, and note the end."""
        client = self._client
        held = client.socket()
        if isinstance(held, socket.socket):
            sock: socket.socket = held
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            # paho closes the socket when it reads the end of the stream (after whatever was still buffered).
            for _ in range(100):
                if client.socket() is not sock:
                    break
                try:
                    client.loop_read()
                except Exception:  # closing anyway
                    break
            if client.socket() is sock:
                self._forget(sock)
                sock.close()
        self._set_gone(None)

    # -- socket events (loop thread) --------------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            self._client.loop_read()
        except Exception as err:  # a broken connection
            self._fail(err)

    def _on_writable(self) -> None:
        try:
            self._client.loop_write()
        except Exception as err:
            self._fail(err)

    def _write_now(self, sock: socket.socket) -> None:
        client = self._client
        if client.socket() is not sock:
            return  # closed (or replaced) since
        try:
            client.loop_write()
        except Exception as err:
            self._fail(err)
            return
        # A written DISCONNECT closes the socket: wait only on the same socket, still open, with data left (its
        # buffer was full: the rest goes when it drains).
        if client.socket() is sock and client.want_write() and sock.fileno() >= 0:
            self._loop.add_writer(sock.fileno(), self._on_writable)

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._loop.call_soon(self._write_now, sock)

    def _on_socket_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_writer(sock)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._forget(sock)

    def _forget(self, sock: Any) -> None:
        if sock.fileno() >= 0:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

    def _fail(self, err: Exception) -> None:
        """The socket broke under a read or write: close it and note why."""
        lost = MqttError(str(err) or type(err).__name__)
        lost.__cause__ = err
        self._lost = self._lost or lost
        self._close()

    # -- paho's callbacks (loop thread) -----------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        connack = self._connack
        if connack is None or connack.done():
            return
        if reason.is_failure:
            self._refused = MqttError(_describe(reason))
        connack.set_result(None)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                       props: Any) -> None:
        self._set_gone(MqttError(f"Unexpected disconnection: {_describe(reason)}") if reason.is_failure else None)

    def _set_gone(self, lost: MqttError | None) -> None:
        """Note the end of the connection and wake whoever waits on it."""
        if self._lost is None:
            self._lost = lost
        self._gone = True
        error = self._lost or MqttError("disconnected")
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(None)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(MqttError(f"disconnected before the broker's answer: {error}"))
        self._pending.clear()
        for waiter in (self._message_waiter, self._gone_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        if self._misc_task is not None and not self._misc_task.done():
            self._misc_task.cancel()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode],
                      props: Any) -> None:
        self._resolve(mid)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any) -> None:
        self._resolve(mid)

    def _resolve(self, mid: int) -> None:
        future = self._pending.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(None)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._queue.append(Message(message.topic, bytes(message.payload), message.qos, message.retain))
        waiter = self._message_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- what a device does -----------------------------------------------------------------------------------

    async def subscribe(self, topic: str, qos: int = 0) -> None:
        """Subscribe to `topic` and wait for the SUBACK."""
        self._check_connected()
        rc, mid = self._client.subscribe(topic, qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise MqttError(f"Could not subscribe to {topic}: {_describe(rc)}")
        await self._answer(mid)

    async def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        """Publish; wait until QoS 0 is written, QoS 1 acknowledged (PUBACK), QoS 2 complete (PUBCOMP)."""
        self._check_connected()
        info = self._client.publish(topic, payload, qos)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttError(f"Could not publish message: {_describe(info.rc)}") from self._lost
        if info.is_published():
            return
        await self._answer(info.mid)

    def _check_connected(self) -> None:
        if self._gone or not self._connected:
            raise MqttError("not connected") from self._lost

    async def _answer(self, mid: int) -> None:
        future = self._pending.get(mid)
        if future is None:
            # paho may have had the answer already (on_publish of a QoS 0 written at once is not called later).
            future = self._pending[mid] = self._loop.create_future()
        try:
            async with asyncio.timeout(self.timeout):
                await future
        except TimeoutError:
            raise MqttError("Operation timed out") from None
        finally:
            if self._pending.get(mid) is future:
                del self._pending[mid]

    @property
    def messages(self) -> DeviceClient:
        """The received messages, as an async iterator that raises MqttError once the connection is gone."""
        return self

    def __aiter__(self) -> DeviceClient:
        return self

    async def __anext__(self) -> Message:
        """The next received message."""
        while True:
            if self._queue:
                return self._queue.popleft()
            if self._gone:
                raise MqttError("Disconnected during message iteration") from self._lost
            waiter = self._message_waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._message_waiter = None
