"""One check used by every component before it listens: is the port free, and if not, what to do."""

from __future__ import annotations

import errno
import random
import socket
import time
from pathlib import Path

from sensorhub.errors import SensorhubError
from sensorhub.i18n import N_, tr


class PortError(SensorhubError):
    """A port cannot be listened on (taken, privileged, or a bad address)."""


def _hint(port: int) -> str:
    if port == 1883:
        return " (another MQTT broker? a system one stops with `sudo systemctl stop mosquitto`)"
    return ""


def ensure_free(port: int, setting: str, what: str, host: str = "", remedy: str | None = None) -> None:
    """Raise PortError, in one line naming the port and the setting that moves it, unless `port` is free.

    With no `host`, the port must be free on every IPv4 and IPv6 address, as the broker listens on all.
    """
    remedy = remedy or tr("free it or choose another port with {setting}", setting=setting)
    if host:
        targets = [(socket.AF_INET6 if ":" in host else socket.AF_INET, host.strip("[]"))]
    else:
        targets = [(socket.AF_INET, "0.0.0.0")]
        if socket.has_ipv6:
            targets.append((socket.AF_INET6, "::"))
    for family, address in targets:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, port))
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise PortError(N_("port {port} ({what}) is already in use{hint}: {remedy}"), port=port, what=what,
                                    hint=_hint(port), remedy=remedy) from None
                if err.errno == errno.EACCES:
                    raise PortError(N_("port {port} ({what}) needs administrator rights: choose a port above 1023 "
                                       "with {setting}"), port=port, what=what, setting=setting) from None
                if family == socket.AF_INET6 and not host and err.errno == errno.EADDRNOTAVAIL:
                    continue  # no IPv6 on this machine: nothing can be listening there
                raise PortError(N_("cannot listen on {address}:{port} ({what}): {reason}"), address=address, port=port,
                                what=what, reason=err.strerror) from None


def wait_free(port: int, timeout: float, host: str = "") -> bool:
    """Wait up to `timeout` seconds for `port` to be free (a dying process lets go of it); True once it is."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ensure_free(port, "", "", host)
        except PortError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        else:
            return True


#: The lowest port `loopback_port` hands out: above the well-known and most registered services' ports.
LOOPBACK_FLOOR = 10000
#: `loopback_port` hands out ports below this one: those above it, up to the ephemeral range, are left to listeners
#: whose port was chosen beforehand (the test suite's and the benchmarks' services, bench/ports.py), so that a
#: guard's random pick is never a port another process chose and has not bound yet.
LOOPBACK_CEILING = 20000
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of source ports for outgoing connections (Linux's default when it cannot be read)."""
    try:
        low, high = (int(part) for part in _RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def loopback_port(tries: int = 50) -> int:
    """A free TCP port on 127.0.0.1 for a listener of our own, from LOOPBACK_FLOOR to LOOPBACK_CEILING (below the
    ephemeral range) when there is room.

    A port the kernel picks (bind to port 0) comes from the range it also gives outgoing connections: on a busy
    machine one of those can take it between this probe and the listener's own bind.
    """
    ceiling = min(ephemeral_range()[0], LOOPBACK_CEILING)
    for _ in range(tries if ceiling - LOOPBACK_FLOOR >= 1000 else 0):
        port = random.randrange(LOOPBACK_FLOOR, ceiling)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
