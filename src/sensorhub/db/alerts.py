"""Alerts in the database: rules, the alerts' conditional transitions, the alert clock's queries, the outbox.

Every transition is a conditional statement (`... WHERE state = 'pending'`, an insert that the partial unique
index `ux_alert_active` lets through only when the rule has no active alert for the device): of two workers
(or a worker and the alert clock of another) deciding the same alert, one changes it and the other finds
nothing to change, so an alert fires once and is notified once. A transition that notifies writes its outbox
rows in the same statement's transaction (`enqueue`): committed together, or not at all.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from sensorhub.alerting import Metric, Rule, Severity, State
from sensorhub.db.dialect import execute
from sensorhub.timestamps import format_micros, micros_of

#: The channels a notification can go through (alert_outbox.channel).
CHANNELS = ("webhook", "email", "mqtt")

_RULE_COLUMNS = ("id, name, metric, operator, trigger_value, clear_value, for_seconds, clear_for_seconds, severity, "
                 "repeat_seconds, selector, devices, enabled")


def rule_of(row: Sequence[Any]) -> Rule:
    """A Rule from a row of _RULE_COLUMNS."""
    return Rule(id=int(row[0]), name=str(row[1]), metric=Metric(row[2]), operator=str(row[3]),
                trigger=float(row[4]), clear=None if row[5] is None else float(row[5]), for_seconds=float(row[6]),
                clear_for_seconds=float(row[7]), severity=Severity(row[8]),
                repeat_seconds=None if row[9] is None else float(row[9]), selector=str(row[10]),
                devices=str(row[11]), enabled=bool(row[12]))


def load_rules(conn: Connection) -> list[Rule]:
    """Every rule, enabled or not, by name."""
    return [rule_of(row) for row in conn.execute(text(f"SELECT {_RULE_COLUMNS} FROM alert_rule ORDER BY name"))]


def find_rule(conn: Connection, key: str | int) -> Rule | None:
    """The rule with this id or name."""
    if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
        row = conn.execute(text(f"SELECT {_RULE_COLUMNS} FROM alert_rule WHERE id = :id"), {"id": int(key)}).first()
        if row is not None:
            return rule_of(row)
    row = conn.execute(text(f"SELECT {_RULE_COLUMNS} FROM alert_rule WHERE name = :name"), {"name": str(key)}).first()
    return None if row is None else rule_of(row)


def rules_version(conn: Connection) -> tuple[int, str]:
    """Changes when a rule is added, changed or deleted (the ingest workers reload their rules then)."""
    row = conn.execute(text("SELECT count(*), max(changed_at) FROM alert_rule")).one()
    return int(row[0]), str(row[1] or "")


def _rule_values(rule: Rule) -> dict[str, object]:
    return {"name": rule.name, "metric": rule.metric.value, "operator": rule.operator, "trigger": rule.trigger,
            "clear": rule.clear, "for": rule.for_seconds, "clear_for": rule.clear_for_seconds,
            "severity": rule.severity.value, "repeat": rule.repeat_seconds, "selector": rule.selector,
            "devices": rule.devices, "enabled": rule.enabled}


def add_rule(conn: Connection, rule: Rule, now_us: int) -> int:
    """Insert `rule` (its id is ignored); return the new id. Not committed."""
    stamp = format_micros(now_us)
    row = conn.execute(text(
        "INSERT INTO alert_rule (name, metric, operator, trigger_value, clear_value, for_seconds, clear_for_seconds, "
        "severity, repeat_seconds, selector, devices, enabled, created_at, changed_at) VALUES (:name, :metric, "
        ":operator, :trigger, :clear, :for, :clear_for, :severity, :repeat, :selector, :devices, :enabled, :at, :at) "
        "RETURNING id"), {**_rule_values(rule), "at": stamp}).one()
    return int(row[0])


def update_rule(conn: Connection, rule: Rule, now_us: int) -> bool:
    """Replace the rule with `rule.id`; False if there is none. Its alerts stay (the workers re-check them)."""
    result = conn.execute(text(
        "UPDATE alert_rule SET name = :name, metric = :metric, operator = :operator, trigger_value = :trigger, "
        "clear_value = :clear, for_seconds = :for, clear_for_seconds = :clear_for, severity = :severity, "
        "repeat_seconds = :repeat, selector = :selector, devices = :devices, enabled = :enabled, changed_at = :at "
        "WHERE id = :id"), {**_rule_values(rule), "at": format_micros(now_us), "id": rule.id})
    return result.rowcount == 1


def delete_rule(conn: Connection, rule_id: int) -> bool:
    """Delete a rule and its alerts (their notifications already written stay in the outbox)."""
    conn.execute(text("DELETE FROM alert WHERE rule_id = :id"), {"id": rule_id})
    return conn.execute(text("DELETE FROM alert_rule WHERE id = :id"), {"id": rule_id}).rowcount == 1


# -- the alerts' transitions (in the writer's transaction) ------------------------------------------------------


def load_active(conn: Connection,
                device_ids: Iterable[int] | None = None) -> list[tuple[int, int, int, State, int | None]]:
    """(alert id, rule id, device id, state, due µs) of the alerts not resolved, of `device_ids` (None: all)."""
    query = "SELECT id, rule_id, device_id, state, due_at FROM alert WHERE state <> 'resolved'"
    if device_ids is not None:
        ids = sorted({int(i) for i in device_ids})
        if not ids:
            return []
        query += f" AND device_id IN ({', '.join(map(str, ids))})"
    return [(int(a), int(r), int(d), State(s), None if due is None or s == "firing" else micros_of(str(due)))
            for a, r, d, s, due in conn.execute(text(query))]


def _plus(at_us: int, seconds: float) -> str:
    return format_micros(at_us + round(seconds * 1_000_000))


def _reminder_due(rule: Rule, at_us: int) -> str | None:
    return None if rule.repeat_seconds is None else _plus(at_us, rule.repeat_seconds)


def open_alert(conn: Connection, rule: Rule, device_id: int, at_us: int, value: float,
               channels: Sequence[str]) -> tuple[int, State] | None:
    """The condition began to hold: a pending alert (or a firing one, notified, when the rule waits for nothing).

    None if the rule already has an active alert for the device (another worker opened it first).
    """
    stamp = format_micros(at_us)
    firing = rule.for_seconds <= 0
    row = conn.execute(text(
        "INSERT INTO alert (rule_id, device_id, state, since, fired_at, due_at, value, last_value, notified_at, "
        "reminders) VALUES (:rule, :device, :state, :since, :fired, :due, :value, :value, :notified, 0) "
        "ON CONFLICT (rule_id, device_id) WHERE state <> 'resolved' DO NOTHING RETURNING id"),
        {"rule": rule.id, "device": device_id, "state": (State.FIRING if firing else State.PENDING).value,
         "since": stamp, "fired": stamp if firing else None,
         "due": _reminder_due(rule, at_us) if firing else _plus(at_us, rule.for_seconds), "value": value,
         "notified": stamp if firing else None}).first()
    if row is None:
        return None
    alert_id = int(row[0])
    if firing:
        enqueue(conn, alert_id, "firing", at_us, channels)
    return alert_id, State.FIRING if firing else State.PENDING


def open_alerts(conn: Connection, rule: Rule, device_ids: Iterable[int], at_us: int, value: float,
                channels: Sequence[str]) -> list[tuple[int, int, State]]:
    """`open_alert` for many devices at once (the alert clock's silences): one statement, the notifications of the
    firing ones in one more. (alert id, device id, state) of each alert opened; a device whose rule already has an
    active alert (another worker opened it first) is left out."""
    ids = sorted({int(i) for i in device_ids})
    if not ids:
        return []
    stamp = format_micros(at_us)
    firing = rule.for_seconds <= 0
    state = State.FIRING if firing else State.PENDING
    # INSERT ... SELECT: SQLite needs the WHERE for its parser to tell ON CONFLICT from a join's ON.
    rows = conn.execute(text(
        "INSERT INTO alert (rule_id, device_id, state, since, fired_at, due_at, value, last_value, notified_at, "
        "reminders) SELECT :rule, d.id, :state, :since, :fired, :due, :value, :value, :notified, 0 FROM device d "
        f"WHERE d.id IN ({', '.join(map(str, ids))}) "
        "ON CONFLICT (rule_id, device_id) WHERE state <> 'resolved' DO NOTHING RETURNING id, device_id"),
        {"rule": rule.id, "state": state.value, "since": stamp, "fired": stamp if firing else None,
         "due": _reminder_due(rule, at_us) if firing else _plus(at_us, rule.for_seconds), "value": value,
         "notified": stamp if firing else None}).all()
    opened = [(int(alert_id), int(device_id), state) for alert_id, device_id in rows]
    if firing:
        enqueue_many(conn, [alert_id for alert_id, _device, _state in opened], "firing", at_us, channels)
    return opened


def cancel(conn: Connection, alert_id: int) -> bool:
    """A pending alert whose condition stopped holding: forgotten."""
    return conn.execute(text("DELETE FROM alert WHERE id = :id AND state = 'pending'"), {"id": alert_id}).rowcount == 1


def fire(conn: Connection, alert_id: int, rule: Rule, at_us: int, channels: Sequence[str],
         value: float | None = None) -> bool:
    """A pending alert whose condition held for the rule's duration: firing, notified."""
    stamp = format_micros(at_us)
    changed = conn.execute(text(
        "UPDATE alert SET state = 'firing', fired_at = :at, notified_at = :at, due_at = :due, "
        "value = COALESCE(:value, value) WHERE id = :id AND state = 'pending'"),
        {"at": stamp, "due": _reminder_due(rule, at_us), "value": value, "id": alert_id}).rowcount == 1
    if changed:
        enqueue(conn, alert_id, "firing", at_us, channels)
    return changed


def start_clearing(conn: Connection, alert_id: int, rule: Rule, at_us: int, value: float) -> bool:
    """A firing alert whose clear condition stopped holding: clearing, for the rule's clear duration."""
    return conn.execute(text(
        "UPDATE alert SET state = 'clearing', clearing_since = :at, due_at = :due, last_value = :value "
        "WHERE id = :id AND state = 'firing'"),
        {"at": format_micros(at_us), "due": _plus(at_us, rule.clear_for_seconds), "value": value,
         "id": alert_id}).rowcount == 1


def refire(conn: Connection, alert_id: int, rule: Rule, at_us: int, value: float) -> bool:
    """A clearing alert whose clear condition holds again: firing as before (not notified again)."""
    return conn.execute(text(
        "UPDATE alert SET state = 'firing', clearing_since = NULL, last_value = :value, "
        "due_at = CASE WHEN acked_at IS NULL THEN :due ELSE NULL END WHERE id = :id AND state = 'clearing'"),
        {"value": value, "due": _reminder_due(rule, at_us), "id": alert_id}).rowcount == 1


def resolve(conn: Connection, alert_id: int, at_us: int, channels: Sequence[str], value: float | None = None,
            states: Sequence[State] = (State.FIRING, State.CLEARING)) -> bool:
    """A firing or clearing alert whose condition cleared: resolved, notified."""
    allowed = ", ".join(f"'{state.value}'" for state in states)
    changed = conn.execute(text(
        f"UPDATE alert SET state = 'resolved', resolved_at = :at, due_at = NULL, "
        f"last_value = COALESCE(:value, last_value) WHERE id = :id AND state IN ({allowed})"),
        {"at": format_micros(at_us), "value": value, "id": alert_id}).rowcount == 1
    if changed:
        enqueue(conn, alert_id, "resolved", at_us, channels)
    return changed


def note_value(conn: Connection, alert_id: int, value: float) -> None:
    """The last value seen while the alert is active (shown on the pages)."""
    conn.execute(text("UPDATE alert SET last_value = :value WHERE id = :id"), {"value": value, "id": alert_id})


# -- the alert clock ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Due:
    """An active alert the clock has something to do with."""

    alert_id: int
    rule_id: int
    device_id: int
    state: State
    due_at: str
    acked: bool
    snoozed_until: str | None


def due(conn: Connection, now_us: int, limit: int = 10_000) -> list[Due]:
    """The active alerts whose `due_at` has come."""
    rows = conn.execute(text(
        "SELECT id, rule_id, device_id, state, due_at, acked_at IS NOT NULL, snoozed_until FROM alert "
        "WHERE due_at IS NOT NULL AND due_at <= :now ORDER BY due_at LIMIT :limit"),
        {"now": format_micros(now_us), "limit": limit})
    return [Due(int(r[0]), int(r[1]), int(r[2]), State(r[3]), str(r[4]), bool(r[5]), r[6]) for r in rows]


def next_due(conn: Connection) -> str | None:
    """The earliest `due_at` of an active alert."""
    row = conn.execute(text("SELECT min(due_at) FROM alert WHERE due_at IS NOT NULL")).one()
    return None if row[0] is None else str(row[0])


def remind(conn: Connection, alert: Due, rule: Rule, now_us: int, channels: Sequence[str]) -> bool:
    """A firing alert's reminder: notified again unless acknowledged or snoozed; the next one scheduled."""
    stamp = format_micros(now_us)
    if alert.acked or rule.repeat_seconds is None:
        next_at = None
    elif alert.snoozed_until is not None and alert.snoozed_until > stamp:
        next_at = alert.snoozed_until
    else:
        next_at = _reminder_due(rule, now_us)
    changed = conn.execute(text(
        "UPDATE alert SET due_at = :next, notified_at = CASE WHEN :send THEN :now ELSE notified_at END, "
        "reminders = reminders + CASE WHEN :send THEN 1 ELSE 0 END "
        "WHERE id = :id AND state = 'firing' AND due_at = :due"),
        {"next": next_at, "send": next_at is not None and next_at != alert.snoozed_until, "now": stamp,
         "id": alert.alert_id, "due": alert.due_at}).rowcount == 1
    if changed and next_at is not None and next_at != alert.snoozed_until:
        enqueue(conn, alert.alert_id, "reminder", now_us, channels)
    return changed


def silent(conn: Connection, rule: Rule, now_us: int) -> list[tuple[int, str, str]]:
    """(device id, name, last_seen) of the online devices the silence rule selects, unheard for its trigger, with
    no active alert of the rule."""
    cutoff = format_micros(now_us - round(rule.trigger * 1_000_000))
    rows = conn.execute(text(
        "SELECT d.id, d.name, d.last_seen FROM device d WHERE d.online AND d.last_seen <= :cutoff AND NOT EXISTS "
        "(SELECT 1 FROM alert a WHERE a.rule_id = :rule AND a.device_id = d.id AND a.state <> 'resolved')"),
        {"cutoff": cutoff, "rule": rule.id})
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows if rule.selects(int(r[0]), str(r[1]))]


