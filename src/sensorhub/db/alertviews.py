"""What the pages, the API and `sensorhub alert active` read of the alerts: active ones first, history, counts.

Active means not resolved (pending, firing, clearing); the badge and the cards count what is actually alarming,
firing and clearing. Every query on all active alerts goes through the partial index `ux_alert_active` (its
condition, `state <> 'resolved'`, is repeated in each WHERE so that a planner may use it; SQLite, which prefers
a scan of the covering index `ix_alert_device` over every alert, history included, is told to with `INDEXED BY`):
its cost follows the active alerts, never the history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

#: The states shown first, in this order (resolved is history).
ACTIVE_ORDER = ("firing", "clearing", "pending")
#: How many resolved alerts a page (or `GET /api/alerts`) shows at most.
HISTORY_LENGTH = 50

_ACTIVE = "a.state <> 'resolved'"
_ALARMING = "a.state <> 'resolved' AND a.state IN ('firing', 'clearing')"
_COLUMNS = ("a.id, a.state, r.severity, a.rule_id, r.name, r.metric, a.device_id, d.name, a.since, a.fired_at, "
            "a.clearing_since, a.resolved_at, a.value, a.last_value, a.acked_by, a.acked_at, a.snoozed_until, "
            "a.reminders")
_FROM = "FROM alert a{hint} JOIN alert_rule r ON r.id = a.rule_id JOIN device d ON d.id = a.device_id"
_STATE_RANK = "CASE a.state WHEN 'firing' THEN 0 WHEN 'clearing' THEN 1 ELSE 2 END"
_SEVERITY_RANK = "CASE r.severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END"
_SEVERITY_ORDER = ("critical", "warning", "info")


@dataclass(frozen=True, slots=True)
class AlertRow:
    """An alert with its rule's name and severity and its device's name; times as stored (UTC text)."""

    id: int
    state: str
    severity: str
    rule_id: int
    rule_name: str
    metric: str
    device_id: int
    device_name: str
    since: str
    fired_at: str | None
    clearing_since: str | None
    resolved_at: str | None
    value: float | None
    last_value: float | None
    acked_by: str | None
    acked_at: str | None
    snoozed_until: str | None
    reminders: int

    def snoozed(self, now: str) -> bool:
        """Whether its reminders are snoozed at `now` (a stored time text)."""
        return self.snoozed_until is not None and self.snoozed_until > now


@dataclass(frozen=True, slots=True)
class DeviceAlerts:
    """A device's firing and clearing alerts: how many, and the highest severity among them."""

    count: int
    severity: str


def _active_index(conn: Connection) -> str:
    """`INDEXED BY` the partial index of active alerts, on SQLite (PostgreSQL's planner picks it by itself)."""
    return " INDEXED BY ux_alert_active" if conn.dialect.name == "sqlite" else ""


def _row(row: Sequence[Any]) -> AlertRow:
    return AlertRow(int(row[0]), str(row[1]), str(row[2]), int(row[3]), str(row[4]), str(row[5]), int(row[6]),
                    str(row[7]), str(row[8]), row[9], row[10], row[11], row[12], row[13], row[14], row[15], row[16],
                    int(row[17]))


def active(conn: Connection, device_id: int | None = None) -> list[AlertRow]:
    """The alerts not resolved (of one device, or all): firing, then clearing, then pending; the most severe and
    the newest first within each."""
    where = _ACTIVE + (" AND a.device_id = :device" if device_id is not None else "")
    source = _FROM.format(hint="" if device_id is not None else _active_index(conn))  # one device: ix_alert_device
    rows = conn.execute(text(f"SELECT {_COLUMNS} {source} WHERE {where} "
                             f"ORDER BY {_STATE_RANK}, {_SEVERITY_RANK}, a.since DESC, a.id DESC"),
                        {"device": device_id})
    return [_row(row) for row in rows]


def history(conn: Connection, limit: int = HISTORY_LENGTH, offset: int = 0) -> list[AlertRow]:
    """Resolved alerts, the most recently resolved first."""
    rows = conn.execute(text(f"SELECT {_COLUMNS} {_FROM.format(hint='')} WHERE a.state = 'resolved' "
                             "ORDER BY a.resolved_at DESC, a.id DESC LIMIT :limit OFFSET :offset"),
                        {"limit": max(0, limit), "offset": max(0, offset)})
    return [_row(row) for row in rows]


def get_alert(conn: Connection, alert_id: int) -> AlertRow | None:
    """One alert, active or resolved."""
    row = conn.execute(text(f"SELECT {_COLUMNS} {_FROM.format(hint='')} WHERE a.id = :id"), {"id": alert_id}).first()
    return None if row is None else _row(row)


def active_count(conn: Connection) -> int:
    """How many alerts are firing or clearing (the navigation's badge, on every page)."""
    return int(conn.execute(text(f"SELECT count(*) FROM alert a{_active_index(conn)} WHERE {_ALARMING}")).scalar_one())


def active_by_device(conn: Connection, device_ids: Sequence[int] | None = None) -> dict[int, DeviceAlerts]:
    """Per device with firing or clearing alerts (among `device_ids`, or all): their count and highest severity."""
    rows = conn.execute(text(
        f"SELECT a.device_id, r.severity, count(*) FROM alert a{_active_index(conn)} "
        f"JOIN alert_rule r ON r.id = a.rule_id "
        f"WHERE {_ALARMING} GROUP BY a.device_id, r.severity")).all()
    wanted = None if device_ids is None else set(device_ids)
    found: dict[int, DeviceAlerts] = {}
    for device_id, severity, count in rows:
        device_id = int(device_id)
        if wanted is not None and device_id not in wanted:
            continue
        known = found.get(device_id)
        if known is None:
            found[device_id] = DeviceAlerts(int(count), str(severity))
        else:
            worst = min(known.severity, str(severity), key=_SEVERITY_ORDER.index)
            found[device_id] = DeviceAlerts(known.count + int(count), worst)
    return found
