"""Alert rules as data and their state machine, pure: values and times in, transitions out (docs/alerts.md).

An alert of a rule for a device goes through

    (none) --condition holds--> pending --held for `for_seconds`--> firing
    pending --condition stops--> (none)                      firing --clear condition stops--> clearing
    clearing --clear condition holds again--> firing          clearing --held for `clear_for_seconds`--> resolved

The condition is `value operator trigger`; the clear condition is `value operator clear` (hysteresis: with
`> 80` and clear `70`, an alert fires above 80 and clears at 70 or below, so a value wandering around 80 fires
once). With a zero duration the alert skips the intermediate state. Time-driven steps (pending to firing,
clearing to resolved, reminders, silence) are the alert clock's (`sensorhub.db.alerts.due`), on the database.

Readings of a device whose value lies where no rule can change state (its *calm* interval, worked out from the
rules and the states) cost one comparison: `Tracker.calm`.
"""

from __future__ import annotations

import fnmatch
import functools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final


class Metric(StrEnum):
    """What a rule watches."""

    LIGHT = "light"
    LED = "led"
    BUTTON = "button"
    #: 1 online, 0 offline.
    PRESENCE = "presence"
    #: Seconds since the device, online, was last heard from (its `last_seen`).
    SILENCE = "silence"


class Severity(StrEnum):
    """How much an alert matters."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class State(StrEnum):
    """Where an alert is in its life."""

    PENDING = "pending"
    FIRING = "firing"
    CLEARING = "clearing"
    RESOLVED = "resolved"


OPERATORS: Final = (">", ">=", "<", "<=", "==", "!=")
SELECTORS: Final = ("all", "list", "pattern")
#: The values a metric takes: a rule's trigger outside them could never fire (refused when it is made).
RANGES: Final = {Metric.LIGHT: (0.0, 100.0), Metric.LED: (0.0, 1.0), Metric.BUTTON: (0.0, 1.0),
                 Metric.PRESENCE: (0.0, 1.0), Metric.SILENCE: (1.0, 366 * 86400.0)}
MAX_RULE_NAME: Final = 64
MAX_DEVICES_FIELD: Final = 1024


class RuleError(ValueError):
    """A rule that cannot be: the message says which field and why."""


def holds(operator: str, value: float, threshold: float) -> bool:
    """Whether `value operator threshold`."""
    if operator == ">":
        return value > threshold
    if operator == ">=":
        return value >= threshold
    if operator == "<":
        return value < threshold
    if operator == "<=":
        return value <= threshold
    if operator == "==":
        return value == threshold
    if operator == "!=":
        return value != threshold
    raise RuleError(f"unknown operator {operator!r}")


@dataclass(frozen=True, slots=True)
class Rule:
    """An alert rule, as stored in `alert_rule`."""

    id: int
    name: str
    metric: Metric
    operator: str
    trigger: float
    clear: float | None = None
    for_seconds: float = 0.0
    clear_for_seconds: float = 0.0
    severity: Severity = Severity.WARNING
    repeat_seconds: float | None = None
    selector: str = "all"
    devices: str = ""
    enabled: bool = True

    @property
    def clear_threshold(self) -> float:
        """The value the clear condition compares with (the trigger when the rule has no separate one)."""
        return self.trigger if self.clear is None else self.clear

    def fires(self, value: float) -> bool:
        """Whether `value` meets the condition."""
        return holds(self.operator, value, self.trigger)

    def stays(self, value: float) -> bool:
        """Whether a firing alert stays firing at `value` (the clear condition has not been met)."""
        return holds(self.operator, value, self.clear_threshold)

    def device_ids(self) -> frozenset[int]:
        """The ids of a `list` rule."""
        return _listed(self.devices)

    def selects(self, device_id: int, name: str) -> bool:
        """Whether the rule applies to this device."""
        if self.selector == "all":
            return True
        if self.selector == "list":
            return device_id in self.device_ids()
        return fnmatch.fnmatchcase(name.casefold(), self.devices.casefold())

    def describe(self) -> str:
        """The rule in one line, as the pages and the command line show it."""
        if self.metric is Metric.SILENCE:
            text = f"silence ≥ {_number(self.trigger)} s"
        else:
            text = f"{self.metric.value} {self.operator} {_number(self.trigger)}"
            if self.clear is not None and self.clear != self.trigger:
                text += f", clears at {_number(self.clear)}"
        if self.for_seconds:
            text += f", for {_number(self.for_seconds)} s"
        if self.clear_for_seconds:
            text += f", clear after {_number(self.clear_for_seconds)} s"
        return text


@functools.lru_cache(maxsize=4096)
def _listed(devices: str) -> frozenset[int]:
    """A `list` rule's ids, parsed once (`selects` asks for each device of the fleet)."""
    return frozenset(int(part) for part in devices.split(",") if part.strip())


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def check_rule(rule: Rule) -> Rule:
    """`rule` if it can be; raise RuleError naming the field otherwise."""
    if not 1 <= len(rule.name) <= MAX_RULE_NAME or rule.name != rule.name.strip():
        raise RuleError(f"name: 1 to {MAX_RULE_NAME} characters, no spaces around")
    if rule.operator not in OPERATORS:
        raise RuleError(f"operator: one of {' '.join(OPERATORS)}")
    if rule.selector not in SELECTORS:
        raise RuleError(f"selector: one of {', '.join(SELECTORS)}")
    if len(rule.devices) > MAX_DEVICES_FIELD:
        raise RuleError(f"devices: at most {MAX_DEVICES_FIELD} characters")
    if rule.selector == "list":
        if not re.fullmatch(r"\s*\d+\s*(,\s*\d+\s*)*", rule.devices):
            raise RuleError("devices: a comma-separated list of device ids")
    elif rule.selector == "pattern" and not rule.devices.strip():
        raise RuleError("devices: a name pattern such as `salle*`")
    low, high = RANGES[rule.metric]
    for label, value in (("trigger", rule.trigger), ("clear", rule.clear)):
        if value is None:
            continue
        if not math.isfinite(value) or not low <= value <= high:
            raise RuleError(f"{label}: {rule.metric.value} values lie between {_number(low)} and {_number(high)}")
    for label, seconds in (("for", rule.for_seconds), ("clear-for", rule.clear_for_seconds)):
        if not math.isfinite(seconds) or seconds < 0 or seconds > 366 * 86400:
            raise RuleError(f"{label}: a number of seconds, 0 or more")
    if rule.repeat_seconds is not None and (not math.isfinite(rule.repeat_seconds) or rule.repeat_seconds < 1):
        raise RuleError("repeat: a number of seconds, 1 or more")
    if rule.clear is not None and rule.operator in (">", ">=") and rule.clear > rule.trigger:
        raise RuleError("clear: for > and >=, at most the trigger (it clears below it)")
    if rule.clear is not None and rule.operator in ("<", "<=") and rule.clear < rule.trigger:
        raise RuleError("clear: for < and <=, at least the trigger (it clears above it)")
    if rule.metric is Metric.SILENCE and rule.operator not in (">", ">="):
        raise RuleError("operator: a silence rule fires when the silence lasts at least its trigger (>=)")
    return rule


