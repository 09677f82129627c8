"""The dispatcher: one thread per channel, each with its own database connection, delivering the outbox's rows.

Each thread loops: take (`claim`) the next due row of its channel for a lease (BATCH), deliver it, then mark it
`delivered`, or `failed` with the error and the time of its next attempt (1 s, doubling at each attempt up to
SENSORHUB_NOTIFY_RETRY_MAX). After a failure the channel pauses as well (half as long, doubling with the failures
in a row) and gives back the rows it had taken, so a receiver that is down is tried once per pause, not once per
waiting notification, and a notification that always fails does not hold those behind it. A thread never
touches the writer's connection nor waits for it, and a failing channel holds only its own thread. Several
ingest workers each run one: the lease keeps two from sending a row at the same time; delivery is at least once
(a worker stopped between the receiver's answer and `delivered` sends it again), which the notification's id
lets a receiver see.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from sensorhub.db import alerts as outbox
from sensorhub.db.engine import make_engine
from sensorhub.errors import reason
from sensorhub.notify.channel import Channel, DeliveryError

logger = logging.getLogger(__name__)

#: Rows a channel's thread takes at once: one, so that a worker stopped (or killed) in the middle of a slow
#: delivery holds no other notification behind its lease.
BATCH = 1
#: Seconds between two looks at the outbox when nothing was due.
POLL = 0.5
#: The first wait after a failure (s); it doubles up to the ceiling (SENSORHUB_NOTIFY_RETRY_MAX).
RETRY_FIRST = 1.0
RETRY_MAX = 60.0
#: Seconds between two counts of what waits (the metrics' gauges).
COUNT_EVERY = 5.0
#: How long `stop` waits for the threads (a delivery in progress may take longer: its row's lease then expires
#: and it is sent again, at least once).
STOP_WAIT = 2.0


@dataclass
class ChannelStats:
    """A channel's figures since start (metrics), and what waits in the outbox as last counted."""

    delivered: int = 0
    failed: int = 0
    waiting: int = 0
    oldest: str | None = None
    failing: bool = False


def backoff(failures: int, first: float, ceiling: float) -> float:
    """Seconds before the next attempt after `failures` failures in a row (1 → `first`, doubling up to `ceiling`)."""
    return float(min(ceiling, first * 2.0 ** max(0, min(failures - 1, 40))))


def _now_us() -> int:
    return time.time_ns() // 1000


class Dispatcher:
    """Delivers the outbox's notifications through `channels` (by name), a thread each, until `stop`."""

    def __init__(self, database_url: str, channels: Mapping[str, Channel], *, retry_first: float = RETRY_FIRST,
                 retry_max: float = RETRY_MAX, poll: float = POLL, engine: Engine | None = None) -> None:
        self.channels = dict(channels)
        self.retry_first = retry_first
        self.retry_max = retry_max
        self.poll = poll
        self._own_engine = engine is None
        self.engine = engine if engine is not None else make_engine(database_url)
        self.stats = {name: ChannelStats() for name in self.channels}
        #: Waiting notifications per channel, as last counted (also of channels not configured any more).
        self.waiting: dict[str, int] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        #: Database failures in a row, per channel (reset by a successful look at the outbox).
        self._database_failures = dict.fromkeys(self.channels, 0)

    def start(self) -> None:
        """Start one thread per channel."""
        for name in self.channels:
            thread = threading.Thread(target=self._run, args=(name,), name=f"notify-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.channels:
            logger.info("notifications go through %s (retried up to every %g s until delivered)",
                        ", ".join(self.channels), self.retry_max)

    def stop(self, wait: float = STOP_WAIT) -> None:
        """Stop the threads; a delivery still in progress after `wait` seconds is left to its lease."""
        self._stop.set()
        deadline = time.monotonic() + wait
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        busy = [thread.name for thread in self._threads if thread.is_alive()]
        if busy:
            logger.warning("%s still delivering after %g s; left to its lease (it is sent again later)",
                           ", ".join(busy), wait)
        elif self._own_engine:
            self.engine.dispose()

    @property
    def alive(self) -> bool:
        """Whether every channel's thread runs."""
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    # -- a channel's thread ---------------------------------------------------------------------------------

    def _run(self, name: str) -> None:
        """Deliver `name`'s notifications until stopped; a database that fails is tried again."""
        while not self._stop.is_set():
            try:
                with self.engine.connect() as conn:
                    self._loop(conn, name)
            except SQLAlchemyError as err:
                failures = self._database_failures[name] = self._database_failures[name] + 1
                if failures in (1, 10) or failures % 100 == 0:
                    logger.warning("notifications (%s): the database failed (%s); trying again", name, reason(err))
                # Jitter: workers failing together (a lock) do not retry together.
                self._stop.wait(backoff(failures, 0.2, 5.0) * random.uniform(0.5, 1.0))
            except Exception:  # never a silent end: the channel's notifications would wait forever
                logger.exception("notifications (%s): unexpected failure; going on in 5 s", name)
                self._stop.wait(5.0)

    def _loop(self, conn: Connection, name: str) -> None:
        channel = self.channels[name]
        stats = self.stats[name]
        failures = 0
        counted = 0.0
        lease = BATCH * channel.timeout + 30.0
        while not self._stop.is_set():
            if time.monotonic() - counted >= COUNT_EVERY:
                self._count(conn)
                counted = time.monotonic()
            taken = outbox.claim(conn, name, _now_us(), lease, BATCH)
            self._database_failures[name] = 0
            if not taken:
                self._stop.wait(self.poll)
                continue
            for index, notification in enumerate(taken):
                if self._stop.is_set():
                    outbox.release(conn, [n.id for n in taken[index:]])
                    return
                try:
                    channel.send(notification.payload)
                except Exception as err:  # DeliveryError; anything else is a bug, kept apart like a refusal
                    if not isinstance(err, DeliveryError):
                        logger.exception("notifications (%s): sending %s failed unexpectedly", name, notification.id)
                    error = str(err) if isinstance(err, DeliveryError) else f"{type(err).__name__}: {err}"
                    failures += 1
                    stats.failed += 1
                    wait = backoff(notification.attempts + 1, self.retry_first, self.retry_max)
                    outbox.failed(conn, notification.id, error, _now_us() + round(wait * 1_000_000))
                    outbox.release(conn, [n.id for n in taken[index + 1:]])
                    if not stats.failing:
                        logger.warning("notifications (%s) failing: %s; kept and tried again", name, error)
                    stats.failing = True
                    self._count(conn)
                    counted = time.monotonic()
                    # Half the notification's own wait: another one due meanwhile is tried before it comes again (a
                    # notification that always fails does not hold the others), a channel that is down is tried
                    # once per pause, not once per waiting notification.
                    self._stop.wait(backoff(failures, self.retry_first, self.retry_max) / 2)
                    break
                outbox.delivered(conn, notification.id, _now_us())
                stats.delivered += 1
                failures = 0
                if stats.failing:
                    logger.info("notifications (%s) delivered again", name)
                    stats.failing = False

    def _count(self, conn: Connection) -> None:
        """Count what waits, per channel."""
        states = {state.channel: state for state in outbox.channel_states(conn)}
        conn.rollback()
        self.waiting = {channel: state.waiting for channel, state in states.items()}
        for name, stats in self.stats.items():
            state = states.get(name)
            stats.waiting = state.waiting if state is not None else 0
            stats.oldest = state.oldest if state is not None else None
