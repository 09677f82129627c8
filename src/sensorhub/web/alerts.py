"""The alerts' JSON API (issue 25): active alerts and history, the rules, acknowledging and snoozing.

Reads go through the read-only database; what people decide (rules, acknowledgements, snoozes) is written through
`sensorhub.db.alerts` on the web server's one writable engine (`DecisionDatabase`, docs/security.md), with the
same protection as the LED and rename commands: a login once accounts exist, and the CSRF token. The ingest
workers notice a rule's change within about half a second (they poll `alert_rule`'s version).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from flask import Response, jsonify, request
from flask_babel import gettext as _
from sqlalchemy.exc import IntegrityError

from sensorhub.alertedit import edited, field_of, rule_fields
from sensorhub.alerting import Rule, RuleError
from sensorhub.db import alerts, alertviews
from sensorhub.timestamps import format_micros, to_micros
from sensorhub.web.api import Answer, ApiError, bp, json_body
from sensorhub.web.auth import control_required, visitor
from sensorhub.web.database import DecisionDatabase
from sensorhub.web.present import stored_iso
from sensorhub.web.state import web_state

logger = logging.getLogger(__name__)

#: The longest snooze (a longer silence is a rule to disable).
MAX_SNOOZE_MINUTES = 30 * 24 * 60
#: How far back `GET /api/alerts?offset=` pages the history.
MAX_OFFSET = 50_000
#: Who acknowledged, when nobody is logged in (no accounts).
ANONYMOUS = "anonyme"


def now_us() -> int:
    """Now, in µs since the epoch."""
    return time.time_ns() // 1000


def _iso(stored: str | None) -> str | None:
    return None if stored is None else stored_iso(stored)


def alert_json(row: alertviews.AlertRow, private: bool = True) -> dict[str, Any]:
    """An alert as the API gives it; without `private`, not who acknowledged it (an account's name)."""
    body: dict[str, Any] = {
        "id": row.id, "state": row.state, "severity": row.severity,
        "rule": {"id": row.rule_id, "name": row.rule_name, "metric": row.metric},
        "device": {"id": row.device_id, "name": row.device_name},
        "since": _iso(row.since), "fired_at": _iso(row.fired_at), "clearing_since": _iso(row.clearing_since),
        "resolved_at": _iso(row.resolved_at), "value": row.value, "last_value": row.last_value,
        "acked": row.acked_at is not None, "acked_by": row.acked_by, "acked_at": _iso(row.acked_at),
        "snoozed_until": _iso(row.snoozed_until), "reminders": row.reminders,
    }
    if not private:
        del body["acked_by"]
    return body


def decisions() -> DecisionDatabase:
    """The writable engine for people's alert decisions."""
    found = web_state().decisions
    if found is None:
        raise ApiError(_("ce serveur web n'écrit pas les décisions d'alerte"), 503)
    return found




def _refused(err: RuleError) -> ApiError:
    return ApiError(_("règle refusée : %(error)s", error=err), 400, field_of(err))


def _unknown_rule(rule_id: int) -> ApiError:
    return ApiError(_("aucune règle n'a l'identifiant %(id)s", id=rule_id), 404)


def _name_taken(name: str) -> ApiError:
    return ApiError(_("une règle s'appelle déjà « %(name)s »", name=name), 409, "name")


@bp.get("/alerts")
def alerts_index() -> Response:
    """Active alerts (the most urgent first), the latest resolved ones (`?limit=`, `?offset=`), waiting channels.

    Active: firing, then clearing, then pending; channels: those with notifications not delivered yet.
    """
    limit = request.args.get("limit", str(alertviews.HISTORY_LENGTH))
    if not limit.isdigit() or not 0 <= int(limit) <= alertviews.HISTORY_LENGTH:
        raise ApiError(_("le paramètre limit est un nombre de 0 à %(max)s", max=alertviews.HISTORY_LENGTH),
                       parameter="limit")
    offset = request.args.get("offset", "0")
    if not offset.isdigit() or int(offset) > MAX_OFFSET:
        raise ApiError(_("le paramètre offset est un nombre de 0 à %(max)s", max=MAX_OFFSET), parameter="offset")
    private = visitor().sees_private
    with web_state().database.connect() as conn:
        active = alertviews.active(conn)
        resolved = alertviews.history(conn, int(limit), int(offset))
        channels = alerts.channel_states(conn)
    return jsonify(
        active=[alert_json(row, private) for row in active], history=[alert_json(row, private) for row in resolved],
        channels=[{"channel": c.channel, "waiting": c.waiting, "oldest": _iso(c.oldest), "last_error": c.last_error}
                  for c in channels])


@bp.get("/alerts/rules")
def rules_index() -> Response:
    """Every alert rule, enabled or not, by name, with its one-line description."""
    with web_state().database.connect() as conn:
        rules = alerts.load_rules(conn)
    return jsonify(rules=[rule_fields(rule) for rule in rules])


def _store(rule: Rule, rule_id: int | None) -> Rule:
    """Add `rule` (`rule_id` None) or replace the rule `rule_id`; the stored rule."""
    try:
        with decisions().begin() as conn:
            taken = alerts.find_rule(conn, rule.name)
            if taken is not None and taken.id != rule_id and taken.name == rule.name:
                raise _name_taken(rule.name)
            if rule_id is None:
                rule_id = alerts.add_rule(conn, rule, now_us())
            elif not alerts.update_rule(conn, replace(rule, id=rule_id), now_us()):
                raise _unknown_rule(rule_id)
            stored = alerts.find_rule(conn, rule_id)
    except IntegrityError as err:
        if "unique" not in str(err.orig).lower():
            raise
        raise _name_taken(rule.name) from err  # the same name, added meanwhile by someone else
    assert stored is not None
    return stored


@bp.post("/alerts/rules")
@control_required
def rule_add() -> Answer:
    """Add a rule: `{"name", "metric", "operator", "trigger"}` and any other field; 201 with the rule."""
    try:
        rule = edited(None, json_body())
    except RuleError as err:
        raise _refused(err) from err
    stored = _store(rule, None)
    logger.info("alert rule %d %r added (%s) by %s from %s", stored.id, stored.name, stored.describe(),
                visitor().label, request.remote_addr)
    return jsonify(rule_fields(stored)), 201


@bp.put("/alerts/rules/<id:rule_id>")
@control_required
def rule_edit(rule_id: int) -> Answer:
    """Change a rule: the fields given (the others keep their value); 200 with the rule."""
    changes = json_body()
    with web_state().database.connect() as conn:
        current = alerts.find_rule(conn, rule_id)
    if current is None or current.id != rule_id:
        raise _unknown_rule(rule_id)
    try:
        rule = edited(current, changes)
    except RuleError as err:
        raise _refused(err) from err
    stored = _store(rule, rule_id)
    logger.info("alert rule %d %r changed (%s%s) by %s from %s", stored.id, stored.name, stored.describe(),
                "" if stored.enabled else ", disabled", visitor().label, request.remote_addr)
    return jsonify(rule_fields(stored)), 200


@bp.delete("/alerts/rules/<id:rule_id>")
@control_required
def rule_delete(rule_id: int) -> Answer:
    """Delete a rule and its alerts (notifications already written are still delivered)."""
    with decisions().begin() as conn:
        if not alerts.delete_rule(conn, rule_id):
            raise _unknown_rule(rule_id)
    logger.info("alert rule %d deleted by %s from %s", rule_id, visitor().label, request.remote_addr)
    return jsonify(status="deleted", id=rule_id), 200


def _active_alert(alert_id: int) -> alertviews.AlertRow:
    """The alert `alert_id`, which must be active: 404 if unknown, 409 if resolved."""
    with web_state().database.connect() as conn:
        found = alertviews.get_alert(conn, alert_id)
    if found is None:
        raise ApiError(_("aucune alerte n'a l'identifiant %(id)s", id=alert_id), 404)
    if found.state == "resolved":
        raise ApiError(_("l'alerte %(id)s est déjà résolue", id=alert_id), 409)
    return found


def _answer(alert_id: int) -> Answer:
    with web_state().database.connect() as conn:
        found = alertviews.get_alert(conn, alert_id)
    if found is None:  # its rule was deleted meanwhile
        raise ApiError(_("aucune alerte n'a l'identifiant %(id)s", id=alert_id), 404)
    return jsonify(alert_json(found, visitor().sees_private)), 200


@bp.post("/alerts/<id:alert_id>/ack")
@control_required
def alert_ack(alert_id: int) -> Answer:
    """Acknowledge an active alert (no more reminders), in the name of the logged-in account; 200 with the alert."""
    if request.content_length:
        body = json_body()
        if body:
            raise ApiError(_("champ inconnu : %(field)s", field=repr(sorted(body)[0][:30])))
    found = _active_alert(alert_id)
    current = visitor()
    who = current.user or (f"token {current.token}" if current.token is not None else ANONYMOUS)
    with decisions().begin() as conn:
        changed = alerts.acknowledge(conn, alert_id, who, now_us())
    if not changed:
        raise ApiError(_("l'alerte %(id)s est déjà résolue", id=alert_id), 409)
    logger.info("alert %d (%s on %s) acknowledged by %s from %s", alert_id, found.rule_name, found.device_name, who,
                request.remote_addr)
    return _answer(alert_id)


def snooze_until(body: dict[str, Any], now: int) -> int:
    """µs since the epoch of `{"until": ISO time}` or `{"minutes": n}`; ApiError if it is neither or not ahead."""
    if set(body) not in ({"until"}, {"minutes"}):
        raise ApiError(_('envoyez {"until": "heure ISO 8601"} ou {"minutes": n}'))
    limit = now + MAX_SNOOZE_MINUTES * 60_000_000
    if "minutes" in body:
        minutes = body["minutes"]
        if isinstance(minutes, bool) or not isinstance(minutes, int | float) or not 1 <= minutes <= MAX_SNOOZE_MINUTES:
            raise ApiError(_("le champ 'minutes' est un nombre de 1 à %(max)s", max=MAX_SNOOZE_MINUTES),
                           parameter="minutes")
        return now + round(minutes * 60_000_000)
    text = body["until"]
    try:
        if not isinstance(text, str):
            raise ValueError(text)
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ApiError(_("le champ 'until' est une heure ISO 8601 (2026-12-04T18:00:00+01:00)"),
                       parameter="until") from None
    until = to_micros(moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC))
    if not now < until <= limit:
        raise ApiError(_("le champ 'until' est une heure à venir, dans %(days)s jours au plus",
                         days=MAX_SNOOZE_MINUTES // 1440),
                       parameter="until")
    return until


@bp.post("/alerts/<id:alert_id>/snooze")
@control_required
def alert_snooze(alert_id: int) -> Answer:
    """Snooze an active alert's reminders: `{"until": ISO time}` or `{"minutes": n}`; 200 with the alert."""
    now = now_us()
    until = snooze_until(json_body(), now)
    found = _active_alert(alert_id)
    with decisions().begin() as conn:
        changed = alerts.snooze(conn, alert_id, until)
    if not changed:
        raise ApiError(_("l'alerte %(id)s est déjà résolue", id=alert_id), 409)
    logger.info("alert %d (%s on %s) snoozed until %s UTC by %s from %s", alert_id, found.rule_name,
                found.device_name, format_micros(until)[:19], visitor().label, request.remote_addr)
    return _answer(alert_id)
