"""The writer's watchdog: says once, in one line, when the database writer died or stopped making progress."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol


class Watched(Protocol):
    """What the watchdog reads of the writer."""

    heartbeat: float
    failed: threading.Event

    @property
    def alive(self) -> bool:
        """Whether the writer thread runs."""

    def waiting(self) -> int:
        """How many messages wait for the writer."""


class Watchdog:
    """Calls `on_failure` once, with one line saying why, if the writer dies or stops making progress with
    work queued for `stall_timeout` seconds (a retrying writer makes progress: it beats at each attempt)."""

    def __init__(self, writer: Watched, on_failure: Callable[[str], object], *, stall_timeout: float = 60.0,
                 interval: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self.writer = writer
        self.on_failure = on_failure
        self.stall_timeout = stall_timeout
        self.interval = interval
        #: What the writer's heartbeat is measured against (time.monotonic; a test seam).
        self.clock = clock
        self._reported = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Watch in a thread."""
        self._thread = threading.Thread(target=self._run, name="writer-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (before a clean stop of the writer)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def problem(self) -> str | None:
        """What is wrong with the writer right now, or None."""
        writer = self.writer
        if not writer.alive:
            return f"the database writer thread died ({writer.waiting()} message(s) queued)"
        stalled = self.clock() - writer.heartbeat
        if stalled > self.stall_timeout and writer.waiting() > 0:
            return (f"the database writer made no progress for {stalled:.0f} s with {writer.waiting()} "
                    "message(s) queued")
        return None

    def step(self) -> bool:
        """One look at the writer, as the watching thread takes one every `interval` (a test seam: no thread, no
        waiting): on a problem, give the writer up and call `on_failure`, only once; True if this call did."""
        if self._reported:
            return False
        problem = self.problem()
        if problem is None or self._stop.is_set():
            return False
        self._reported = True
        self.writer.failed.set()
        self.on_failure(problem)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.step():
                return
