"""Alerts on the web (issue 25): /alertes, the navigation's badge, the cards and the device page, the JSON API
(rules, acknowledge, snooze) through Flask's test client on a real database (PostgreSQL too where it is cheap);
`sensorhub alert ...` as a real process; and the page's form in Debian's headless Chromium."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from playwright.sync_api import Browser, expect
from sqlalchemy import Engine, event, text

from sensorhub import accounts
from sensorhub.alertedit import edited, field_of
from sensorhub.alerting import Metric, Rule, RuleError, Severity
from sensorhub.config import Settings
from sensorhub.db import alerts, alertviews
from sensorhub.protocol import Topic
from sensorhub.timestamps import format_micros, to_micros
from sensorhub.web import create_app
from sensorhub.web.state import web_state
from tests.devices import RawDevice
from tests.factories import add_device
from tests.stack import running_stack, web_server, web_url
from tests.support import both_databases, wait_for

PASSWORD = "correct horse battery"
NOW_US = time.time_ns() // 1000


# -- helpers -----------------------------------------------------------------------------------------------------


def token_of(client: FlaskClient, path: str = "/accueil") -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]+)"', client.get(path).get_data(as_text=True))
    assert found, "no csrf-token meta tag"
    return found[1]


def send(client: FlaskClient, method: str, path: str, body: Any = None, token: str | None = "") -> Any:
    """A JSON request with the CSRF header (token "" : fetch one; None: none)."""
    if token == "":
        token = token_of(client)
    headers = {"X-CSRFToken": token} if token else {}
    return client.open(path, method=method, json=body, headers=headers)


def log_in(client: FlaskClient, name: str) -> None:
    page = client.get("/login").get_data(as_text=True)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found
    assert client.post("/login", data={"csrf_token": found[1], "name": name, "password": PASSWORD}).status_code == 302


def make_rule(engine: Engine, name: str, metric: Metric = Metric.LIGHT, operator: str = "<", trigger: float = 10,
              **fields: Any) -> Rule:
    rule = Rule(id=0, name=name, metric=metric, operator=operator, trigger=trigger, **fields)
    with engine.begin() as conn:
        rule_id = alerts.add_rule(conn, rule, NOW_US)
    return replace(rule, id=rule_id)


def open_alert(engine: Engine, rule: Rule, device_id: int, value: float = 5.0, ago_s: float = 60) -> int:
    """An active alert of `rule` for the device, as the ingest client would open it (firing unless `for`)."""
    with engine.begin() as conn:
        opened = alerts.open_alert(conn, rule, device_id, NOW_US - round(ago_s * 1e6), value, channels=())
    assert opened is not None
    return opened[0]


def alert_row(engine: Engine, alert_id: int) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT state, acked_by, acked_at, snoozed_until, due_at FROM alert WHERE id = :id"),
                           {"id": alert_id}).one()
    return dict(row._mapping)


def rule_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM alert_rule")).scalar_one())


@pytest.fixture
def scene(engine: Engine) -> dict[str, Any]:
    """Two devices; a firing critical alert, a pending one, a resolved one; a webhook that fails."""
    salle = add_device(engine, "salle1", 1)
    cave = add_device(engine, "cave", 2)
    dark = make_rule(engine, "sombre", clear=20, severity=Severity.CRITICAL, repeat_seconds=600)
    slow = make_rule(engine, "lent", for_seconds=300)
    hot = make_rule(engine, "trop clair", operator=">", trigger=90)
    firing = open_alert(engine, dark, salle, 4)
    pending = open_alert(engine, slow, cave, 3)
    old = open_alert(engine, hot, cave, 95, ago_s=3600)
    with engine.begin() as conn:
        assert alerts.resolve(conn, old, NOW_US - 1_800_000_000, channels=(), value=50)
        [notification] = alerts.enqueue(conn, firing, "firing", NOW_US, ("webhook",))
    with engine.connect() as conn:
        alerts.failed(conn, notification, "HTTP 502 from ntfy.example", NOW_US + 60_000_000)
    return {"salle": salle, "cave": cave, "dark": dark, "slow": slow, "hot": hot, "firing": firing,
            "pending": pending, "old": old}


# -- the read queries --------------------------------------------------------------------------------------------


@both_databases
def test_the_read_queries_put_firing_first_and_count_only_what_alarms(engine: Engine, scene: dict[str, Any]) -> None:
    with engine.connect() as conn:
        active = alertviews.active(conn)
        assert [(a.id, a.state) for a in active] == [(scene["firing"], "firing"), (scene["pending"], "pending")]
        assert active[0].device_name == "salle1" and active[0].rule_name == "sombre"
        assert active[0].severity == "critical" and active[0].value == 4
        assert [a.id for a in alertviews.history(conn)] == [scene["old"]]
        assert alertviews.history(conn)[0].last_value == 50
        assert alertviews.active_count(conn) == 1  # pending is not alarming yet
        assert alertviews.active_by_device(conn) == {scene["salle"]: alertviews.DeviceAlerts(1, "critical")}
        assert alertviews.active_by_device(conn, [scene["cave"]]) == {}
        assert [a.id for a in alertviews.active(conn, scene["cave"])] == [scene["pending"]]
        assert alertviews.get_alert(conn, 999) is None


def test_the_badge_count_reads_the_partial_index_of_active_alerts_only(engine: Engine) -> None:
    statements: list[str] = []

    def note(*args: Any) -> None:
        statements.append(args[2])

    with engine.connect() as conn:
        event.listen(conn, "before_cursor_execute", note)
        alertviews.active_count(conn)
        alertviews.active_by_device(conn)
        alertviews.active(conn)
        event.remove(conn, "before_cursor_execute", note)
        assert len(statements) == 3
        for statement in statements:
            plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}"))
            assert "INDEX ux_alert_active" in plan and "ix_alert_device" not in plan, (statement, plan)


# -- the pages ---------------------------------------------------------------------------------------------------


@both_databases
def test_the_alertes_page_shows_active_alerts_first_then_channels_history_and_rules(
        client: FlaskClient, scene: dict[str, Any]) -> None:
    answer = client.get("/alertes")
    assert answer.status_code == 200
    html = answer.get_data(as_text=True)
    assert "<h1>Alertes</h1>" in html and 'aria-current="page" data-nav-alerts' in html
    firing = html.index(f'data-alert-id="{scene["firing"]}"')
    pending = html.index(f'data-alert-id="{scene["pending"]}"')
    assert firing < pending < html.index("data-channels") < html.index("data-rules") < html.index("data-alert-history")
    item = html[firing:pending]
    assert 'href="/appareil/1">salle1</a>' in item and "critique" in item and "déclenchée" in item
    assert ">Acquitter</button>" in item and ">Reporter 1 h</button>" in item and 'type="datetime-local"' in item
    channels = html[html.index("data-channels"):html.index("data-rules")]
    assert "webhook" in channels and "1 notification en attente" in channels
    assert "HTTP 502 from ntfy.example" in channels and "channel-failing" in channels
    history = html[html.index("data-alert-history"):]
    assert f'data-resolved-alert="{scene["old"]}"' in history and "trop clair" in history
    rules = html[html.index("data-rules"):html.index("data-alert-history")]
    assert "lumière &lt; 10, repasse à 20" in rules and "lumière &lt; 10, pendant 300 s" in rules
    english = client.get("/alertes", headers={"Accept-Language": "en"}).get_data(as_text=True)
    english_rules = english[english.index("data-rules"):english.index("data-alert-history")]
    assert "light &lt; 10, clears at 20" in english_rules and "light &lt; 10, for 300 s" in english_rules
    assert "rappel toutes les 600 s" in rules and "data-rule-form" in rules
    for field in ("name", "metric", "operator", "trigger", "clear", "for", "clear_for", "severity", "repeat",
                  "selector", "devices", "enabled"):
        assert f'name="{field}"' in rules, field
    assert "alertes.js" in html
    for tag in re.findall(r"<script\b[^>]*>", html):  # no inline code (the CSP allows none): data, or files
        assert "src=" in tag or 'type="application/json"' in tag, tag
    assert "http://" not in html and "https://" not in html


def test_the_history_is_paged_newest_first(client: FlaskClient, engine: Engine) -> None:
    device = add_device(engine, "salle1")
    rule = make_rule(engine, "sombre")
    ids = []
    for i in range(alertviews.HISTORY_LENGTH + 2):
        alert_id = open_alert(engine, rule, device, ago_s=10_000 - i)
        with engine.begin() as conn:
            assert alerts.resolve(conn, alert_id, NOW_US - (5_000 - i) * 10**6, channels=())
        ids.append(alert_id)
    first = client.get("/alertes").get_data(as_text=True)
    shown = [int(i) for i in re.findall(r'data-resolved-alert="(\d+)"', first)]
    assert shown == ids[::-1][:alertviews.HISTORY_LENGTH] and 'href="/alertes?page=2#historique-titre"' in first
    second = client.get("/alertes?page=2").get_data(as_text=True)
    assert [int(i) for i in re.findall(r'data-resolved-alert="(\d+)"', second)] == ids[1::-1]
    assert "?page=3" not in second and 'href="/alertes#historique-titre">← Plus récentes' in second
    assert [a["id"] for a in client.get("/api/alerts?limit=2&offset=50").json["history"]] == ids[1::-1]
    for bad in ("0", "x", "1001"):
        assert client.get(f"/alertes?page={bad}").status_code == 400
    assert client.get("/api/alerts?offset=-1").status_code == 400


def test_names_are_escaped_in_the_page_and_its_data(client: FlaskClient, engine: Engine) -> None:
    name = "'\"><img src=x onerror=alert(1)>"
    device = add_device(engine, "salle1", display_name="<b>x</b>")
    open_alert(engine, make_rule(engine, name, selector="pattern", devices="<i>*"), device)
    html = client.get("/alertes").get_data(as_text=True)
    assert "<img" not in html and "<b>x</b>" not in html and "<i>*" not in html
    found = re.search(r'data-rule-json="([^"]*)"', html)
    assert found and json.loads(found[1].replace("&#34;", '"').replace("&amp;", "&"))["name"] == name


def test_the_badge_counts_firing_alerts_on_every_page(client: FlaskClient, engine: Engine) -> None:
    assert "data-alert-badge" not in client.get("/accueil").get_data(as_text=True)
    device = add_device(engine, "salle1")
    first = open_alert(engine, make_rule(engine, "sombre"), device)
    open_alert(engine, make_rule(engine, "lent", for_seconds=300), device)  # pending: not counted
    for path in ("/accueil", "/capteurs", "/historique", "/alertes", f"/appareil/{device}"):
        badge = re.search(r'data-alert-badge title="([^"]+)">(\d+)<', client.get(path).get_data(as_text=True))
        assert badge and badge[2] == "1" and badge[1] == "1 alerte active", path
    open_alert(engine, make_rule(engine, "autre", operator=">", trigger=1), device)
    assert re.search(r"data-alert-badge[^>]*>2<", client.get("/accueil").get_data(as_text=True))
    with engine.begin() as conn:
        alerts.resolve(conn, first, NOW_US, channels=())
    assert re.search(r"data-alert-badge[^>]*>1<", client.get("/accueil").get_data(as_text=True))


def test_pages_answer_without_a_database_and_without_a_badge(settings: Settings) -> None:
    app = create_app(settings)
    answer = app.test_client().get("/accueil")
    assert answer.status_code == 200 and "data-alert-badge" not in answer.get_data(as_text=True)
    assert app.test_client().get("/alertes").status_code == 503


def test_cards_and_the_device_page_show_the_device_s_active_alerts(client: FlaskClient, scene: dict[str, Any]) -> None:
    capteurs = client.get("/capteurs").get_data(as_text=True)
    salle = re.search(r'id="capteur-1".*?</article>', capteurs, re.S)[0]  # type: ignore[index]
    assert 'data-alert-marker data-count="1" data-severity="critical"' in salle
    assert 'href="/appareil/1#alertes"' in salle and "1 alerte active" in salle
    cave = re.search(r'id="capteur-2".*?</article>', capteurs, re.S)[0]  # type: ignore[index]
    assert "data-alert-marker" not in cave  # a pending alert is not shown on the card
    for path in ("/sensor/online", "/sensor/1"):  # the fragments the page reconciles itself with carry it too
        assert 'data-alert-marker data-count="1"' in client.get(path).get_data(as_text=True), path
    device_page = client.get("/appareil/1").get_data(as_text=True)
    section = device_page[device_page.index("data-device-alerts"):]
    assert "sombre" in section and "déclenchée" in section and "valeur 4" in section
    cave_page = client.get("/appareil/2").get_data(as_text=True)
    assert "lent" in cave_page and "en attente" in cave_page and "trop clair" not in cave_page


# -- the API -----------------------------------------------------------------------------------------------------


@both_databases
def test_rules_through_the_api(client: FlaskClient, engine: Engine) -> None:
    token = token_of(client)
    added = send(client, "POST", "/api/alerts/rules", {
        "name": "sombre", "metric": "light", "operator": "<", "trigger": 10, "clear": 20, "for": 300,
        "severity": "critical", "selector": "pattern", "devices": "salle*"}, token)
    assert added.status_code == 201, added.json
    rule = added.json
    assert rule["id"] >= 1 and rule["description"] == "light < 10, clears at 20, for 300 s"
    assert (rule["clear_for"], rule["repeat"], rule["enabled"]) == (0, None, True)
    listed = client.get("/api/alerts/rules").json["rules"]
    assert [r["name"] for r in listed] == ["sombre"] and listed[0] == rule
    changed = send(client, "PUT", f"/api/alerts/rules/{rule['id']}", {"enabled": False, "repeat": 600}, token)
    assert changed.status_code == 200 and changed.json["enabled"] is False and changed.json["repeat"] == 600
    assert changed.json["devices"] == "salle*" and changed.json["trigger"] == 10  # the others kept
    with engine.connect() as conn:
        stored = alerts.find_rule(conn, rule["id"])
    assert stored is not None and not stored.enabled and stored.repeat_seconds == 600
    assert send(client, "PUT", f"/api/alerts/rules/{rule['id']}", {"selector": "all"}, token).json["devices"] == ""
    assert send(client, "DELETE", f"/api/alerts/rules/{rule['id']}", None, token).status_code == 200
    assert rule_count(engine) == 0
    assert send(client, "DELETE", f"/api/alerts/rules/{rule['id']}", None, token).status_code == 404


@pytest.mark.parametrize(("body", "status", "parameter", "words"), [
    ({"name": "x", "metric": "light", "operator": "<", "trigger": 10, "clear": 5}, 400, "clear", "at least"),
    ({"name": "x", "metric": "light", "operator": "<", "trigger": 200}, 400, "trigger", "between 0 and 100"),
    ({"name": "x", "metric": "lumière", "operator": "<", "trigger": 1}, 400, "metric", "one of"),
    ({"name": "x", "metric": "light", "operator": "<"}, 400, "trigger", "required"),
    ({"name": "x", "metric": "light", "operator": "<", "trigger": "10"}, 400, "trigger", "a number"),
    ({"name": "x", "metric": "light", "operator": "<", "trigger": 1, "colour": 1}, 400, None, "not a field"),
    ({"name": "x", "metric": "silence", "operator": "<", "trigger": 300}, 400, "operator", "silence"),
    ({"name": "x", "metric": "light", "operator": "<", "trigger": 1, "selector": "list", "devices": "a"}, 400,
     "devices", "device ids"),
    ({"name": " x", "metric": "light", "operator": "<", "trigger": 1}, 400, "name", "no spaces"),
    ({"name": "x", "metric": "light", "operator": "<", "trigger": 1, "for": True}, 400, "for", "a number"),
    ([1, 2], 400, None, "objet JSON"),
])
def test_a_refused_rule_is_a_400_naming_the_field(client: FlaskClient, engine: Engine, body: Any, status: int,
                                                  parameter: str | None, words: str) -> None:
    answer = send(client, "POST", "/api/alerts/rules", body)
    assert answer.status_code == status, answer.json
    assert words in answer.json["error"] and answer.json.get("parameter") == parameter
    assert rule_count(engine) == 0


def test_rule_errors_404_409_and_bodies(client: FlaskClient, engine: Engine) -> None:
    token = token_of(client)
    make_rule(engine, "sombre")
    other = make_rule(engine, "autre")
    taken = send(client, "POST", "/api/alerts/rules",
                 {"name": "sombre", "metric": "light", "operator": "<", "trigger": 1}, token)
    assert taken.status_code == 409 and taken.json["parameter"] == "name"
    renamed = send(client, "PUT", f"/api/alerts/rules/{other.id}", {"name": "sombre"}, token)
    assert renamed.status_code == 409
    assert send(client, "PUT", "/api/alerts/rules/99", {"enabled": False}, token).status_code == 404
    bad = send(client, "PUT", f"/api/alerts/rules/{other.id}", {"trigger": -1}, token)
    assert bad.status_code == 400 and bad.json["parameter"] == "trigger"
    not_json = client.post("/api/alerts/rules", data="name=x", headers={"X-CSRFToken": token},
                           content_type="application/x-www-form-urlencoded")
    assert not_json.status_code == 400 and "JSON" in not_json.json["error"]
    assert send(client, "POST", "/api/alerts/rules", {"name": "y", "metric": "light", "operator": "<",
                                                       "trigger": 1}, None).status_code == 400  # no CSRF token
    assert rule_count(engine) == 2


@both_databases
def test_acknowledge_and_snooze_change_the_row(client: FlaskClient, engine: Engine, scene: dict[str, Any]) -> None:
    token = token_of(client)
    firing = scene["firing"]
    before = alert_row(engine, firing)
    assert before["acked_by"] is None and before["due_at"] is not None  # a reminder is due (repeat 600 s)
    acked = send(client, "POST", f"/api/alerts/{firing}/ack", {}, token)
    assert acked.status_code == 200 and acked.json["acked"] is True and acked.json["acked_by"] == "anonyme"
    after = alert_row(engine, firing)
    assert after["acked_by"] == "anonyme" and after["acked_at"] is not None and after["due_at"] is None

    pending = scene["pending"]
    started = time.time_ns() // 1000
    snoozed = send(client, "POST", f"/api/alerts/{pending}/snooze", {"minutes": 60}, token)
    assert snoozed.status_code == 200
    until = alert_row(engine, pending)["snoozed_until"]
    assert format_micros(started + 3600 * 10**6) <= until <= format_micros(time.time_ns() // 1000 + 3600 * 10**6)
    assert snoozed.json["snoozed_until"] == f"{until[:10]}T{until[11:]}+00:00"
    moment = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=5)
    local = moment.astimezone(UTC).replace(tzinfo=None).isoformat() + "+00:00"
    assert send(client, "POST", f"/api/alerts/{pending}/snooze", {"until": local}, token).status_code == 200
    assert alert_row(engine, pending)["snoozed_until"] == format_micros(to_micros(moment))
    html = client.get("/alertes").get_data(as_text=True)
    assert "Reportée jusqu" in html and "par anonyme" in html


@pytest.mark.parametrize(("body", "parameter"), [
    ({"minutes": 0}, "minutes"), ({"minutes": "60"}, "minutes"), ({"minutes": 10**9}, "minutes"),
    ({"until": "2020-01-01T00:00:00Z"}, "until"), ({"until": "demain"}, "until"), ({}, None),
    ({"minutes": 5, "until": "2030-01-01T00:00:00Z"}, None),
])
def test_a_bad_snooze_is_a_400(client: FlaskClient, engine: Engine, scene: dict[str, Any], body: Any,
                               parameter: str | None) -> None:
    answer = send(client, "POST", f"/api/alerts/{scene['firing']}/snooze", body)
    assert answer.status_code == 400 and answer.json.get("parameter") == parameter, answer.json
    assert alert_row(engine, scene["firing"])["snoozed_until"] is None


def test_unknown_and_resolved_alerts(client: FlaskClient, scene: dict[str, Any]) -> None:
    token = token_of(client)
    assert send(client, "POST", "/api/alerts/999/ack", {}, token).status_code == 404
    assert send(client, "POST", "/api/alerts/999/snooze", {"minutes": 5}, token).status_code == 404
    resolved = send(client, "POST", f"/api/alerts/{scene['old']}/ack", {}, token)
    assert resolved.status_code == 409 and "résolue" in resolved.json["error"]
    assert send(client, "POST", f"/api/alerts/{scene['firing']}/ack", {"by": "x"}, token).status_code == 400


def test_get_api_alerts_lists_active_history_and_channels(client: FlaskClient, scene: dict[str, Any]) -> None:
    body = client.get("/api/alerts").json
    assert [a["id"] for a in body["active"]] == [scene["firing"], scene["pending"]]
    first = body["active"][0]
    assert first["rule"] == {"id": scene["dark"].id, "name": "sombre", "metric": "light"}
    assert first["device"] == {"id": scene["salle"], "name": "salle1"} and first["severity"] == "critical"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", first["since"])
    assert [a["id"] for a in body["history"]] == [scene["old"]] and body["history"][0]["state"] == "resolved"
    [channel] = body["channels"]
    assert channel["channel"] == "webhook" and channel["waiting"] == 1
    assert channel["last_error"] == "HTTP 502 from ntfy.example"
    assert client.get("/api/alerts?limit=0").json["history"] == []
    assert client.get("/api/alerts?limit=x").status_code == 400
    routes = {(r["method"], r["path"]) for r in client.get("/api").json["routes"]}
    assert {("GET", "/api/alerts"), ("POST", "/api/alerts/rules"), ("PUT", "/api/alerts/rules/<rule_id>"),
            ("DELETE", "/api/alerts/rules/<rule_id>"), ("POST", "/api/alerts/<alert_id>/ack"),
            ("POST", "/api/alerts/<alert_id>/snooze"), ("GET", "/api/alerts/rules")} <= routes


def test_once_accounts_exist_only_logged_in_visitors_decide(app: Flask, engine: Engine,
                                                            scene: dict[str, Any]) -> None:
    accounts.add(engine, "alice", PASSWORD)
    anonymous = app.test_client()
    token = token_of(anonymous)
    rule = {"name": "nouveau", "metric": "light", "operator": ">", "trigger": 50}
    refusals = [send(anonymous, "POST", "/api/alerts/rules", rule, token),
                send(anonymous, "PUT", f"/api/alerts/rules/{scene['dark'].id}", {"enabled": False}, token),
                send(anonymous, "DELETE", f"/api/alerts/rules/{scene['dark'].id}", None, token),
                send(anonymous, "POST", f"/api/alerts/{scene['firing']}/ack", {}, token),
                send(anonymous, "POST", f"/api/alerts/{scene['firing']}/snooze", {"minutes": 5}, token)]
    assert [r.status_code for r in refusals] == [401] * 5
    assert rule_count(engine) == 3 and alert_row(engine, scene["firing"])["acked_by"] is None
    assert alert_row(engine, scene["firing"])["snoozed_until"] is None
    page = anonymous.get("/alertes").get_data(as_text=True)  # reading stays open; the controls are not offered
    assert "data-alert-controls-closed" in page and "data-ack" not in page and "data-rule-form" not in page
    assert anonymous.get("/api/alerts").status_code == 200

    alice = app.test_client()
    log_in(alice, "alice")
    token = token_of(alice)
    assert send(alice, "POST", f"/api/alerts/{scene['firing']}/ack", {}, token).json["acked_by"] == "alice"
    assert alert_row(engine, scene["firing"])["acked_by"] == "alice"
    assert send(alice, "POST", "/api/alerts/rules", rule, token).status_code == 201
    # Who acknowledged is an account's name: not shown to anonymous visitors.
    assert "acked_by" not in anonymous.get("/api/alerts").json["active"][0]
    assert "par alice" not in anonymous.get("/alertes").get_data(as_text=True)
    assert "par alice" in alice.get("/alertes").get_data(as_text=True)


def test_the_web_server_writes_decisions_on_its_own_small_engine_and_only_there(app: Flask, client: FlaskClient,
                                                                  scene: dict[str, Any]) -> None:
    send(client, "POST", f"/api/alerts/{scene['firing']}/ack", {})
    with app.app_context():
        state = web_state()
        assert state.decisions is not None
        reader, writer = state.database.engine(), state.decisions.engine()
    assert reader is not writer and writer.pool.size() == 1  # type: ignore[attr-defined]
    with reader.connect() as conn, pytest.raises(Exception, match=r"readonly|read-only|attempt to write"):
        conn.execute(text("UPDATE alert SET acked_by = 'x'"))
    # The writable engine writes the alerts' tables, and nothing else (an authorizer, on SQLite).
    with writer.begin() as conn:
        conn.execute(text("UPDATE alert SET acked_by = 'x' WHERE id = :id"), {"id": scene["firing"]})
    for statement in ("UPDATE device SET name = 'x'", "DELETE FROM light_reading", "DELETE FROM web_user",
                      "INSERT INTO device_session (device_id, session_id, started_at) VALUES (1, 's', 'x')"):
        with writer.begin() as conn, pytest.raises(Exception, match="not authorized"):
            conn.execute(text(statement))
    with writer.connect() as conn:
        assert conn.execute(text("SELECT name FROM device WHERE id = 1")).scalar_one() == "salle1"


# -- the rule edits (pure) ---------------------------------------------------------------------------------------


def test_edited_rules_keep_what_is_not_given_and_name_the_field() -> None:
    rule = edited(None, {"name": "sombre", "metric": "light", "operator": "<", "trigger": 10})
    assert (rule.severity, rule.selector, rule.enabled, rule.clear) == (Severity.WARNING, "all", True, None)
    listed = edited(rule, {"selector": "list", "devices": "1, 2"})
    assert listed.device_ids() == {1, 2} and listed.trigger == 10
    assert edited(listed, {"selector": "all"}).devices == ""
    with pytest.raises(RuleError) as refused:
        edited(rule, {"clear_for": -1})
    assert field_of(refused.value) == "clear_for"
    with pytest.raises(RuleError) as refused:
        edited(rule, {"severity": "grave"})
    assert field_of(refused.value) == "severity"


# -- the command line --------------------------------------------------------------------------------------------


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.environ(), "USER": "tester", "LOGNAME": "tester"}
    return subprocess.run([sys.executable, "-m", "sensorhub", "alert", *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def one_line(result: subprocess.CompletedProcess[str], status: int = 0) -> str:
    output = result.stdout if status == 0 else result.stderr
    assert result.returncode == status, result.stderr
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    return lines[0]


@both_databases
def test_the_alert_commands(settings: Settings, engine: Engine) -> None:
    device = add_device(engine, "salle1")
    assert one_line(cli(settings, "add", "sombre", "--metric", "light", "--op", "<", "--trigger", "10", "--clear",
                        "20", "--for", "300", "--devices", "salle*", "--severity", "critical")) == (
        "alert rule 1 sombre added: light < 10, clears at 20, for 300 s")
    assert one_line(cli(settings, "add", "muet", "--metric", "silence", "--op", ">=", "--trigger", "300",
                        "--repeat", "600", "--device-ids", "1,2", "--disabled")).endswith("(disabled)")
    listed = cli(settings, "list").stdout.strip().splitlines()
    assert listed == ["2\tmuet\tdisabled\twarning\tdevices 1,2\tsilence ≥ 300 s, remind every 600 s",
                      "1\tsombre\tenabled\tcritical\tdevices 'salle*'\tlight < 10, clears at 20, for 300 s"]
    assert "changed" in one_line(cli(settings, "edit", "sombre", "--trigger", "5", "--all-devices", "--repeat", "0"))
    assert one_line(cli(settings, "enable", "muet")) == "alert rule 2 muet enabled"
    with engine.connect() as conn:
        dark, quiet = alerts.find_rule(conn, "sombre"), alerts.find_rule(conn, 2)
    assert dark is not None and (dark.trigger, dark.selector, dark.devices, dark.repeat_seconds) == (5, "all", "", None)
    assert quiet is not None and quiet.enabled

    assert one_line(cli(settings, "active")) == "no active alert"
    alert_id = open_alert(engine, replace(dark, for_seconds=0), device, 3)  # firing at once
    assert one_line(cli(settings, "active")).startswith(f"{alert_id}\tfiring\tcritical\tsombre\tsalle1 (device 1)")
    acked = one_line(cli(settings, "ack", str(alert_id)))
    assert acked == f"alert {alert_id} (sombre on salle1) acknowledged by tester"
    assert one_line(cli(settings, "ack", str(alert_id), "--by", "bob")).endswith("acknowledged by bob")
    assert "snoozed until" in one_line(cli(settings, "snooze", str(alert_id), "--minutes", "30"))
    row = alert_row(engine, alert_id)
    assert row["acked_by"] == "bob" and row["snoozed_until"] > format_micros(time.time_ns() // 1000 + 29 * 60 * 10**6)
    assert "acknowledged by bob" in one_line(cli(settings, "active"))

    assert one_line(cli(settings, "rm", "sombre")) == "alert rule 1 sombre deleted, with its alerts"
    with engine.connect() as conn:
        assert rule_count(engine) == 1 and alertviews.get_alert(conn, alert_id) is None


@pytest.mark.parametrize(("args", "words"), [
    (("add", "x", "--metric", "light", "--op", "<", "--trigger", "10", "--clear", "5"), "clear: for < and <="),
    (("add", "x", "--metric", "light", "--op", "<"), "trigger: required"),
    (("add", "x", "--metric", "light", "--op", "<", "--trigger", "1", "--devices", "a*", "--device-ids", "1"),
     "choose one of"),
    (("add", "sombre", "--metric", "light", "--op", "<", "--trigger", "1"), "already called 'sombre'"),
    (("edit", "nothing", "--trigger", "1"), "no alert rule has the id or name 'nothing'"),
    (("edit", "sombre"), "nothing to change"),
    (("rm", "42"), "no alert rule"),
    (("ack", "42"), "no alert has the id 42"),
    (("snooze", "42", "--minutes", "5"), "no alert has the id 42"),
])
def test_alert_command_errors_are_one_line_and_status_2(settings: Settings, engine: Engine, args: tuple[str, ...],
                                                        words: str) -> None:
    make_rule(engine, "sombre")
    line = one_line(cli(settings, *args), 2)
    assert line.startswith("sensorhub: error: ") and words in line, line
    assert rule_count(engine) == 1


# -- in a real browser -------------------------------------------------------------------------------------------


@pytest.mark.browser
def test_adding_a_rule_and_acknowledging_an_alert_in_the_page(settings: Settings, engine: Engine,
                                                              browser: Browser) -> None:
    device = add_device(engine, "salle1")
    alert_id = open_alert(engine, make_rule(engine, "hors ligne", Metric.PRESENCE, "==", 0, for_seconds=0), device)
    with web_server(settings, workers=1):
        context = browser.new_context()
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(web_url(settings, "/alertes"))
        expect(page.locator("[data-alert-badge]")).to_have_text(re.compile(r"^1"))
        form = page.locator("[data-rule-form]")
        form.locator('[name="name"]').fill("sombre")
        form.locator('[name="metric"]').select_option("light")
        form.locator('[name="operator"]').select_option("<")
        form.locator('[name="trigger"]').fill("10")
        form.locator('[name="clear"]').fill("5")  # refused: below the trigger for "<"
        form.locator("[data-rule-submit]").click()
        expect(form.locator("[data-rule-error]")).to_contain_text("clear")
        expect(form.locator('[name="clear"]')).to_have_attribute("aria-invalid", "true")
        assert rule_count(engine) == 1
        form.locator('[name="clear"]').fill("20")
        form.locator('[name="for"]').fill("300")
        form.locator("[data-rule-submit]").click()
        rule = page.locator('[data-rule]', has_text="sombre")
        expect(rule.locator("[data-rule-description]")).to_have_text("lumière < 10, repasse à 20, pendant 300 s")
        with engine.connect() as conn:
            stored = alerts.find_rule(conn, "sombre")
        assert stored is not None and (stored.trigger, stored.clear, stored.for_seconds) == (10, 20, 300)

        # The rule is shown by the page reloaded after it was taken: its HTML is there before its script attached
        # the click listener (module scripts run before DOMContentLoaded), and a click before that sends nothing.
        page.wait_for_load_state("domcontentloaded")
        item = page.locator(f'[data-alert-id="{alert_id}"]')
        item.locator("[data-ack]").click()
        expect(page.locator(f'[data-alert-id="{alert_id}"] [data-acked]')).to_contain_text("anonyme")
        expect(page.locator(f'[data-alert-id="{alert_id}"] [data-ack]')).to_have_count(0)
        assert alert_row(engine, alert_id)["acked_by"] == "anonyme"
        context.close()
    assert errors == []


# -- on the real stack -------------------------------------------------------------------------------------------


class Browserless:
    """What a script does with the API (docs/api.md, "Scripts and CSRF"): a cookie jar and the page's token."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        with self.opener.open(web_url(settings, "/accueil"), timeout=10) as page:
            found = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.read().decode())
        assert found
        self.token = found[1]

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(web_url(self.settings, path), data=data, method=method, headers={
            "Content-Type": "application/json", "X-CSRFToken": self.token})
        try:
            with self.opener.open(request, timeout=10) as answer:
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as err:
            return err.code, json.load(err)


