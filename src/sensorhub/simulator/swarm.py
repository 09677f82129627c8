"""Tens of thousands of virtual boards in one process: paho clients driven by one epoll loop (paho's public
external-loop API: socket callbacks, loop_read, loop_write, loop_misc), no asyncio task per board.

Each board follows the firmware's join (docs/protocol.md): connect without a Will, subscribe to state/nameAssign
(QoS 2) and wait for the SUBACK, publish its MAC on state/join, read state/nameAssign until a line starts with its
own MAC, disconnect, connect again with its Will (state/leave, `name;session`, QoS 2), subscribe to led/command,
publish `name;session` on state/join and its LED state on led/status (QoS 1), then a light reading every
`interval` seconds with jitter. A lost connection starts again from the MAC join, after a backoff with jitter.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import random
import selectors
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from sensorhub.errors import PayloadError
from sensorhub.protocol import QOS, Topic, format_reading, format_session_ref, parse_name_assign

logger = logging.getLogger(__name__)

#: Board states.
IDLE, NAMING, SESSION, ONLINE, SILENT, STOPPED = range(6)
#: Retry delays after a failure: the first and the ceiling (s), as the asyncio simulator's boards.
BACKOFF_FIRST: Final = 0.5
BACKOFF_MAX: Final = 5.0
#: How often each client's keepalive is looked at (s).
MISC_PERIOD: Final = 1.0


@dataclass
class Counters:
    """What a swarm's boards did, summed: plain integers another process can be sent."""

    sent: dict[str, int] = field(default_factory=lambda: {str(topic): 0 for topic in Topic})
    acked_led: int = 0
    written_readings: int = 0
    joins: int = 0
    sessions: int = 0
    connect_failures: int = 0
    lost: int = 0
    name_timeouts: int = 0
    assigns_seen: int = 0


class Board:
    """One board's state; its paho client is made per connection."""

    __slots__ = (
        "bind",
        "client",
        "failures",
        "gen",
        "index",
        "join_started",
        "joined_at",
        "led_mid",
        "light",
        "mac",
        "macb",
        "name",
        "session",
        "state",
    )

    def __init__(self, index: int, mac: str, bind: str | None) -> None:
        self.index = index
        self.mac = mac
        self.macb = mac.encode("ascii")
        self.name: str | None = None
        self.session: str | None = None
        self.client: mqtt.Client | None = None
        self.state = IDLE
        self.gen = 0  # bumped at each new connection: timers of an older one are ignored
        self.failures = 0
        self.light = 50
        self.join_started = 0.0
        self.joined_at = 0.0
        self.bind = bind
        self.led_mid = -1