# -- people's decisions ------------------------------------------------------------------------------------------


def acknowledge(conn: Connection, alert_id: int, who: str, now_us: int) -> bool:
    """Someone saw the alert: no more reminders. False if it is not active."""
    return conn.execute(text(
        "UPDATE alert SET acked_by = :who, acked_at = :at, due_at = CASE WHEN state = 'firing' THEN NULL ELSE due_at "
        "END WHERE id = :id AND state <> 'resolved'"),
        {"who": who[:64], "at": format_micros(now_us), "id": alert_id}).rowcount == 1


def snooze(conn: Connection, alert_id: int, until_us: int) -> bool:
    """No reminders until `until_us`. False if the alert is not active."""
    until = format_micros(until_us)
    # One parameter per use: PostgreSQL deduces a type for each, and `:until` in both the comparison and the
    # CASE's result was refused ("inconsistent types deduced for parameter").
    return conn.execute(text(
        "UPDATE alert SET snoozed_until = :until, due_at = CASE WHEN state = 'firing' AND acked_at IS NULL AND "
        "due_at IS NOT NULL AND due_at < :bound THEN :due ELSE due_at END WHERE id = :id AND state <> 'resolved'"),
        {"until": until, "bound": until, "due": until, "id": alert_id}).rowcount == 1


