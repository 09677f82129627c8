"""A swarm of boards split over several processes (each process may hold only so many sockets), driven from
the calling one through pipes: start, power cut, kill, stop, and what they did."""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import resource
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any, Final

from sensorhub.simulator.swarm import Counters, Swarm

#: Sockets a process keeps for itself besides its boards' (pipes, logs, the interpreter's files).
SPARE_FILES: Final = 200
#: At most this many boards a process: two cores here, and each board briefly holds two sockets while joining.
PER_PROCESS: Final = 8_000


def loopback_sources(count: int) -> list[str]:
    """`count` source addresses 127.0.0.1... : each has its own range of ephemeral ports towards the broker."""
    return [f"127.0.0.{n}" for n in range(1, count + 1)]


def _rss() -> int:
    """This process's resident memory in bytes (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _child(conn: Connection, host: str, port: int, macs: list[str], options: dict[str, Any]) -> None:
    """A swarm process: its loop, and the pipe's commands between its steps."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    swarm = Swarm(host, port, macs, **options)
    running = True

    def command() -> None:
        nonlocal running
        name, args = conn.recv()
        reply: Any = None
        if name == "start":
            swarm.start(*args)
        elif name == "power_cut":
            swarm.power_cut(*args)
        elif name == "sessions":
            reply = swarm.sessions()
        elif name == "pause":
            swarm.paused = args[0]
        elif name == "gate":
            swarm.gate = args[0]
        elif name == "kill":
            swarm.kill(*args)
        elif name == "stats":
            reply = {"online": swarm.online(), "counters": dataclasses.asdict(swarm.counters),
                     "latencies": swarm.take_latencies(), "rss": _rss()}
        elif name == "stop":
            swarm.stop()
            running = False
        conn.send(reply)

    swarm.selector.register(conn.fileno(), 1, None)
    swarm.extra_readers[conn.fileno()] = command
    while running:
        swarm.step()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and any(b.client is not None and b.client.want_write() for b in swarm.boards):
        swarm.step(0.05)


class SwarmFleet:
    """`boards` MACs spread over processes of at most `per_process` boards each; a context manager. With several
    `port`s, process n connects to the n-th (round robin): brokers bridged together (bench/edges.py)."""

    def __init__(self, host: str, port: int | Sequence[int], macs: Sequence[str], *, per_process: int = PER_PROCESS,
                 sources: int = 8, **options: Any) -> None:
        ports = [port] if isinstance(port, int) else list(port)
        per_process = max(1, min(per_process, resource.getrlimit(resource.RLIMIT_NOFILE)[1] // 2 - SPARE_FILES))
        options.setdefault("bind_addresses", loopback_sources(sources) if host.startswith("127.") else ())
        chunks = [list(macs[i:i + per_process]) for i in range(0, len(macs), per_process)]
        context = multiprocessing.get_context("spawn")
        self.offsets = [sum(len(c) for c in chunks[:n]) for n in range(len(chunks))]
        self.sizes = [len(chunk) for chunk in chunks]
        self.conns: list[Connection] = []
        self.processes: list[Any] = []
        for n, chunk in enumerate(chunks):
            parent, child = context.Pipe()
            process = context.Process(target=_child, args=(child, host, ports[n % len(ports)], chunk, options),
                                      daemon=True)
            process.start()
            self.conns.append(parent)
            self.processes.append(process)

    def __enter__(self) -> SwarmFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        """The swarm processes' ids."""
        return [int(p.pid) for p in self.processes]

    def _all(self, name: str, per: Sequence[tuple[Any, ...]] | None = None, timeout: float = 120.0) -> list[Any]:
        for n, conn in enumerate(self.conns):
            conn.send((name, per[n] if per is not None else ()))
        replies = []
        for conn in self.conns:
            if not conn.poll(timeout):
                raise TimeoutError(f"a swarm process did not answer {name!r} within {timeout:g} s")
            replies.append(conn.recv())
        return replies

    def _split(self, indexes: Sequence[int]) -> list[tuple[list[int]]]:
        per: list[list[int]] = [[] for _ in self.conns]
        for index in indexes:
            n = max(i for i, offset in enumerate(self.offsets) if offset <= index)
            per[n].append(index - self.offsets[n])
        return [(chunk,) for chunk in per]

    def start(self, spread: float = 0.0, gate: int | None = None) -> None:
        """Every board starts its MAC join (all at once with spread 0; at most `gate` a process waiting)."""
        self._all("start", [(spread, gate)] * len(self.conns))

    def power_cut(self, gate: int | None = None) -> None:
        """Every living board drops its socket and joins again at once (at most `gate` a process waiting)."""
        self._all("power_cut", [(None, gate)] * len(self.conns))

    def sessions(self) -> set[tuple[str, str]]:
        """(MAC, session) of every board in a session, in every process."""
        return {pair for reply in self._all("sessions") for pair in reply}

    def pause(self, paused: bool) -> None:
        """Stop (True) or resume (False) the light readings, connections kept."""
        self._all("pause", [(paused,)] * len(self.conns))

    def gate(self, gate: int) -> None:
        """How many boards of each process may wait for their name at once from now on (0: all)."""
        self._all("gate", [(gate,)] * len(self.conns))

    def kill(self, indexes: Sequence[int], silent: bool) -> None:
        """Boards that die for good: silent (sockets left open, mute) or with their sockets closed."""
        self._all("kill", [(*chunk, silent) for chunk in self._split(indexes)])

    def stats(self) -> dict[str, Any]:
        """Online boards, counters summed, latencies since the last call, each process's RSS."""
        replies = self._all("stats")
        total = Counters()
        for reply in replies:
            for key, value in reply["counters"].items():
                if key == "sent":
                    for topic, count in value.items():
                        total.sent[topic] += count
                else:
                    setattr(total, key, getattr(total, key) + value)
        return {"online": sum(r["online"] for r in replies), "counters": total,
                "latencies": [x for r in replies for x in r["latencies"]], "rss": [r["rss"] for r in replies]}

    def close(self) -> None:
        """Stop every board (DISCONNECT) and end the processes."""
        with contextlib.suppress(OSError, EOFError, TimeoutError):
            self._all("stop", timeout=30)
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
        for conn in self.conns:
            conn.close()
