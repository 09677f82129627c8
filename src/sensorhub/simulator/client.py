"""aiomqtt's client with two races fixed and a cheaper write, which show once hundreds of clients share one loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from types import TracebackType
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from aiomqtt.types import PahoSocket


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class DeviceClient(aiomqtt.Client):
    """An aiomqtt 2.5 client that never registers a closed socket, writes its publishes at once and always says
    DISCONNECT when leaving.

    1. aiomqtt registers a socket's reader and writer with the loop *later* (`call_soon_threadsafe`, since paho
       may call it from the connecting thread). If the socket closes in between, the loop is handed a closed file
       descriptor (EBADF), or worse one that the next socket of another device already reuses. Here the late
       registration first checks that paho still holds that very socket.
    2. A publish from the loop's own thread (a device's coroutine) is written in the loop's next step rather than
       through the socket's writability: without a wake-up of the loop and two epoll changes per message (with
       2,000 devices at 1 reading/s, those were a quarter of the simulator's CPU). Only what the socket's buffer
       does not take waits for it to be writable.
    3. paho 2.2 refreshes its "last message out" time only when it pings, and while DISCONNECT waits to be
       written its keepalive check closes the socket without it: the broker then publishes the Will of a device
       that left cleanly. Here the keepalive task stops before disconnecting.
    """

    def _fail(self, exc: Exception) -> None:
        if not self._disconnected.done():
            self._disconnected.set_exception(exc)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: PahoSocket) -> None:
        def on_readable() -> None:
            try:
                client.loop_read()
            except Exception as exc:  # a broken connection: aiomqtt reports it as a disconnection
                self._fail(exc)

        def register() -> None:
            current = client.socket()
            if current is not None and current is sock:
                self._loop.add_reader(current.fileno(), on_readable)
                self._misc_task = self._loop.create_task(self._misc_loop())

        self._loop.call_soon_threadsafe(register)

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: PahoSocket) -> None:
        def on_writable() -> None:
            try:
                client.loop_write()
            except Exception as exc:
                self._fail(exc)

        def register() -> None:
            current = client.socket()
            if current is not None and current is sock:
                self._loop.add_writer(current.fileno(), on_writable)

        def write_now() -> None:
            current = client.socket()
            if current is None or current is not sock:
                return
            try:
                client.loop_write()
            except Exception as exc:
                self._fail(exc)
                return
            # Written DISCONNECT closes the socket: wait only on the same socket, still open, with data left (its
            # buffer was full: the rest goes when it drains).
            after = client.socket()
            if after is sock and after.fileno() >= 0 and client.want_write():
                self._loop.add_writer(after.fileno(), on_writable)

        if _running_loop() is self._loop:
            self._loop.call_soon(write_now)
        else:
            self._loop.call_soon_threadsafe(register)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Disconnect (DISCONNECT, then close), with paho's keepalive check out of the way."""
        task = self._misc_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await super().__aexit__(exc_type, exc, tb)

    def drop(self) -> None:
        """Close the TCP connection without DISCONNECT: to the broker, an unexpected loss (it publishes the Will)."""
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            # shutdown, not close: the reader then sees the end of the stream and aiomqtt notes the disconnection.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def discard(self) -> None:
        """Release the socket of a connection that failed before CONNACK (aiomqtt leaves it open)."""
        self._client.disconnect()
