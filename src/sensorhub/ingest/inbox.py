"""What paho's network thread and the pipe reader hand the database writer: a queue that never holds paho for long.

paho calls `on_message` in its network thread, the one that also answers the broker's keepalive. If that thread
waited for room while the database is away, the broker would drop the connection after 1.5 keepalives. So:

- acknowledged messages (QoS 1/2), joins, leaves, commands and the client's own events always go in: the broker
  sends at most its inflight window (20) of messages we have not acknowledged, and we acknowledge only after
  the commit, so they are bounded by the broker, not here;
- a QoS 0 reading takes one of `room` places; when none frees within `wait` seconds it is shed (the caller
  counts it), and readings go on being shed without waiting until the inbox is back under `resume` of its
  room: a long database outage costs QoS 0 readings (counted), never the connection or a QoS 1/2 message.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")

#: How long a QoS 0 reading may wait for room before it is shed (well under the keepalive of 1 s and more).
WAIT = 0.25
#: Once shedding, readings are taken again when the inbox is back under this share of its room.
RESUME = 0.9


class Empty(Exception):
    """Nothing arrived in time."""


class Inbox(Generic[T]):
    """A FIFO of items for one consumer; `bounded(item)` says which items take a place of the room."""

    def __init__(self, room: int, bounded: Callable[[T], bool], *, wait: float = WAIT, resume: float = RESUME,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if room < 1:
            raise ValueError("an inbox needs room for at least one item")
        self.room = room
        self.wait = wait
        self.resume_below = int(room * resume)
        self._bounded = bounded
        self._clock = clock
        self._items: deque[T] = deque()
        self._taken = 0  # places of the room held by queued items
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._freed = threading.Condition(self._lock)
        #: Whether bounded items are being shed without waiting (until the inbox drains under resume_below).
        self.shedding = False
        #: How many bounded items were shed since the start.
        self.shed = 0

    def put(self, item: T) -> bool:
        """Queue `item`; False if it was shed (only a bounded item, after `wait` without room, or while shedding)."""
        with self._lock:
            if self._bounded(item):
                if self.shedding and self._taken >= self.resume_below:
                    self.shed += 1
                    return False
                self.shedding = False
                deadline = self._clock() + self.wait
                while self._taken >= self.room:
                    left = deadline - self._clock()
                    if left <= 0:
                        self.shedding = True
                        self.shed += 1
                        return False
                    self._freed.wait(left)
                self._taken += 1
            self._items.append(item)
            self._arrived.notify()
            return True

    def put_many(self, items: Iterable[T]) -> None:
        """Queue several items at once, so that the consumer finds them all together (never shed: a test seam)."""
        with self._lock:
            for item in items:
                self._taken += self._bounded(item)
                self._items.append(item)
            self._arrived.notify()

    def get(self, timeout: float | None = None) -> T:
        """The oldest item, waiting up to `timeout` seconds (None: as long as it takes; 0: not at all)."""
        with self._lock:
            if timeout is None:
                while not self._items:
                    self._arrived.wait()
            elif not self._items and (timeout <= 0 or not self._arrived.wait_for(lambda: self._items, timeout)):
                raise Empty
            item = self._items.popleft()
            if self._bounded(item):
                self._taken -= 1
                self._freed.notify()
            return item

    def get_nowait(self) -> T:
        """The oldest item, or Empty."""
        return self.get(0)

    def qsize(self) -> int:
        """How many items are queued."""
        return len(self._items)

    def empty(self) -> bool:
        """Whether nothing is queued."""
        return not self._items
