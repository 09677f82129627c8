"""The overview: `/accueil` and `GET /api/overview` (presence, traffic, joins and leaves, alerts, the worst)."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Connection, Engine, text

from sensorhub import accounts
from sensorhub.alerting import Metric, Rule
from sensorhub.config import Settings
from sensorhub.db import alerts, overview, rollups
from sensorhub.db.models import LightReading
from sensorhub.ingest.bookkeeping import History
from sensorhub.protocol import Kind
from sensorhub.timestamps import format_timestamp, parse_timestamp, to_micros
from sensorhub.web import database
from tests.factories import add_device, add_readings, mac_of
from tests.support import both_databases


def count_of(html: str, name: str) -> int:
    """The number the page shows for one count (online, offline, silent)."""
    found = re.search(rf'data-count="{name}">(\d+)<', html)
    assert found, name
    return int(found[1])


def add_session(engine: Engine, device_id: int, started: datetime, online: datetime | None,
                ended: datetime | None) -> None:
    """One row of the session log, as the ingest client writes it."""
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO device_session (device_id, session_id, started_at, online_at, ended_at) "
                          "VALUES (:device, 's', :started, :online, :ended)"),
                     {"device": device_id, "started": format_timestamp(started),
                      "online": None if online is None else format_timestamp(online),
                      "ended": None if ended is None else format_timestamp(ended)})


@both_databases
def test_counts_online_offline_and_silent(client: FlaskClient, engine: Engine, settings: Settings) -> None:
    now = datetime.now(UTC)
    add_device(engine, "vivant", 1, last_seen=now - timedelta(seconds=5))
    silent = add_device(engine, "muet", 2, last_seen=now - timedelta(seconds=settings.silent_seconds + 60))
    add_device(engine, "parti", 3, online=False, last_seen=now - timedelta(hours=1))
    add_device(engine, "parti2", 4, online=False, joined=now - timedelta(days=1), last_seen=now - timedelta(hours=2))
    body = client.get("/api/overview").get_json()
    assert body["silent_seconds"] == settings.silent_seconds == 300
    assert body["database"]["devices"] == {"online": 2, "offline": 2, "silent": 1, "total": 4}
    assert [d["name"] for d in body["database"]["silent_devices"]] == ["muet"]
    html = client.get("/accueil").get_data(as_text=True)
    assert (count_of(html, "online"), count_of(html, "offline"), count_of(html, "silent")) == (2, 2, 1)
    assert f'<a href="/appareil/{silent}">muet</a>' in html  # a link to the worst device
    assert "Vue d'ensemble" in html


def test_a_shorter_silence_setting_makes_more_devices_silent(settings: Settings, engine: Engine) -> None:
    from sensorhub.web import create_app

    now = datetime.now(UTC)
    add_device(engine, "vivant", 1, last_seen=now - timedelta(seconds=30))
    client = create_app(settings.replace(silent_seconds=10)).test_client()
    assert client.get("/api/overview").get_json()["database"]["devices"]["silent"] == 1


@both_databases
def test_readings_per_minute_come_from_the_rollups(engine: Engine) -> None:
    now = datetime(2026, 12, 4, 12, 30, 20, tzinfo=UTC)
    device = add_device(engine, "capteur", 1, joined=now - timedelta(hours=3), last_seen=now)
    add_readings(engine, LightReading, device, [50] * 60, datetime(2026, 12, 4, 12, 28, 59, tzinfo=UTC))  # 12:29
    add_readings(engine, LightReading, device, [50] * 30, datetime(2026, 12, 4, 12, 26, 59, tzinfo=UTC))  # 12:27
    add_readings(engine, LightReading, device, [50] * 7, datetime(2026, 12, 4, 11, 0, 0, tzinfo=UTC))  # too old
    with engine.begin() as conn:
        rollups.rebuild(conn)
    with engine.connect() as conn:
        minutes = overview.traffic(conn, now)
        if conn.dialect.name == "sqlite":  # through the primary key, never a scan of the roll-ups
            plan = " ".join(str(row[-1]) for row in conn.execute(
                text("EXPLAIN QUERY PLAN " + overview.TRAFFIC_SQL), {"first": "2026-12-04 11:31:00.000000"}).all())
            assert "SEARCH rollup_fleet_minute USING PRIMARY KEY" in plan, plan
    assert len(minutes) == overview.TRAFFIC_MINUTES
    assert minutes[-1].start == datetime(2026, 12, 4, 12, 30, tzinfo=UTC)
    assert minutes[0].start == datetime(2026, 12, 4, 11, 31, tzinfo=UTC)
    by_start = {m.start.strftime("%H:%M"): m.count for m in minutes}
    assert by_start["12:29"] == 60 and by_start["12:27"] == 30 and by_start["12:30"] == 0
    assert sum(by_start.values()) == 90


#: What the chart showed before the fleet's roll-up: every device's 1-minute roll-ups of each minute, summed.
BY_DEVICE_SQL = ("SELECT r.start, sum(r.count) FROM device d CROSS JOIN rollup_minute r WHERE r.device_id = d.id "
                 "AND r.start >= :first GROUP BY r.start")


def _by_device(conn: Connection, now: datetime) -> list[overview.Minute]:
    """The chart's minutes as the sums of every device's roll-ups (what `traffic` read before the fleet's table)."""
    first = now.replace(second=0, microsecond=0) - timedelta(minutes=overview.TRAFFIC_MINUTES - 1)
    counts = {parse_timestamp(str(start)): int(count) for start, count in conn.execute(
        text(BY_DEVICE_SQL), {"first": format_timestamp(first)})}
    return [overview.Minute(first + timedelta(minutes=i), counts.get(first + timedelta(minutes=i), 0))
            for i in range(overview.TRAFFIC_MINUTES)]


@both_databases
def test_the_fleet_readings_per_minute_are_the_sums_of_every_device_roll_ups(engine: Engine) -> None:
    now = datetime.now(UTC).replace(second=30, microsecond=0)
    start = now - timedelta(minutes=75)  # from before the chart's hour to its last minute
    devices = [add_device(engine, f"capteur{i:02d}", i, joined=start - timedelta(hours=1), last_seen=now)
               for i in range(1, 13)]
    rng = random.Random(28)
    writers = {worker: History(worker=worker) for worker in (0, 1, 2)}  # the only worker, or two
    for _batch in range(60):
        readings: dict[Kind, list[tuple[int, str, int]]] = {kind: [] for kind in Kind}
        moment = start + timedelta(seconds=rng.randrange(75 * 60))
        for device in rng.sample(devices, rng.randint(1, len(devices))):
            kind = rng.choice(list(Kind))
            for step in range(rng.randint(1, 4)):  # a device's readings in time order, across minute boundaries
                at = format_timestamp(moment + timedelta(seconds=25 * step, microseconds=device))
                readings[kind].append((device, at, rng.randrange(101) if kind is Kind.LIGHT else rng.randrange(2)))
        with engine.begin() as conn:
            for kind, rows in readings.items():
                if rows:
                    conn.execute(text(f"INSERT INTO {kind.value}_reading (device_id, at, value) VALUES (:d, :at, :v)"),
                                 [{"d": d, "at": at, "v": v} for d, at, v in rows])
            writers[rng.choice([0, 1, 2])].stage(conn, readings, [])
    with engine.connect() as conn:
        shown = overview.traffic(conn, now)
        assert shown == _by_device(conn, now)
        assert sum(m.count for m in shown) > 500 and sum(1 for m in shown if m.count) > 40
        workers = {row[0] for row in conn.execute(text("SELECT DISTINCT worker FROM rollup_fleet_minute"))}
        assert workers == {0, 1, 2}  # each worker its own rows: none waits on another's
    with engine.begin() as conn:  # a rebuild (sensorhub db seed) sums them again, as worker 0
        rollups.rebuild(conn)
    with engine.connect() as conn:
        assert overview.traffic(conn, now) == shown == _by_device(conn, now)
        assert {row[0] for row in conn.execute(text("SELECT DISTINCT worker FROM rollup_fleet_minute"))} == {0}


def test_the_oldest_reading_is_kept_a_minute_once_there_is_one(client: FlaskClient, engine: Engine,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime.now(UTC).replace(microsecond=123)
    device = add_device(engine, "capteur", 1, joined=now - timedelta(hours=3), last_seen=now)
    assert client.get("/api/overview").get_json()["database"]["oldest"] is None
    first = add_readings(engine, LightReading, device, [5], now - timedelta(hours=1))[0]
    assert client.get("/api/overview").get_json()["database"]["oldest"] == first.isoformat()  # none was kept
    older = add_readings(engine, LightReading, device, [6], now - timedelta(hours=2))[0]  # as an import might
    assert client.get("/api/overview").get_json()["database"]["oldest"] == first.isoformat()  # kept a minute
    monkeypatch.setattr(database, "OLDEST_SECONDS", 0.0)
    assert client.get("/api/overview").get_json()["database"]["oldest"] == older.isoformat()


def test_the_page_draws_the_last_hour_and_the_rate(client: FlaskClient, engine: Engine) -> None:
    now = datetime.now(UTC)
    device = add_device(engine, "capteur", 1, last_seen=now)
    add_readings(engine, LightReading, device, [50] * 20, now - timedelta(minutes=30))
    with engine.begin() as conn:
        rollups.rebuild(conn)
    body = client.get("/api/overview").get_json()["database"]
    assert sum(m["count"] for m in body["readings_per_minute"]) == 20
    assert len(body["readings_per_minute"]) == 60 and body["readings_per_second"] == 0
    html = client.get("/accueil").get_data(as_text=True)
    assert html.count("<rect ") == 60 and 'height="80.0"' in html  # the busiest minute fills the chart


@both_databases
def test_the_latest_joins_and_leaves_newest_first(client: FlaskClient, engine: Engine) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    first = add_device(engine, "ancien", 1, online=False, joined=now - timedelta(hours=3),
                       last_seen=now - timedelta(minutes=50))
    second = add_device(engine, "nouveau", 2, joined=now - timedelta(minutes=10), last_seen=now)
    lost = add_device(engine, "perdu", 3, online=False, joined=now - timedelta(days=3),
                      last_seen=now - timedelta(minutes=5))
    for i in range(12):  # older sessions: more than the list holds
        add_session(engine, second, now - timedelta(hours=2, minutes=12 - i), None,
                    now - timedelta(hours=2, minutes=12 - i))
    add_session(engine, first, now - timedelta(hours=3), now - timedelta(hours=3) + timedelta(seconds=1),
                now - timedelta(minutes=50))
    add_session(engine, second, now - timedelta(minutes=10), now - timedelta(minutes=10) + timedelta(seconds=1), None)
    # A long session that ended recently: found through the offline devices, whatever its place among sessions.
    add_session(engine, lost, now - timedelta(days=3), now - timedelta(days=3), now - timedelta(minutes=5))
    events = client.get("/api/overview").get_json()["database"]["events"]
    assert len(events) == overview.LIST_LENGTH
    assert [(e["event"], e["device"]["name"]) for e in events[:3]] == [
        ("left", "perdu"), ("joined", "nouveau"), ("left", "ancien")]
    assert events[0]["device"]["mac"] == mac_of(3)
    assert [e["at"] for e in events] == sorted((e["at"] for e in events), reverse=True)
    html = client.get("/accueil").get_data(as_text=True)
    listed = re.findall(r'<li data-event="(\w+)">.*?>(\w+)</a>', html)
    assert listed[:3] == [("left", "perdu"), ("joined", "nouveau"), ("left", "ancien")]


@both_databases
def test_active_alerts_and_their_devices_are_shown(client: FlaskClient, engine: Engine) -> None:
    device = add_device(engine, "salle", 1)
    add_device(engine, "cave", 2)
    now_us = to_micros(datetime.now(UTC))
    rule = Rule(id=0, name="sombre", metric=Metric.LIGHT, operator="<", trigger=10)
    with engine.begin() as conn:
        rule_id = alerts.add_rule(conn, rule, now_us)
        assert alerts.open_alert(conn, Rule(id=rule_id, name="sombre", metric=Metric.LIGHT, operator="<", trigger=10),
                                 device, now_us - 60_000_000, 4, ()) is not None
    body = client.get("/api/overview").get_json()["database"]["alerts"]
    assert body["active"] == 1
    assert [(a["rule"], a["state"], a["device"]["name"]) for a in body["list"]] == [("sombre", "firing", "salle")]
    assert body["devices"] == [{"id": device, "name": "salle", "count": 1, "severity": "warning"}]
    html = client.get("/accueil").get_data(as_text=True)
    assert "data-active-alerts>1<" in html and '<a href="/alertes">Voir les alertes</a>' in html
    assert re.search(rf'data-worst="alerts">\s*<li><a href="/appareil/{device}">salle</a>', html)


def test_without_alerts_the_overview_says_so(client: FlaskClient, engine: Engine) -> None:
    add_device(engine, "salle", 1, last_seen=datetime.now(UTC))
    html = client.get("/accueil").get_data(as_text=True)
    assert "data-active-alerts>0<" in html and "data-alert-list" not in html
    assert "Aucun : pas d'alerte en cours" in html


def test_visitors_not_logged_in_see_no_mac_nor_session_times_once_accounts_exist(client: FlaskClient,
                                                                                 engine: Engine) -> None:
    now = datetime.now(UTC)
    device = add_device(engine, "muet", 1, last_seen=now - timedelta(hours=1))
    add_session(engine, device, now - timedelta(hours=2), now - timedelta(hours=2), None)
    assert mac_of(1) in client.get("/accueil").get_data(as_text=True)  # no accounts: everyone sees them
    assert client.get("/api/overview").get_json()["database"]["silent_devices"][0]["mac"] == mac_of(1)
    assert client.get("/api/overview").get_json()["database"]["events"]
    accounts.add(engine, "alice", "correct horse battery")
    html = client.get("/accueil").get_data(as_text=True)
    assert "muet" in html and mac_of(1) not in html
    # nor the times of sessions (issue 23: a session id used to be the time it started)
    assert "data-events-hidden" in html and 'data-event="joined"' not in html
    body = client.get("/api/overview").get_data(as_text=True)
    assert "muet" in body and mac_of(1) not in body
    assert client.get("/api/overview").get_json()["database"]["events"] is None
    login = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', login)
    assert token
    form = {"csrf_token": token[1], "name": "alice", "password": "correct horse battery"}
    assert client.post("/login", data=form).status_code == 302
    html = client.get("/accueil").get_data(as_text=True)
    assert mac_of(1) in html and 'data-event="joined"' in html and "data-events-hidden" not in html


@both_databases
def test_an_empty_database_gives_zeros(client: FlaskClient) -> None:
    body = client.get("/api/overview").get_json()
    assert body["database"]["devices"] == {"online": 0, "offline": 0, "silent": 0, "total": 0}
    assert body["database"]["events"] == [] and body["database"]["alerts"]["active"] == 0
    assert body["database"]["oldest"] is None and body["database"]["readings_per_second"] == 0
    assert set(body["health"]["checks"]) == {"database", "broker", "client"}
    assert body["health"]["checks"]["database"] is True
    assert body["health"]["checks"]["client"] is False  # no ingest client runs in this test
    html = client.get("/").get_data(as_text=True)
    assert count_of(html, "online") == 0 and "Aucun pour l'instant" in html
    assert 'href="/aide"' in html and 'data-check="client" data-ok="non"' in html


def test_without_a_database_file_the_overview_still_answers(settings: Settings) -> None:
    from sensorhub.web import create_app

    client = create_app(settings).test_client()  # no `engine` fixture: no database file
    for path in ("/", "/accueil"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert "data-no-database" in response.get_data(as_text=True)
    body = client.get("/api/overview").get_json()
    assert body["database"] is None and body["health"]["checks"]["database"] is False