# -- the outbox --------------------------------------------------------------------------------------------------


_PAYLOAD_QUERY = (
    "SELECT a.id, a.state, a.since, a.fired_at, a.resolved_at, a.value, a.last_value, a.reminders, r.id, r.name, "
    "r.metric, r.operator, r.trigger_value, r.clear_value, r.severity, d.id, d.name, d.mac "
    "FROM alert a JOIN alert_rule r ON r.id = a.rule_id JOIN device d ON d.id = a.device_id")


def payload(conn: Connection, alert_id: int, event: str) -> dict[str, object]:
    """What a notification says: the alert, its rule and its device."""
    return _payload_of(conn.execute(text(_PAYLOAD_QUERY + " WHERE a.id = :id"), {"id": alert_id}).one(), event)


def _payload_of(row: Sequence[Any], event: str) -> dict[str, object]:
    """The payload of a row of _PAYLOAD_QUERY."""
    (_id, state, since, fired_at, resolved_at, value, last_value, reminders, rule_id, rule_name, metric, operator,
     trigger, clear, severity, device_id, device_name, mac) = row
    shown = last_value if event == "resolved" else value
    words = {"firing": "firing", "reminder": "still firing", "resolved": "resolved"}[event]
    text_line = f"[{severity}] {rule_name} {words} on {device_name}"
    if shown is not None and metric != "silence":
        text_line += f" ({metric} {_number(shown)})"
    return {"event": event, "alert": int(_id), "state": state, "severity": severity, "since": since,
            "fired_at": fired_at, "resolved_at": resolved_at, "value": value, "last_value": last_value,
            "reminders": int(reminders),
            "rule": {"id": int(rule_id), "name": rule_name, "metric": metric, "operator": operator,
                     "trigger": trigger, "clear": clear},
            "device": {"id": int(device_id), "name": device_name, "mac": mac}, "text": text_line}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


