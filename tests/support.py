"""Helpers shared by the tests."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: Debian's Chromium (never a downloaded browser), with the flags that keep it off the network.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


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


_SKIPPED_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
                 ".hypothesis", "build", "dist"}


def tracked_files(root: Path, under: str = "") -> list[Path]:
    """The files git tracks below `root / under` (outside a git checkout: every file but caches and packages)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--", under or "."], cwd=root, capture_output=True,
                                check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return [p for p in (root / under).rglob("*")
                if p.is_file() and not _SKIPPED_DIRS & set(p.relative_to(root).parts)]
    return [root / name for name in listed.decode().split("\0") if name]


def digests(paths: list[Path]) -> dict[Path, str]:
    """SHA-256 of each file that exists."""
    return {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in paths if path.is_file()}
