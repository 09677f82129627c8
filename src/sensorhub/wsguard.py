"""A guard in front of Mosquitto's WebSockets listener: it applies `max_packet_size`, which Mosquitto 2.0.11 does not.

Mosquitto 2.0.11 checks `max_packet_size` on its TCP listeners only. Over WebSockets it allocates a buffer of the
size a PUBLISH header announces (up to 256 MB) and keeps it while the client sends the rest, at its own pace:
measured with `python -m bench.wsflood`, 4 anonymous clients each announcing 100 MiB and sending half took the
broker from 10 to 210 MiB, held as long as their connections stayed open (docs/security.md).

So the broker's WebSockets listener listens on the loopback interface only, on a port of its own, and this guard
takes the public WebSockets port (and the secure one, with TLS): it passes the HTTP upgrade through, then reads
the client's WebSocket frames as they stream by, follows the MQTT packets inside them (type byte, remaining
length), and closes the connection as soon as a packet announces more than `max_packet_size` bytes, before
Mosquitto has seen its header. Everything else goes through unchanged, both ways; the guard itself holds at most
one read (64 KiB) per direction and connection, with back-pressure.

With `SENSORHUB_WEB_PRIVATE=1` it also checks the upgrade request's token (sensorhub.livetoken) and answers 401
to a request without a valid one, so that only pages served to a logged-in visitor open the live stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
#: Said to an upgrade request whose token is missing or no longer valid (private mode).
UNAUTHORIZED = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
#: The longest HTTP upgrade request accepted (browsers send about 600 bytes), and how long it may take.
HEADER_LIMIT = 16 * 1024
HEADER_TIMEOUT = 10.0


class Oversize(Exception):
    """A client announced an MQTT packet longer than allowed, or sent something that is not MQTT."""


@dataclass
class MqttLengths:
    """Follows MQTT packet boundaries in the byte stream a client sends, refusing any packet over `limit` bytes."""

    limit: int
    skip: int = 0  # bytes of the current packet still to come after its header
    header: bytearray = field(default_factory=bytearray)  # the current packet's fixed header so far

    def needs(self) -> bool:
        """Whether the next byte belongs to a packet's fixed header (it must then be looked at)."""
        return self.skip == 0

    def feed(self, byte: int) -> None:
        """One byte of a fixed header: the type, then the remaining length's 1 to 4 bytes."""
        self.header.append(byte)
        if len(self.header) == 1:
            return
        if byte & 0x80:
            if len(self.header) == 5:
                raise Oversize("a remaining length longer than 4 bytes")
            return
        remaining = sum((value & 0x7F) << (7 * index) for index, value in enumerate(self.header[1:]))
        size = len(self.header) + remaining
        if size > self.limit:
            raise Oversize(f"an MQTT packet of {size} bytes (max_packet_size {self.limit})")
        self.header.clear()
        self.skip = remaining


@dataclass
class FrameReader:
    """Follows the WebSocket frames a client sends (RFC 6455), handing the MQTT bytes of data frames, unmasked, to
    an MqttLengths; only the bytes of packet headers are unmasked, the rest is counted."""

    mqtt: MqttLengths
    header: bytearray = field(default_factory=bytearray)
    left: int = 0  # payload bytes of the current frame still to come
    mask: bytes = b"\0\0\0\0"
    offset: int = 0  # position in the current frame's payload (for the mask)
    data: bool = False  # whether the current frame carries MQTT bytes (not a ping, pong or close)

    def feed(self, chunk: bytes) -> None:
        position = 0
        while position < len(chunk):
            if self.left == 0:
                self.header.append(chunk[position])
                position += 1
                self._header_done()
                continue
            if not self.data:
                taken = min(self.left, len(chunk) - position)
            elif self.mqtt.needs():
                self.mqtt.feed(chunk[position] ^ self.mask[self.offset % 4])
                taken = 1
            else:
                taken = min(self.left, len(chunk) - position, self.mqtt.skip)
                self.mqtt.skip -= taken
            position += taken
            self.offset += taken
            self.left -= taken

    def _header_done(self) -> None:
        header = self.header
        if len(header) < 2:
            return
        size = header[1] & 0x7F
        extra = {126: 2, 127: 8}.get(size, 0)
        masked = 4 if header[1] & 0x80 else 0
        if len(header) < 2 + extra + masked:
            return
        if extra:
            size = int.from_bytes(header[2:2 + extra], "big")
        self.mask = bytes(header[2 + extra:2 + extra + masked]) if masked else b"\0\0\0\0"
        self.data = (header[0] & 0x0F) < 8
        self.left, self.offset = size, 0
        self.header = bytearray()


@dataclass
class Listener:
    """A public port the guard takes: plain WebSockets, or secure ones with `tls`."""

    port: int
    tls: ssl.SSLContext | None = None


class WsGuard:
    """The guard, in a thread of its own: `start()` returns once every listener is open."""

    def __init__(self, listeners: list[Listener], upstream_port: int, max_packet: int,
                 authorize: Callable[[bytes], bool] | None = None) -> None:
        self.listeners = listeners
        self.upstream_port = upstream_port
        self.max_packet = max_packet
        #: Given the upgrade request's first line, whether it may go on (None: every request may).
        self.authorize = authorize
        self.refused = 0
        self.unauthorized = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._run, name="wsguard", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the WebSockets guard did not start")
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        servers = []
        try:
            for listener in self.listeners:
                servers.append(loop.run_until_complete(asyncio.start_server(
                    self._serve, port=listener.port, ssl=listener.tls, limit=HEADER_LIMIT, reuse_address=True)))
        except BaseException as err:  # a busy port: said by start()
            self._error = err
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            for server in servers:
                server.close()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        upstream: asyncio.StreamWriter | None = None
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEADER_TIMEOUT)
            if self.authorize is not None and not self.authorize(head.split(b"\r\n", 1)[0]):
                self.unauthorized += 1
                logger.debug("refused the WebSockets upgrade of %s: no valid live-stream token", _address(peer))
                writer.write(UNAUTHORIZED)
                await writer.drain()
                return
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            upstream.write(head)
            frames = FrameReader(MqttLengths(self.max_packet))
            both = [asyncio.ensure_future(self._pump(reader, upstream, frames)),
                    asyncio.ensure_future(self._pump(up_reader, writer, None))]
            done, pending = await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            for task in done:
                if isinstance(task.exception(), Oversize):
                    self.refused += 1
                    logger.warning("closed the WebSockets connection of %s: %s", _address(peer), task.exception())
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError):
            pass
        finally:
            for stream in (upstream, writer):
                if stream is not None:
                    stream.close()
                    with contextlib.suppress(Exception):
                        await stream.wait_closed()

    @staticmethod
    async def _pump(source: asyncio.StreamReader, target: asyncio.StreamWriter, frames: FrameReader | None) -> None:
        while data := await source.read(READ_SIZE):
            if frames is not None:
                frames.feed(data)
            target.write(data)
            await target.drain()


def _address(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