class Swarm:
    """Many boards on one epoll loop in the calling thread: `step()` runs it once, `run()` until `stop()`."""

    def __init__(self, host: str, port: int, macs: Sequence[str], *, interval: float = 60.0, keepalive: int = 5,
                 bind_addresses: Sequence[str] = (), name_timeout: float = 30.0, gate: int = 0,
                 mqtt_version: str = "3.1.1", seed: int = 0) -> None:
        self.host, self.port = host, port
        self.interval = interval
        self.keepalive = keepalive
        self.name_timeout = name_timeout
        #: How many boards may wait for their name at once (0: all of them, as a fleet after a power cut).
        self.gate = gate
        self.protocol = mqtt.MQTTv311 if mqtt_version == "3.1.1" else mqtt.MQTTv5
        self.join_qos = 0 if mqtt_version == "3.1.1" else QOS[Topic.JOIN]
        binds: list[str | None] = list(bind_addresses) or [None]
        self.boards = [Board(i, mac, binds[i % len(binds)]) for i, mac in enumerate(macs)]
        self.rng = random.Random(seed)
        self.counters = Counters()
        self.selector = selectors.DefaultSelector()  # epoll on Linux
        self._timers: list[tuple[float, int, int, int, int]] = []  # (due, seq, board, gen, action)
        self._seq = 0
        self._writes: set[mqtt.Client] = set()
        self._naming = 0
        self._queue: list[int] = []  # boards waiting for the gate, in order
        self._next_misc = 0.0
        self._latencies: list[float] = []
        self.extra_readers: dict[int, Callable[[], None]] = {}
        #: While True, due light readings are skipped (the next one stays due an interval later).
        self.paused = False

    # -- timers -----------------------------------------------------------------------------------------------

    _READING, _RETRY, _NAME_TIMEOUT, _START = range(4)

    def _after(self, delay: float, board: Board, action: int) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (time.monotonic() + delay, self._seq, board.index, board.gen, action))

    # -- the paho clients -------------------------------------------------------------------------------------

    def _client(self, board: Board, will: bytes | None) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sim-" + board.mac.replace(":", ""),
                             protocol=self.protocol, userdata=board)
        if will is not None:
            client.will_set(str(Topic.LEAVE), will, qos=QOS[Topic.LEAVE])
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        return client

    def _on_socket_open(self, client: mqtt.Client, board: Board, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.selector.register(sock, selectors.EVENT_READ, client)

    def _on_socket_close(self, client: mqtt.Client, board: Board, sock: Any) -> None:
        self._writes.discard(client)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(sock)

    def _on_register_write(self, client: mqtt.Client, board: Board, sock: Any) -> None:
        # Written at the end of this loop step, not through epoll: most packets fit the socket's buffer at once.
        self._writes.add(client)

    def _on_unregister_write(self, client: mqtt.Client, board: Board, sock: Any) -> None:
        self._writes.discard(client)
        try:
            key = self.selector.get_key(sock)
        except (KeyError, ValueError):
            return
        if key.events & selectors.EVENT_WRITE:
            self.selector.modify(sock, selectors.EVENT_READ, client)

    def _connect(self, board: Board, will: bytes | None) -> None:
        board.gen += 1
        client = self._client(board, will)
        board.client = client
        try:
            client.connect(self.host, self.port, self.keepalive, bind_address=board.bind or "")
        except OSError as err:
            self.counters.connect_failures += 1
            logger.debug("board %d: cannot connect: %s", board.index, err)
            self._fail(board)

    def _on_connect(self, client: mqtt.Client, board: Board, flags: Any, reason: Any, props: Any) -> None:
        if client is not board.client:
            return
        if reason.is_failure:
            self.counters.connect_failures += 1
            self._fail(board)
            return
        topic = Topic.NAME_ASSIGN if board.state == NAMING else Topic.LED_COMMAND
        client.subscribe(str(topic), qos=QOS[topic])

    def _on_subscribe(self, client: mqtt.Client, board: Board, mid: int, reasons: Any, props: Any) -> None:
        if client is not board.client:
            return
        if board.state == NAMING:
            self._publish(board, Topic.JOIN, board.macb, self.join_qos)
            self._after(self.name_timeout, board, self._NAME_TIMEOUT)
        elif board.state == SESSION:
            assert board.name is not None and board.session is not None
            self._publish(board, Topic.JOIN, format_session_ref(board.name, board.session), self.join_qos)
            self._publish(board, Topic.LED_STATUS, format_reading(board.name, board.session, 0), QOS[Topic.LED_STATUS])
            board.state, board.joined_at = ONLINE, time.monotonic()
            self._latencies.append(board.joined_at - board.join_started)
            self.counters.sessions += 1
            board.failures = 0
            # The first reading within one interval, at a random phase: readings spread over time.
            self._after(self.interval * self.rng.random(), board, self._READING)

    def _on_message(self, client: mqtt.Client, board: Board, message: mqtt.MQTTMessage) -> None:
        if client is not board.client or board.state != NAMING:
            return  # a led/command: the swarm's boards keep their LED off
        payload = bytes(message.payload)
        self.counters.assigns_seen += 1
        if payload[:17].upper() != board.macb:
            return  # another board's name
        try:
            assign = parse_name_assign(payload)
        except PayloadError:
            return
        board.name, board.session = assign.name, assign.session
        self._release_gate(board)
        board.state = SESSION
        client.disconnect()  # DISCONNECT written by the next step; the socket closes after it

    def _on_publish(self, client: mqtt.Client, board: Board, mid: int, reason: Any, props: Any) -> None:
        if client is not board.client:
            return
        if mid == board.led_mid:
            self.counters.acked_led += 1  # the broker's PUBACK: from now on it is the broker's to keep
        elif board.state == ONLINE and mid > board.led_mid:  # not the name;session join's PUBCOMP
            self.counters.written_readings += 1  # QoS 0: written to the socket

    def _on_disconnect(self, client: mqtt.Client, board: Board, flags: Any, reason: Any, props: Any) -> None:
        if client is not board.client:
            return
        if board.state == SESSION and board.session is not None and not reason.is_failure:
            # The first connection ended on purpose: the second, with the Will.
            self._connect(board, format_session_ref(board.name or "", board.session))
            return
        if board.state in (STOPPED, SILENT):
            return
        self.counters.lost += 1
        self._fail(board)

    def _publish(self, board: Board, topic: Topic, payload: bytes, qos: int) -> None:
        client = board.client
        assert client is not None
        info = client.publish(str(topic), payload, qos=qos)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return
        key = str(topic)
        # Counted once paho has it (QoS 0: about to be written; QoS 1/2: kept until acknowledged).
        self.counters.sent[key] += 1
        if topic == Topic.LED_STATUS:
            board.led_mid = info.mid

    # -- board life cycle -------------------------------------------------------------------------------------

    def _start_join(self, board: Board) -> None:
        if board.state in (STOPPED, SILENT):
            return
        if self.gate and self._naming >= self.gate:
            self._queue.append(board.index)
            return
        self._naming += 1
        board.state = NAMING
        board.name = board.session = None
        if not board.join_started:
            board.join_started = time.monotonic()
        self.counters.joins += 1
        self._connect(board, None)

    def _release_gate(self, board: Board) -> None:
        if board.state == NAMING:
            self._naming -= 1
            # The next waiting board starts in the loop's next step, not here: a refused connection would fail it
            # at once, which would start the next one, and so on down the stack.
            if self._queue:
                self._after(0.0, self.boards[self._queue.pop(0)], self._START)

    def _fail(self, board: Board) -> None:
        self._release_gate(board)
        self._close(board)
        if board.state in (STOPPED, SILENT):
            return
        board.state = IDLE
        board.failures += 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (board.failures - 1)) * self.rng.uniform(0.75, 1.0)
        board.gen += 1
        self._after(delay, board, self._RETRY)

    def _close(self, board: Board) -> None:
        """Close the board's socket without DISCONNECT (the broker sees the connection drop)."""
        client, board.client = board.client, None
        if client is None:
            return
        sock = client.socket()
        if sock is not None:
            self._on_socket_close(client, board, sock)
            with contextlib.suppress(OSError):
                sock.close()

    # -- what the owner asks ----------------------------------------------------------------------------------

    def start(self, spread: float = 0.0, gate: int | None = None) -> None:
        """Every board starts its join, all at once (spread 0, as after a power cut) or over `spread` seconds;
        `gate` changes how many may wait for their name at once."""
        if gate is not None:
            self.gate = gate
        for board in self.boards:
            board.join_started = 0.0
            if spread:
                self._after(self.rng.uniform(0, spread), board, self._START)
            else:
                self._start_join(board)

    def power_cut(self, indexes: Sequence[int] | None = None, gate: int | None = None) -> None:
        """These boards (all by default) lose power and boot again at once: sockets dropped, MAC join again."""
        if gate is not None:
            self.gate = gate
        for index in indexes if indexes is not None else range(len(self.boards)):
            board = self.boards[index]
            if board.state in (STOPPED, SILENT):
                continue
            self._release_gate(board)
            self._close(board)
            board.state, board.gen, board.failures, board.join_started = IDLE, board.gen + 1, 0, 0.0
        for index in indexes if indexes is not None else range(len(self.boards)):
            if self.boards[index].state == IDLE:
                self._start_join(self.boards[index])

    def kill(self, indexes: Sequence[int], silent: bool) -> None:
        """These boards die for good: `silent`, their sockets stay open and say nothing (the broker notices after
        1.5 keepalives); else their sockets are closed at once (the broker notices the end of the stream)."""
        for index in indexes:
            board = self.boards[index]
            self._release_gate(board)
            if silent:
                board.state = SILENT
                client = board.client
                sock = client.socket() if client is not None else None
                if client is not None and sock is not None:
                    self._writes.discard(client)
                    with contextlib.suppress(KeyError, ValueError):
                        self.selector.unregister(sock)
            else:
                board.state = STOPPED
                self._close(board)

    def stop(self) -> None:
        """Every board disconnects (DISCONNECT: no Will) and stays stopped."""
        for board in self.boards:
            board.state = STOPPED
            if board.client is not None:
                board.client.disconnect()
        self._flush()

    def online(self) -> int:
        """Boards in a session (joined with name;session)."""
        return sum(1 for board in self.boards if board.state == ONLINE)

    def sessions(self) -> list[tuple[str, str]]:
        """(MAC, session) of every board in a session."""
        return [(board.mac, board.session or "") for board in self.boards if board.state == ONLINE]

    def take_latencies(self) -> list[float]:
        """Seconds from each board's first MAC join to its name;session join, since the last call."""
        taken, self._latencies = self._latencies, []
        return taken

    # -- the loop ---------------------------------------------------------------------------------------------

    def _flush(self) -> None:
        while self._writes:
            client = self._writes.pop()
            client.loop_write()
            sock = client.socket()
            if client.want_write() and sock is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def step(self, timeout: float = 0.2) -> None:
        """One turn: due timers, readable and writable sockets, pending writes, keepalives."""
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _due, _seq, index, gen, action = heapq.heappop(self._timers)
            board = self.boards[index]
            if gen != board.gen:
                continue
            if action == self._READING:
                if board.state == ONLINE and board.name and board.session and not self.paused:
                    board.light = max(0, min(100, board.light + self.rng.randint(-2, 2)))
                    self._publish(board, Topic.PHOTORESISTOR_STATUS,
                                  format_reading(board.name, board.session, board.light),
                                  QOS[Topic.PHOTORESISTOR_STATUS])
                if board.state == ONLINE:
                    self._after(self.interval * self.rng.uniform(0.95, 1.05), board, self._READING)
            elif action == self._NAME_TIMEOUT:
                if board.state == NAMING:
                    self.counters.name_timeouts += 1
                    self._fail(board)
            elif action in (self._RETRY, self._START) and board.state == IDLE:
                self._start_join(board)
        self._flush()
        wait = timeout
        if self._timers:
            wait = max(0.0, min(wait, self._timers[0][0] - time.monotonic()))
        for key, events in self.selector.select(wait):
            reader = self.extra_readers.get(key.fd)
            if reader is not None:
                reader()
                continue
            client: mqtt.Client = key.data
            if events & selectors.EVENT_READ:
                client.loop_read(max_packets=100)
            if events & selectors.EVENT_WRITE and client.socket() is not None:
                client.loop_write()
        self._flush()
        now = time.monotonic()
        if now >= self._next_misc:
            self._next_misc = now + MISC_PERIOD
            for board in self.boards:
                if board.client is not None and board.state != SILENT:
                    board.client.loop_misc()
            self._flush()
