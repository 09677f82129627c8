"""Editing alert rules from outside (the API, the `/alertes` page, `sensorhub alert`): a rule as named fields,
and a rule made or changed from some of them, checked by `alerting.check_rule`. Pure: no database.

The fields are the API's JSON keys (docs/api.md); the command line's options map onto the same names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final

from sensorhub.alerting import Metric, Rule, RuleError, Severity, check_rule

#: A rule's editable fields, in the order the API gives them.
FIELDS: Final = ("name", "metric", "operator", "trigger", "clear", "for", "clear_for", "severity", "repeat",
                 "selector", "devices", "enabled")
#: The fields a new rule must be given (the others have the defaults of `alerting.Rule`).
REQUIRED: Final = ("name", "metric", "operator", "trigger")
_ATTRIBUTES: Final = {"trigger": "trigger", "clear": "clear", "for": "for_seconds", "clear_for": "clear_for_seconds",
                      "repeat": "repeat_seconds"}
_NULLABLE: Final = ("clear", "repeat")
#: check_rule's labels (the text before its ':') -> the field they name.
_LABELS: Final = {"clear-for": "clear_for"}


def rule_fields(rule: Rule) -> dict[str, Any]:
    """The rule as its fields (with `id` first and `description`, `describe()`'s line, last)."""
    return {"id": rule.id, "name": rule.name, "metric": rule.metric.value, "operator": rule.operator,
            "trigger": rule.trigger, "clear": rule.clear, "for": rule.for_seconds, "clear_for": rule.clear_for_seconds,
            "severity": rule.severity.value, "repeat": rule.repeat_seconds, "selector": rule.selector,
            "devices": rule.devices, "enabled": rule.enabled, "description": rule.describe()}


def field_of(err: RuleError) -> str | None:
    """The field a RuleError names (check_rule's messages begin with it), if it is one of FIELDS."""
    label = str(err).split(":", 1)[0].strip()
    label = _LABELS.get(label, label)
    return label if label in FIELDS else None


def _number(name: str, value: Any) -> float | None:
    if value is None and name in _NULLABLE:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RuleError(f"{name}: a number" + (" or null" if name in _NULLABLE else ""))
    return float(value)


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise RuleError(f"{name}: a string")
    return value


def edited(base: Rule | None, changes: Mapping[str, Any]) -> Rule:
    """`base` with `changes` applied (a new rule, id 0, when `base` is None: REQUIRED fields needed), checked.

    Raise RuleError naming the field for an unknown or missing field, a value of the wrong type, or a rule
    that cannot be (check_rule).
    """
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        raise RuleError(f"{unknown[0][:30]}: not a field of a rule ({', '.join(FIELDS)})")
    if base is None:
        missing = [name for name in REQUIRED if name not in changes]
        if missing:
            raise RuleError(f"{missing[0]}: required")
        base = Rule(id=0, name="", metric=Metric.LIGHT, operator=">", trigger=0.0)
    values: dict[str, Any] = {}
    for name, value in changes.items():
        if name in _ATTRIBUTES:
            values[_ATTRIBUTES[name]] = _number(name, value)
        elif name == "enabled":
            if not isinstance(value, bool):
                raise RuleError("enabled: true or false")
            values["enabled"] = value
        elif name == "metric":
            try:
                values["metric"] = Metric(_text(name, value))
            except ValueError:
                raise RuleError(f"metric: one of {', '.join(m.value for m in Metric)}") from None
        elif name == "severity":
            try:
                values["severity"] = Severity(_text(name, value))
            except ValueError:
                raise RuleError(f"severity: one of {', '.join(s.value for s in Severity)}") from None
        else:
            values[name] = _text(name, value)
    rule = replace(base, **values)
    if rule.selector == "all" and "devices" not in changes:
        rule = replace(rule, devices="")  # switching to `all` drops the old list or pattern
    return check_rule(rule)
