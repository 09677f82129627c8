"""Alerts evaluated as readings are stored: in the writer's transaction, and by the alert clock between batches.

The writer calls `stage` with what a batch decided just before it commits (the alerts' transitions and their
outbox rows go in the same transaction), `tick` when the clock has something due (a pending alert to fire, a
clearing one to resolve, a reminder, a silence to notice: each in a transaction of its own), and `load`
whenever it reloads its state from the database. The rules and the state machine are sensorhub/alerting.py;
the SQL, conditional so that several workers agree, is sensorhub/db/alerts.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection

from sensorhub.alerting import Active, Metric, Rule, State, Step, Tracker
from sensorhub.db import alerts as db
from sensorhub.timestamps import micros_of

logger = logging.getLogger(__name__)

#: How often the clock looks at the database even when nothing it knows of is due: rules changed by the command
#: line or the web page, alerts another worker scheduled, silences.
CLOCK_PERIOD = 0.5

#: Delivered notifications are kept this long (what was sent, for the pages and for an audit), then deleted a
#: thousand at a time by the clock, once an hour.
OUTBOX_KEEP_DAYS = 30
_PURGE_PERIOD = 3600.0

#: The rows of one kind of reading in a batch: (device id, stored time, value).
Rows = Sequence[tuple[int, str, int]]


@dataclass
class AlertStats:
    """Counts since start (logs, tests, benchmarks)."""

    fired: int = 0
    resolved: int = 0
    reminders: int = 0
    evaluated: int = 0


class Alerts:
    """The writer's alert evaluation: rules and active alerts in memory, the database the authority."""

    def __init__(self, channels: Sequence[str] = (), *, shared: bool = False) -> None:
        #: The channels each notification is written for (an outbox row each).
        self.channels = tuple(channels)
        #: One of several workers: the batch's devices' alerts are read again before it is evaluated.
        self.shared = shared
        self.tracker = Tracker()
        self.stats = AlertStats()
        self._version: tuple[int, str] | None = None
        self._rules: dict[int, Rule] = {}
        #: time.monotonic() of the clock's next look, and of its next purge of delivered notifications.
        self._next_look = 0.0
        self._next_purge = 0.0

    @property
    def any(self) -> bool:
        """Whether there is a rule at all (the writer skips everything else when there is none)."""
        return bool(self._rules)

    def load(self, conn: Connection) -> None:
        """Read the rules and the active alerts (start, and after a failed batch)."""
        self._set_rules(conn)
        self.tracker.set_active(db.load_active(conn))

    def _set_rules(self, conn: Connection) -> None:
        self._version = db.rules_version(conn)
        rules = db.load_rules(conn)
        self._rules = {rule.id: rule for rule in rules if rule.enabled}
        self.tracker.set_rules(rule for rule in rules if rule.metric not in (Metric.SILENCE,))

    def renamed(self, device_ids: Iterable[int]) -> None:
        """Devices changed names: the pattern rules that select them are found again."""
        for device_id in device_ids:
            self.tracker.forget_device(device_id)

    def deleted(self, device_ids: Iterable[int]) -> None:
        """Devices were deleted (their alerts with them, ON DELETE CASCADE)."""
        gone = list(device_ids)
        self.tracker.set_active([], gone)
        self.renamed(gone)

    # -- in the batch's transaction ----------------------------------------------------------------------------

    def stage(self, conn: Connection, readings: dict[Metric, Rows], presence: Sequence[tuple[int, bool, int]],
              heard: Iterable[int], name_of: Callable[[int], str | None]) -> None:
        """Evaluate a batch's readings, presence changes (device id, online, µs) and devices heard from."""
        if not self._rules:
            return
        if self.shared:
            devices = {device_id for rows in readings.values() for device_id, _stamp, _value in rows}
            devices.update(device_id for device_id, _online, _at in presence)
            devices.update(heard)
            self.tracker.set_active(db.load_active(conn, devices), devices)
        for metric, rows in readings.items():
            for device_id, stamp, value in rows:
                name = name_of(device_id)
                if name is not None:
                    self._observe(conn, device_id, name, metric, float(value), stamp)
        for device_id, online, at_us in presence:
            name = name_of(device_id)
            if name is not None:
                self._observe(conn, device_id, name, Metric.PRESENCE, 1.0 if online else 0.0, None, at_us)
        self._end_silences(conn, heard, name_of)

    def _observe(self, conn: Connection, device_id: int, name: str, metric: Metric, value: float,
                 stamp: str | None, at_us: int | None = None) -> None:
        steps = self.tracker.steps(device_id, name, metric, value)
        if not steps:
            return
        at = at_us if at_us is not None else micros_of(stamp or "")
        for rule, active, change in steps:
            self.stats.evaluated += 1
            self._apply(conn, rule, device_id, active, change, value, at)

    def _apply(self, conn: Connection, rule: Rule, device_id: int, active: Active | None, change: Step,
               value: float, at: int) -> None:
        """Carry out one step of an alert (the clock's overdue step first, as if it had run in time)."""
        due = active.due_us if active is not None else None
        if active is not None and due is not None and due <= at:
            if change is Step.CANCEL:  # it held for the whole duration before this value: it fired
                if db.fire(conn, active.alert_id, rule, due, self.channels):
                    self.stats.fired += 1
                    active = Active(active.alert_id, State.FIRING)
                    self.tracker.update(rule.id, device_id, active)
                    change = Step.CLEARING if rule.clear_for_seconds > 0 and not rule.stays(value) else (
                        Step.RESOLVE if not rule.stays(value) else Step.NOTHING)
            elif change is Step.REFIRE and db.resolve(conn, active.alert_id, due, self.channels):
                # it had cleared for the whole duration before this value: resolved
                self.stats.resolved += 1
                self.tracker.update(rule.id, device_id, None)
                active = None
                change = Step.PEND if rule.for_seconds > 0 else Step.FIRE
        if change is Step.NOTHING:
            return
        if change in (Step.PEND, Step.FIRE):
            opened = db.open_alert(conn, rule, device_id, at, value, self.channels)
            if opened is None:  # another worker opened it first: take the database's word
                self.tracker.set_active(db.load_active(conn, [device_id]), [device_id])
                return
            alert_id, state = opened
            if state is State.FIRING:
                self.stats.fired += 1
                logger.info("alert %r fired on device %d (%s %g)", rule.name, device_id, rule.metric.value, value)
            due = at + round(rule.for_seconds * 1_000_000) if state is State.PENDING else None
            self.tracker.update(rule.id, device_id, Active(alert_id, state, due))
            return
        assert active is not None
        if change is Step.CANCEL:
            done = db.cancel(conn, active.alert_id)
            after: Active | None = None
        elif change is Step.CLEARING:
            done = db.start_clearing(conn, active.alert_id, rule, at, value)
            after = Active(active.alert_id, State.CLEARING, at + round(rule.clear_for_seconds * 1_000_000))
        elif change is Step.RESOLVE:
            done = db.resolve(conn, active.alert_id, at, self.channels, value)
            after = None
            if done:
                self.stats.resolved += 1
                logger.info("alert %r resolved on device %d", rule.name, device_id)
        else:  # REFIRE
            done = db.refire(conn, active.alert_id, rule, at, value)
            after = Active(active.alert_id, State.FIRING)
        if done:
            self.tracker.update(rule.id, device_id, after)
        else:  # the database says otherwise (another worker, the clock): take its word
            self.tracker.set_active(db.load_active(conn, [device_id]), [device_id])

    def _end_silences(self, conn: Connection, heard: Iterable[int], name_of: Callable[[int], str | None]) -> None:
        """A device heard from ends the silence alerts it has."""
        silences = [rule for rule in self._rules.values() if rule.metric is Metric.SILENCE]
        if not silences:
            return
        now = _now_us()
        for device_id in heard:
            for rule in silences:
                active = self.tracker.get(rule.id, device_id)
                if active is None:
                    continue
                if active.state is State.PENDING:
                    if db.cancel(conn, active.alert_id):
                        self.tracker.update(rule.id, device_id, None)
                elif db.resolve(conn, active.alert_id, now, self.channels):
                    self.stats.resolved += 1
                    self.tracker.update(rule.id, device_id, None)
                    logger.info("alert %r resolved: %s heard from again", rule.name, name_of(device_id) or device_id)

    # -- the clock ---------------------------------------------------------------------------------------------

    def clock_due(self) -> float:
        """Seconds until the clock wants to run (0: now)."""
        return max(0.0, self._next_look - time.monotonic())

    def tick(self, conn: Connection, now_us: int | None = None) -> int:
        """Rules changed, pending alerts to fire, clearing ones to resolve, reminders, silences; commits. Returns
        how many alerts changed."""
        self._next_look = time.monotonic() + CLOCK_PERIOD
        now = now_us if now_us is not None else _now_us()
        if db.rules_version(conn) != self._version:
            self.load(conn)
            logger.info("alert rules reloaded: %d enabled", len(self._rules))
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + _PURGE_PERIOD
            purged = db.purge_delivered(conn, now - OUTBOX_KEEP_DAYS * 86_400 * 1_000_000)
            if purged:
                logger.info("deleted %d notifications delivered more than %d days ago", purged, OUTBOX_KEEP_DAYS)
            conn.commit()
        if not self._rules:
            conn.rollback()
            return 0
        changed = 0
        for alert in db.due(conn, now):
            rule = self._rules.get(alert.rule_id)
            if rule is None:
                continue
            if alert.state is State.PENDING:
                if db.fire(conn, alert.alert_id, rule, micros_of(alert.due_at), self.channels):
                    self.stats.fired += 1
                    changed += 1
                    self.tracker.update(rule.id, alert.device_id, Active(alert.alert_id, State.FIRING))
                    logger.info("alert %r fired on device %d (held %g s)", rule.name, alert.device_id,
                                rule.for_seconds)
            elif alert.state is State.CLEARING:
                if db.resolve(conn, alert.alert_id, micros_of(alert.due_at), self.channels, states=(State.CLEARING,)):
                    self.stats.resolved += 1
                    changed += 1
                    self.tracker.update(rule.id, alert.device_id, None)
                    logger.info("alert %r resolved on device %d", rule.name, alert.device_id)
            elif alert.state is State.FIRING and db.remind(conn, alert, rule, now, self.channels):
                self.stats.reminders += 1
        for rule in self._rules.values():
            if rule.metric is Metric.SILENCE:
                names = {device_id: name for device_id, name, _last in db.silent(conn, rule, now)}
                # all in two statements: 10,000 devices falling silent together fire within the 2 s of issue 25
                for alert_id, device_id, state in db.open_alerts(conn, rule, names, now, rule.trigger, self.channels):
                    self.stats.fired += 1
                    changed += 1
                    self.tracker.update(rule.id, device_id, Active(alert_id, state))
                    logger.info("alert %r fired: %s silent for %g s", rule.name, names[device_id], rule.trigger)
        conn.commit()
        return changed


def _now_us() -> int:
    return time.time_ns() // 1000
