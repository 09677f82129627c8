"""Helpers shared by the tests."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sensorhub.config import Settings
from sensorhub.credentials import CLIENT_USER, client_password

T = TypeVar("T")

#: Debian's Chromium (never a downloaded browser), with the flags that keep it off the network.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def log_in_as_server(client: Any, settings: Settings) -> None:
    """Give a paho client the ingest client's broker user: only it may publish nameAssign and led/command."""
    client.username_pw_set(CLIENT_USER, client_password(settings))


def free_port() -> int:
    """A TCP port nobody listens on right now (on IPv4 and IPv6)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("", 0))
            port = int(sock.getsockname()[1])
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock6:
                sock6.bind(("::", port))
        except OSError:
            continue
        return port


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> T:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)