@pytest.mark.integration
def test_a_rule_added_through_the_web_server_fires_in_the_ingest_client_and_is_acknowledged(
        settings: Settings) -> None:
    with running_stack(settings, workers=1) as stack:
        device = RawDevice(settings.mqtt_port, "02:00:00:00:00:A1")
        try:
            name, _ = device.join()
            wait_for(lambda: stack.api("/api/devices?online=1"), 10, what="the device online")
            script = Browserless(settings)
            status, rule = script.call("POST", "/api/alerts/rules", {
                "name": "sombre", "metric": "light", "operator": "<", "trigger": 10, "clear": 20})
            assert status == 201, rule

            def firing() -> list[Any]:
                # The workers reload their rules within ~0.5 s: a dark reading until one of them counts.
                device.reading(Topic.PHOTORESISTOR_STATUS, 5, qos=1).wait_for_publish(5)
                return [a for a in stack.api("/api/alerts")["active"] if a["state"] == "firing"]

            [alert] = wait_for(firing, 15, interval=0.3, what="the rule to fire")
            assert alert["device"]["name"] == name and alert["rule"]["id"] == rule["id"] and alert["value"] == 5
            with urllib.request.urlopen(stack.url("/accueil"), timeout=5) as page:
                assert re.search(r"data-alert-badge[^>]*>1<", page.read().decode())
            status, acked = script.call("POST", f"/api/alerts/{alert['id']}/ack", {})
            assert status == 200 and acked["acked_by"] == "anonyme"
            device.reading(Topic.PHOTORESISTOR_STATUS, 15, qos=1).wait_for_publish(5)  # between the thresholds
            device.reading(Topic.PHOTORESISTOR_STATUS, 25, qos=1).wait_for_publish(5)  # above the clear value
            history = wait_for(lambda: stack.api("/api/alerts")["history"], 10, what="the alert to resolve")
            assert [a["id"] for a in history] == [alert["id"]] and history[0]["last_value"] == 25
            assert history[0]["acked_by"] == "anonyme" and stack.api("/api/alerts")["active"] == []
        finally:
            device.close()