class Step(StrEnum):
    """What a value does to an alert."""

    NOTHING = "nothing"
    PEND = "pend"  # (none) -> pending
    FIRE = "fire"  # (none) or pending -> firing
    CANCEL = "cancel"  # pending -> (none)
    CLEARING = "clearing"  # firing -> clearing
    RESOLVE = "resolve"  # firing or clearing -> resolved
    REFIRE = "refire"  # clearing -> firing


def step(rule: Rule, state: State | None, value: float) -> Step:
    """What `value` does to an alert of `rule` in `state` (None: no alert); durations are the clock's."""
    if state is None:
        if not rule.fires(value):
            return Step.NOTHING
        return Step.PEND if rule.for_seconds > 0 else Step.FIRE
    if state is State.PENDING:
        return Step.NOTHING if rule.fires(value) else Step.CANCEL
    if state is State.FIRING:
        if rule.stays(value):
            return Step.NOTHING
        return Step.CLEARING if rule.clear_for_seconds > 0 else Step.RESOLVE
    if state is State.CLEARING:
        return Step.REFIRE if rule.stays(value) else Step.NOTHING
    return Step.NOTHING


#: The whole line: nothing calm.
_NOWHERE = (0.0, 0.0)


def calm_interval(rule: Rule, state: State | None) -> tuple[float, float]:
    """The open interval (low, high) of values that leave an alert of `rule` in `state` as it is.

    Conservative: a value outside it may still change nothing (`step` decides). Equality operators have none.
    """
    if rule.operator in ("==", "!="):
        return _NOWHERE
    above = rule.operator in (">", ">=")
    if state is None or state is State.CLEARING:  # calm while the condition (clear condition) does not hold
        threshold = rule.trigger if state is None else rule.clear_threshold
        return (-math.inf, threshold) if above else (threshold, math.inf)
    if state is State.PENDING or state is State.FIRING:  # calm while it holds
        threshold = rule.trigger if state is State.PENDING else rule.clear_threshold
        return (threshold, math.inf) if above else (-math.inf, threshold)
    return (-math.inf, math.inf)