#: Straight to the driver (sensorhub.db.dialect): SQLAlchemy's parameter processing cost more than the insert.
_OUTBOX_INSERT = ("INSERT INTO alert_outbox (id, alert_id, channel, event, payload, created_at, attempts, "
                  "next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?)")


def enqueue(conn: Connection, alert_id: int, event: str, at_us: int, channels: Sequence[str]) -> list[str]:
    """One outbox row per channel for this alert's `event`, in the caller's transaction; their ids."""
    if not channels:
        return []
    return _insert_outbox(conn, [payload(conn, alert_id, event)], event, at_us, channels)


def enqueue_many(conn: Connection, alert_ids: Sequence[int], event: str, at_us: int,
                 channels: Sequence[str]) -> list[str]:
    """`enqueue` for many alerts: their payloads in one query, the rows in one executemany."""
    if not channels or not alert_ids:
        return []
    bodies = []
    ids = sorted({int(i) for i in alert_ids})
    for start in range(0, len(ids), 10_000):  # a statement of bounded size
        chosen = ", ".join(map(str, ids[start:start + 10_000]))
        bodies += [_payload_of(row, event) for row in conn.execute(text(f"{_PAYLOAD_QUERY} WHERE a.id IN ({chosen})"))]
    return _insert_outbox(conn, bodies, event, at_us, channels)


