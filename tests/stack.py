"""Start the real components (`sensorhub client`, `sensorhub web`) as subprocesses for end-to-end tests.

The same mechanism as `sensorhub run` (sensorhub.process.Child): each component says READY=1 once it
serves; one that dies first, or takes too long, fails the test with its own output. The context managers
stop the process (SIGTERM, then SIGKILL) on the way out.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from sensorhub.broker import Broker
from sensorhub.config import Settings
from sensorhub.process import Child, ComponentError
from tests.support import fresh_database

ROOT = Path(__file__).resolve().parents[1]


def sensorhub(name: str, args: Sequence[str], settings: Settings, python: Sequence[str] = ("-m", "sensorhub"),
              ) -> Child:
    """`sensorhub ARGS` (or `python PYTHON ARGS`) with `settings` in its environment, not started."""
    return Child(name, [sys.executable, *python, *args], env={**os.environ, **settings.environ()}, cwd=ROOT)


def start(child: Child, timeout: float = 20.0) -> Child:
    """Start `child` and wait for its READY=1; AssertionError with its output if it does not come."""
    child.start()
    try:
        child.wait_ready(timeout)
    except ComponentError as err:
        child.stop()
        raise AssertionError(f"{err}; its output:\n{child.output() or '(nothing)'}") from None
    return child


def check_not_died(child: Child) -> None:
    """Fail with the process's output if it exited without being asked to."""
    if child.process is not None and not child.stopped and child.process.poll() is not None:
        raise AssertionError(f"{child.death('during the test')}; its output:\n{child.output()}")


@contextmanager
def running(child: Child, timeout: float = 20.0) -> Iterator[Child]:
    """`child` started and ready for the block, then stopped."""
    start(child, timeout)
    try:
        yield child
        check_not_died(child)
    finally:
        child.stop()


def ingest_client(settings: Settings, timeout: float = 20.0) -> AbstractContextManager[Child]:
    """`sensorhub client` running against `settings` (broker and database must exist)."""
    return running(sensorhub("client", ["client"], settings), timeout)


def web_server(settings: Settings, workers: int = 2, timeout: float = 20.0) -> AbstractContextManager[Child]:
    """`sensorhub web --workers N` (gunicorn) running against `settings`, listening."""
    return running(sensorhub("web", ["web", "--workers", str(workers)], settings), timeout)


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


@dataclass
class Stack:
    """Broker, ingest client and web server running for the tests of a module (`running_stack`)."""

    settings: Settings
    engine: Engine
    broker: Broker
    client: Child
    web: Child

    def url(self, path: str) -> str:
        """Absolute URL of `path` on the web server."""
        return web_url(self.settings, path)

    def api(self, path: str) -> Any:
        """GET a JSON API path."""
        with urllib.request.urlopen(self.url(path), timeout=5) as response:
            return json.load(response)

    def restart_stopped(self) -> None:
        """Start again what a test stopped on purpose (broker, ingest client, web server), for the module's next
        test; one that died unasked fails it with its output."""
        if self.broker.process is None or self.broker.process.poll() is not None:
            self.broker.start()
        for child in (self.client, self.web):
            check_not_died(child)
            if not child.running:
                start(child)


@contextmanager
def running_stack(settings: Settings, *, workers: int = 2,
                  prepare: Callable[[Engine], object] | None = None) -> Iterator[Stack]:
    """The database (created, then `prepare`d: accounts, rows), the broker, `sensorhub client` and `sensorhub web`
    with `workers` gunicorn workers, all of `settings`; stopped in the reverse order.

    A test may stop, kill or restart a component, or put a new `Broker` in `stack.broker`: what the stack holds on
    the way out is stopped (a component that died without being asked to fails the test with its output)."""
    engine = fresh_database(settings.database_url)
    stack: Stack | None = None
    try:
        if prepare is not None:
            prepare(engine)
        broker = Broker(settings)
        stack = Stack(settings, engine, broker, sensorhub("client", ["client"], settings),
                      sensorhub("web", ["web", "--workers", str(workers)], settings))
        broker.start()
        start(stack.client)
        start(stack.web)
        yield stack
        check_not_died(stack.client)
        check_not_died(stack.web)
    finally:
        if stack is not None:
            stack.web.stop()
            stack.client.stop()
            stack.broker.stop()
        engine.dispose()