@dataclass(slots=True)
class Active:
    """What the ingest client knows of an alert that is not resolved."""

    alert_id: int
    state: State
    #: When the clock moves it on (µs since the epoch): fire a pending one, resolve a clearing one; None: never.
    due_us: int | None = None


@dataclass(slots=True)
class Tracker:
    """The rules of the value metrics, and the alerts not resolved, per device: what a reading must be checked
    against, and the calm interval of each device and metric (recomputed when a rule or an alert changes)."""

    rules: dict[int, Rule] = field(default_factory=dict)
    #: device id -> rule id -> the alert not resolved.
    active: dict[int, dict[int, Active]] = field(default_factory=dict)
    #: (device id, metric) -> the rules that apply, found on first use for each device.
    _applicable: dict[tuple[int, Metric], tuple[Rule, ...]] = field(default_factory=dict)
    _calm: dict[tuple[int, Metric], tuple[float, float]] = field(default_factory=dict)

    def set_rules(self, rules: Iterable[Rule]) -> None:
        """Replace the rules (their alerts are kept: reload them with `set_active`)."""
        self.rules = {rule.id: rule for rule in rules if rule.enabled}
        self._applicable.clear()
        self._calm.clear()

    def get(self, rule_id: int, device_id: int) -> Active | None:
        """The alert of `rule_id` for `device_id` not resolved, if any."""
        found = self.active.get(device_id)
        return None if found is None else found.get(rule_id)

    def set_active(self, alerts: Iterable[tuple[int, int, int, State, int | None]],
                   devices: Iterable[int] | None = None) -> None:
        """Replace what is known of the alerts not resolved (of `devices`; None: all): (alert id, rule id, device id,
        state, due µs)."""
        if devices is None:
            self.active = {}
            self._calm.clear()
        else:
            for device_id in devices:
                if self.active.pop(device_id, None) is not None:
                    self._forget_calm(device_id)
        for alert_id, rule_id, device_id, state, due_us in alerts:
            self.active.setdefault(device_id, {})[rule_id] = Active(alert_id, state, due_us)
            self._forget_calm(device_id)

    def update(self, rule_id: int, device_id: int, active: Active | None) -> None:
        """An alert changed (None: resolved or cancelled)."""
        if active is None:
            found = self.active.get(device_id)
            if found is not None:
                found.pop(rule_id, None)
                if not found:
                    del self.active[device_id]
        else:
            self.active.setdefault(device_id, {})[rule_id] = active
        rule = self.rules.get(rule_id)
        if rule is not None:
            self._calm.pop((device_id, rule.metric), None)

    def _forget_calm(self, device_id: int) -> None:
        for metric in Metric:
            self._calm.pop((device_id, metric), None)

    def forget_device(self, device_id: int) -> None:
        """A device was renamed or deleted: which rules apply is found again."""
        for metric in Metric:
            self._applicable.pop((device_id, metric), None)
            self._calm.pop((device_id, metric), None)

    def applicable(self, device_id: int, name: str, metric: Metric) -> tuple[Rule, ...]:
        """The enabled rules on `metric` that select this device."""
        key = (device_id, metric)
        found = self._applicable.get(key)
        if found is None:
            found = tuple(rule for rule in self.rules.values()
                          if rule.metric is metric and rule.selects(device_id, name))
            self._applicable[key] = found
        return found

    def calm(self, device_id: int, name: str, metric: Metric) -> tuple[float, float]:
        """The open interval of values of `metric` that change no alert of this device."""
        key = (device_id, metric)
        found = self._calm.get(key)
        if found is None:
            low, high = -math.inf, math.inf
            for rule in self.applicable(device_id, name, metric):
                active = self.get(rule.id, device_id)
                rule_low, rule_high = calm_interval(rule, active.state if active is not None else None)
                low, high = max(low, rule_low), min(high, rule_high)
            found = (low, high) if low < high else _NOWHERE
            self._calm[key] = found
        return found

    def steps(self, device_id: int, name: str, metric: Metric,
              value: float) -> Sequence[tuple[Rule, Active | None, Step]]:
        """The rules whose alert `value` changes, with the alert as it is and the step."""
        low, high = self.calm(device_id, name, metric)
        if low < value < high:
            return ()
        found = []
        for rule in self.applicable(device_id, name, metric):
            active = self.get(rule.id, device_id)
            change = step(rule, active.state if active is not None else None, value)
            if change is not Step.NOTHING:
                found.append((rule, active, change))
        return found