def _insert_outbox(conn: Connection, bodies: Sequence[dict[str, object]], event: str, at_us: int,
                   channels: Sequence[str]) -> list[str]:
    stamp = format_micros(at_us)
    rows = []
    for body in bodies:
        for channel in channels:
            notification = str(uuid.uuid4())
            rows.append((notification, body["alert"], channel, event,
                         json.dumps({**body, "id": notification}, separators=(",", ":"), ensure_ascii=False), stamp,
                         stamp))
    if rows:
        execute(conn, _OUTBOX_INSERT, rows)
    return [row[0] for row in rows]


@dataclass(frozen=True, slots=True)
class Notification:
    """An outbox row taken for delivery."""

    id: str
    channel: str
    event: str
    payload: dict[str, Any]
    attempts: int


def claim(conn: Connection, channel: str, now_us: int, lease_seconds: float, limit: int = 50) -> list[Notification]:
    """Take up to `limit` due notifications of `channel` for `lease_seconds` (another worker skips them meanwhile).

    Commits: a lease is only worth something once others see it.
    """
    now = format_micros(now_us)
    rows = conn.execute(text(
        "SELECT id, channel, event, payload, attempts FROM alert_outbox WHERE delivered_at IS NULL "
        "AND channel = :channel AND next_attempt_at <= :now AND (claimed_until IS NULL OR claimed_until <= :now) "
        "ORDER BY created_at, id LIMIT :limit"), {"channel": channel, "now": now, "limit": limit}).all()
    until = _plus(now_us, lease_seconds)
    taken = []
    for row in rows:
        result = conn.execute(text(
            "UPDATE alert_outbox SET claimed_until = :until WHERE id = :id AND delivered_at IS NULL AND "
            "(claimed_until IS NULL OR claimed_until <= :now)"), {"until": until, "id": row[0], "now": now})
        if result.rowcount == 1:
            taken.append(Notification(str(row[0]), str(row[1]), str(row[2]), json.loads(row[3]), int(row[4])))
    conn.commit()
    return taken


