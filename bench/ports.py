"""Free TCP ports for the services that tests and benchmarks start, out of the kernel's ephemeral range."""

from __future__ import annotations

import itertools
import os
import random
import socket
from collections.abc import Iterator

from sensorhub.ports import LOOPBACK_CEILING, ephemeral_range

#: The lowest port handed out: above the ports a broker draws at random for its guard's loopback listener
#: (sensorhub.ports.loopback_port), which could otherwise pick one chosen here before its service binds it.
FLOOR = LOOPBACK_CEILING


def _candidates() -> Iterator[int]:
    """This process's endless sequence of ports to try: its own slice below the ephemeral range, from a random start.

    A port taken from the ephemeral range (binding port 0) can be handed to another process's outgoing connection
    between the probe and the service's own bind, and pytest-xdist's workers probe at the same time: each worker
    draws from a slice of its own, below the range the kernel uses for source ports.
    """
    low, _high = ephemeral_range()
    if low - FLOOR < 1000:
        while True:  # no room below the ephemeral range on this machine: let the kernel choose
            yield 0
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    size = (low - FLOOR) // max(workers, 1)
    start = FLOOR + size * (worker % max(workers, 1))
    first = random.randrange(size)
    for offset in itertools.cycle(range(size)):
        yield start + (first + offset) % size


_PORTS = _candidates()


def _free(port: int) -> int | None:
    """`port` if nothing listens on it, on IPv4 and IPv6 (port 0: a port the kernel chose), else None."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return None
        port = int(sock.getsockname()[1])
    try:
        sock6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return port  # no IPv6 on this machine
    with sock6:
        try:
            sock6.bind(("::", port))
        except OSError:
            return None
    return port


def free_port() -> int:
    """A TCP port nobody listens on right now (on IPv4 and IPv6), from this process's slice of ports."""
    for candidate in _PORTS:
        port = _free(candidate)
        if port is not None:
            return port
    raise AssertionError("unreachable: the candidates never end")
