"""Flood limits of the session engine: readings per device session (a token bucket each) and new devices per minute.

Both read no clock: they are given each message's time of arrival (µs since the epoch), so the engine stays
deterministic and a test drives them with made-up times. Both are transactional: what a batch took is given back
by `rollback` when its transaction fails, so a batch retried while the database cannot be written is not limited
twice (a board's readings accepted at the first attempt stay accepted at the next one).

Each worker holds its own limits (with several workers, each limits the share of the messages it receives).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

MINUTE_US = 60_000_000


class ReadingLimit:
    """At most `rate` readings a second per device on average, `burst` at once (one bucket per device, whose
    current session is the only one whose readings count); `rate` 0: no limit."""

    __slots__ = ("_buckets", "_per_us", "_undo", "burst", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(max(burst, 1))
        self._per_us = rate / 1_000_000
        #: device id -> [tokens, time of the last refill (µs)]
        self._buckets: dict[int, list[float]] = {}
        #: device id -> its bucket before the current batch (None: it had none)
        self._undo: dict[int, tuple[float, float] | None] = {}

    @property
    def enabled(self) -> bool:
        """Whether any reading is ever refused."""
        return self.rate > 0

    def allow(self, device_id: int, at: int) -> bool:
        """Take one reading of `device_id` arriving at `at`: True if within the limit."""
        bucket = self._buckets.get(device_id)
        if bucket is None:
            self._undo.setdefault(device_id, None)
            self._buckets[device_id] = [self.burst - 1, at]
            return True
        if device_id not in self._undo:
            self._undo[device_id] = (bucket[0], bucket[1])
        elapsed = at - bucket[1]
        if elapsed > 0:  # a clock stepped back refills nothing
            tokens = bucket[0] + elapsed * self._per_us
            bucket[0] = tokens if tokens < self.burst else self.burst
            bucket[1] = at
        if bucket[0] < 1:
            return False
        bucket[0] -= 1
        return True

    def commit(self) -> None:
        """The batch was committed: what it took stays taken."""
        self._undo.clear()

    def rollback(self) -> None:
        """The batch failed: give back what it took."""
        for device_id, before in self._undo.items():
            if before is None:
                self._buckets.pop(device_id, None)
            else:
                self._buckets[device_id] = [before[0], before[1]]
        self._undo.clear()

    def forget(self, device_ids: list[int]) -> None:
        """Drop the buckets of deleted devices."""
        for device_id in device_ids:
            self._buckets.pop(device_id, None)


class NewDeviceLimit:
    """At most `per_minute` new devices in any 60 s (a sliding window of their creation times); 0: no limit."""

    __slots__ = ("_taken", "_times", "per_minute")

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._times: deque[int] = deque()
        #: Creations taken by the current batch (the newest in `_times`).
        self._taken = 0

    def allow(self, at: int) -> bool:
        """Whether a new device may be created at `at`; if so, it is counted."""
        if not self.per_minute:
            return True
        times = self._times
        while times and times[0] <= at - MINUTE_US:
            times.popleft()
        if len(times) >= self.per_minute:
            return False
        times.append(at)
        self._taken += 1
        return True

    def commit(self) -> None:
        """The batch was committed: its devices stay counted."""
        self._taken = 0

    def rollback(self) -> None:
        """The batch failed: its devices were not created."""
        for _ in range(min(self._taken, len(self._times))):
            self._times.pop()
        self._taken = 0


@dataclass(frozen=True, slots=True)
class Limits:
    """The flood limits a writer's engines share (they outlive an engine rebuilt from the database)."""

    readings: ReadingLimit
    new_devices: NewDeviceLimit

    @classmethod
    def of(cls, readings_per_second: float = 0, readings_burst: int = 1, new_devices_per_minute: int = 0) -> Limits:
        """Limits with these settings (0: no limit)."""
        return cls(ReadingLimit(readings_per_second, readings_burst), NewDeviceLimit(new_devices_per_minute))

    def commit(self) -> None:
        """The batch was committed."""
        self.readings.commit()
        self.new_devices.commit()

    def rollback(self) -> None:
        """The batch failed."""
        self.readings.rollback()
        self.new_devices.rollback()