def delivered(conn: Connection, notification_id: str, now_us: int) -> None:
    """The channel took the notification. Commits."""
    conn.execute(text("UPDATE alert_outbox SET delivered_at = :at, attempts = attempts + 1, claimed_until = NULL, "
                      "last_error = NULL WHERE id = :id"), {"at": format_micros(now_us), "id": notification_id})
    conn.commit()


def failed(conn: Connection, notification_id: str, error: str, retry_at_us: int) -> None:
    """The channel refused or could not be reached: tried again at `retry_at_us`. Commits."""
    conn.execute(text("UPDATE alert_outbox SET attempts = attempts + 1, claimed_until = NULL, last_error = :error, "
                      "next_attempt_at = :next WHERE id = :id"),
                 {"error": error[:512], "next": format_micros(retry_at_us), "id": notification_id})
    conn.commit()


def purge_delivered(conn: Connection, before_us: int, limit: int = 1000) -> int:
    """Delete up to `limit` notifications delivered and made before `before_us`; not committed."""
    return conn.execute(text(
        "DELETE FROM alert_outbox WHERE id IN (SELECT id FROM alert_outbox WHERE delivered_at IS NOT NULL AND "
        "created_at < :before ORDER BY created_at LIMIT :limit)"),
        {"before": format_micros(before_us), "limit": limit}).rowcount


@dataclass(frozen=True, slots=True)
class ChannelState:
    """How a channel is doing: what waits, since when, and its last error."""

    channel: str
    waiting: int
    oldest: str | None
    last_error: str | None


def channel_states(conn: Connection) -> list[ChannelState]:
    """Per channel with notifications waiting: their count, the oldest, the latest error."""
    found = []
    for channel, waiting, oldest in conn.execute(text(
            "SELECT channel, count(*), min(created_at) FROM alert_outbox WHERE delivered_at IS NULL GROUP BY channel "
            "ORDER BY channel")):
        error = conn.execute(text(
            "SELECT last_error FROM alert_outbox WHERE delivered_at IS NULL AND channel = :channel AND last_error IS "
            "NOT NULL ORDER BY next_attempt_at DESC LIMIT 1"), {"channel": channel}).scalar()
        found.append(ChannelState(str(channel), int(waiting), oldest, error))
    return found


def release(conn: Connection, notification_ids: Sequence[str]) -> None:
    """Give back the lease on notifications taken but not tried (a worker stopping, a channel failing): another
    worker, or this one, takes them again at once. Commits."""
    for notification_id in notification_ids:
        conn.execute(text("UPDATE alert_outbox SET claimed_until = NULL WHERE id = :id AND delivered_at IS NULL"),
                     {"id": notification_id})
    conn.commit()
