"""Counters of discarded messages, with warnings rate-limited so a flood cannot flood the log."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

logger = logging.getLogger(__name__)


class Drops:
    """Counts what was discarded and why; logs at most one warning per reason per `interval` seconds."""

    def __init__(self, interval: float = 10.0, clock: object = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock if callable(clock) else time.monotonic
        self._lock = threading.Lock()
        self.total: Counter[str] = Counter()
        self._unreported: Counter[str] = Counter()
        self._last_warning: dict[str, float] = {}

    def add(self, reason: str, detail: str) -> None:
        """Count one discarded message; warn now if this reason has not warned for `interval` seconds."""
        now = float(self._clock())
        with self._lock:
            self.total[reason] += 1
            self._unreported[reason] += 1
            if now - self._last_warning.get(reason, -self.interval) < self.interval:
                return
            count = self._unreported.pop(reason)
            self._last_warning[reason] = now
        logger.warning("discarded %d message(s) (%s) in the last %.0f s; latest: %s",
                       count, reason, self.interval, detail)

    def snapshot(self) -> dict[str, int]:
        """Totals per reason since start."""
        with self._lock:
            return dict(self.total)
