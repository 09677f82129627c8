"""Start the real components (`sensorhub client`, `sensorhub web`) as subprocesses for end-to-end tests.

Each is a context manager: it waits for the component's readiness line (and, for the web server, an HTTP
answer), fails the test with the component's own output if it does not come, and stops the process
(SIGTERM, then SIGKILL) on the way out.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sensorhub.config import Settings

ROOT = Path(__file__).resolve().parents[1]
CLIENT_READY = "ingest client ready"
WEB_READY = "web server ready on"


class Component:
    """A sensorhub subprocess whose merged stdout/stderr is kept (last lines) for failure messages."""

    def __init__(self, name: str, args: list[str], settings: Settings, ready_line: str) -> None:
        self.name = name
        self.args = args
        self.settings = settings
        self.ready_line = ready_line
        self.process: subprocess.Popen[str] | None = None
        self._lines: collections.deque[str] = collections.deque(maxlen=400)
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None
        self._stopping = False

    def start(self, timeout: float = 20.0) -> None:
        """Start the process and wait for its readiness line; AssertionError with its output if it fails."""
        env = {**os.environ, **self.settings.environ(), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sensorhub", *self.args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        )
        self._reader = threading.Thread(target=self._read, name=f"{self.name}-output", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.process.poll() is not None:
                self._reader.join(2)
                raise AssertionError(self.failure(f"exited with status {self.process.returncode} before ready"))
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(self.failure(f"not ready within {timeout:g} s"))

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.append(line.rstrip("\n"))
            if self.ready_line in line:
                self._ready.set()

    def output(self) -> str:
        """The process's last output lines."""
        return "\n".join(self._lines)

    def failure(self, what: str) -> str:
        """A failure message naming the component, with its output."""
        return f"`sensorhub {' '.join(self.args)}` {what}; its output:\n{self.output() or '(nothing)'}"

    @property
    def running(self) -> bool:
        """Whether the process is still alive."""
        return self.process is not None and self.process.poll() is None

    def check_not_died(self) -> None:
        """Fail with the process's output if it exited without being asked to."""
        if self.process is not None and not self._stopping and self.process.poll() is not None:
            raise AssertionError(self.failure(f"exited with status {self.process.returncode} during the test"))

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; return the exit status."""
        if self.process is None:
            return None
        self._stopping = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._reader is not None:
            self._reader.join(2)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


@contextmanager
def ingest_client(settings: Settings, timeout: float = 20.0) -> Iterator[Component]:
    """`sensorhub client` running against `settings` (broker and database must exist)."""
    component = Component("client", ["client"], settings, CLIENT_READY)
    component.start(timeout)
    try:
        yield component
        component.check_not_died()
    finally:
        component.stop()


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status of GET `url`, or None if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):
        return None


def web_url(settings: Settings, path: str = "/") -> str:
    """URL of `path` on the web server of `settings`, through the loopback address."""
    return f"http://127.0.0.1:{settings.web_port}{path}"


@contextmanager
def web_server(settings: Settings, workers: int = 2, timeout: float = 20.0) -> Iterator[Component]:
    """`sensorhub web --workers N` (gunicorn) running against `settings`, answering HTTP."""
    component = Component("web", ["web", "--workers", str(workers)], settings, WEB_READY)
    component.start(timeout)
    try:
        deadline = time.monotonic() + timeout
        while http_status(web_url(settings, "/accueil")) != 200:
            if not component.running or time.monotonic() > deadline:
                raise AssertionError(component.failure("does not answer GET /accueil with 200"))
            time.sleep(0.05)
        yield component
        component.check_not_died()
    finally:
        component.stop()
