"""The ingest client's line every few seconds: joins, leaves, devices online and readings per second.

At 2,000 devices the broker's one line per connection buries everything else on `sensorhub run`'s console
(the broker's log file keeps them); this line says what they add up to.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from sensorhub.ingest.writer import WriterStats

logger = logging.getLogger(__name__)

#: Seconds between two summary lines.
SUMMARY_EVERY = 10.0


@dataclass
class Summary:
    """Turns the writer's running totals into one line per interval (none while nothing happens)."""

    stats: WriterStats
    every: float = SUMMARY_EVERY
    _last: float = field(default_factory=time.monotonic)
    _joins: int = 0
    _leaves: int = 0
    _readings: int = 0
    _quiet: bool = True

    def __post_init__(self) -> None:
        self._joins, self._leaves, self._readings = self._totals()

    def _totals(self) -> tuple[int, int, int]:
        return self.stats.joins, self.stats.leaves, sum(self.stats.stored.values())

    def line(self, now: float | None = None) -> str | None:
        """The summary of the interval that just ended, if one has; None otherwise or when all is quiet."""
        now = time.monotonic() if now is None else now
        elapsed = now - self._last
        if elapsed < self.every:
            return None
        joins, leaves, readings = self._totals()
        new_joins, new_leaves, new_readings = joins - self._joins, leaves - self._leaves, readings - self._readings
        self._last, self._joins, self._leaves, self._readings = now, joins, leaves, readings
        quiet = not (new_joins or new_leaves or new_readings or self.stats.online)
        if quiet and self._quiet:
            return None  # an idle stack says nothing; the first quiet interval after activity still does
        self._quiet = quiet
        return (f"last {elapsed:.0f} s: {new_joins} joined, {new_leaves} left, {self.stats.online} online, "
                f"{new_readings / elapsed:.0f} readings/s")

    def report(self, now: float | None = None) -> None:
        """Log the line if one is due."""
        text = self.line(now)
        if text is not None:
            logger.info("%s", text)
