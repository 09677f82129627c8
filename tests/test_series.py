"""Readings over time through the web app: ranges, buckets, CSV exports, errors, stats (Flask's test client on a
real SQLite database whose roll-ups are built as the migration builds them)."""

from __future__ import annotations

import csv
import html as htmllib
import io
import json
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, text, update

from sensorhub import accounts, buckets
from sensorhub.config import Settings
from sensorhub.db.models import ButtonReading, Device, LedReading, LightReading
from sensorhub.db.rollups import rebuild
from sensorhub.web import create_app
from sensorhub.web.pages import DEFAULT_RANGE, RANGES
from tests.factories import add_device, add_readings
from tests.stack import ROOT
from tests.support import both_databases

NOW = datetime.now(UTC).replace(microsecond=0)
START = NOW - timedelta(hours=3)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


@pytest.fixture
def client(settings: Settings, engine: Engine) -> FlaskClient:
    app = create_app(settings)
    app.config["TESTING"] = True
    return app.test_client()


@pytest.fixture
def fleet(engine: Engine) -> dict[str, Any]:
    """Two devices: light every 7 s for 3 hours, LED and button now and then; roll-ups rebuilt."""
    joined = START - timedelta(minutes=5)
    one = add_device(engine, "salle, 1", 1, joined=joined, last_seen=NOW)
    two = add_device(engine, "capteur02", 2, joined=joined, last_seen=NOW)
    light = [(n * 13) % 101 for n in range(3 * 3600 // 7)]
    moments = add_readings(engine, LightReading, one, light, START, timedelta(seconds=7))
    add_readings(engine, LightReading, two, [50, 60], START, timedelta(minutes=30))
    led = add_readings(engine, LedReading, one, [1, 0, 1, 0], START, timedelta(minutes=40))
    add_readings(engine, ButtonReading, one, [1, 0], START + timedelta(minutes=10), timedelta(seconds=2))
    with engine.begin() as conn:
        rebuild(conn)
    return {"one": one, "two": two, "light": list(zip(moments, light, strict=True)), "led": led}


@both_databases
def test_raw_readings_come_back_exactly(client: FlaskClient, fleet: dict[str, Any]) -> None:
    start, end = START + timedelta(minutes=10), START + timedelta(minutes=20)
    answer = client.get(f"/api/devices/{fleet['one']}/readings", query_string={
        "from": iso(start), "to": iso(end), "bucket": "raw"})
    assert answer.status_code == 200, answer.json
    body = answer.json
    assert body is not None
    expected = [{"at": iso(at), "value": value} for at, value in fleet["light"] if start <= at < end]
    before_at, before_value = [(at, value) for at, value in fleet["light"] if at < start][-1]
    assert body == {"device": fleet["one"], "kind": "light", "from": iso(start), "to": iso(end), "bucket": "raw",
                    "points": expected, "previous": {"at": iso(before_at), "value": before_value}}


@both_databases
def test_buckets_hold_count_min_avg_max_computed_here(client: FlaskClient, fleet: dict[str, Any]) -> None:
    groups: dict[datetime, list[int]] = defaultdict(list)
    for at, value in fleet["light"]:
        groups[at.replace(second=0, microsecond=0)].append(value)
    start, end = START, NOW
    body = client.get(f"/api/devices/{fleet['one']}/readings",
                      query_string={"from": iso(start), "to": iso(end), "bucket": "1m"}).json
    assert body is not None and body["bucket"] == "1m"
    expected = [{"at": iso(minute), "count": len(v), "min": min(v), "avg": round(sum(v) / len(v), 3), "max": max(v)}
                for minute, v in sorted(groups.items())]
    assert body["points"] == expected
    hours: dict[datetime, list[int]] = defaultdict(list)
    for at, value in fleet["light"]:
        hours[at.replace(minute=0, second=0, microsecond=0)].append(value)
    body = client.get(f"/api/devices/{fleet['one']}/readings",
                      query_string={"from": iso(start), "to": iso(end), "bucket": "1h"}).json
    assert body is not None
    assert [(p["at"], p["count"], p["min"], p["max"]) for p in body["points"]] == [
        (iso(h), len(v), min(v), max(v)) for h, v in sorted(hours.items())]


@both_databases
def test_led_buckets_count_the_time_on(client: FlaskClient, fleet: dict[str, Any]) -> None:
    on, off, on_again, off_again = fleet["led"]
    body = client.get(f"/api/devices/{fleet['one']}/readings",
                      query_string={"kind": "led", "from": iso(START), "to": iso(NOW), "bucket": "1h"}).json
    assert body is not None
    total_on = sum(point["on_seconds"] for point in body["points"])
    assert total_on == pytest.approx(((off - on) + (off_again - on_again)).total_seconds())
    assert sum(point["count"] for point in body["points"]) == 4


@both_databases
def test_auto_picks_the_finest_bucket_under_1000_points(client: FlaskClient, fleet: dict[str, Any]) -> None:
    def bucket(span: timedelta) -> str:
        body = client.get(f"/api/devices/{fleet['one']}/readings",
                          query_string={"from": iso(NOW - span), "to": iso(NOW)}).json
        assert body is not None
        assert len(body["points"]) <= 1000
        return str(body["bucket"])

    assert bucket(timedelta(minutes=30)) == "raw"  # 257 readings
    assert bucket(timedelta(hours=3)) == "1m"  # 1,542 readings, 180 minutes
    body = client.get(f"/api/devices/{fleet['one']}/readings").json  # the last 24 h by default
    assert body is not None and body["kind"] == "light" and body["bucket"] == "1m"
    assert datetime.fromisoformat(body["to"]) - datetime.fromisoformat(body["from"]) == timedelta(hours=24)


def test_any_offset_is_accepted_and_utc_comes_back(client: FlaskClient, fleet: dict[str, Any]) -> None:
    start = START + timedelta(minutes=1)
    paris = start.astimezone(UTC).replace(tzinfo=None).isoformat() + "+00:00"
    local = (start + timedelta(hours=1)).replace(tzinfo=None).isoformat() + "+01:00"
    for written in (paris, local, start.strftime("%Y-%m-%dT%H:%M:%SZ"), local.replace("+", " ")):
        body = client.get(f"/api/devices/{fleet['one']}/readings?bucket=raw&from={written}").json
        assert body is not None and body["from"] == iso(start), written


@pytest.mark.parametrize(("query", "parameter"), [
    ("kind=temperature", "kind"), ("bucket=5m", "bucket"), ("from=hier", "from"), ("to=2026-13-01", "to"),
    ("from=2026-11-29T10:00:00Z&to=2026-11-29T09:00:00Z", "from"), ("from=0001-01-01T00:00:00Z", "from"),
])
def test_a_bad_parameter_is_a_400_naming_it(client: FlaskClient, fleet: dict[str, Any], query: str,
                                            parameter: str) -> None:
    for path in (f"/api/devices/{fleet['one']}/readings", f"/api/devices/{fleet['one']}/readings.csv",
                 "/api/export.csv"):
        answer = client.get(f"{path}?{query}")
        assert answer.status_code == 400, (path, query)
        assert answer.json is not None and answer.json["parameter"] == parameter
        assert parameter in answer.json["error"]
    answer = client.get("/api/export.csv?device=abc")
    assert answer.status_code == 400 and answer.json is not None and answer.json["parameter"] == "device"


def test_unknown_devices_are_404(client: FlaskClient, fleet: dict[str, Any]) -> None:
    for path in ("/api/devices/99/readings", "/api/devices/99/readings.csv", "/api/export.csv?device=99"):
        answer = client.get(path)
        assert answer.status_code == 404 and answer.json == {"error": "aucun appareil n'a l'identifiant 99"}


def rows_of(answer: Any) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(answer.get_data(as_text=True))))


def test_the_device_csv_holds_the_raw_rows(client: FlaskClient, fleet: dict[str, Any]) -> None:
    start, end = START, START + timedelta(hours=1)
    answer = client.get(f"/api/devices/{fleet['one']}/readings.csv",
                        query_string={"from": iso(start), "to": iso(end)})
    assert answer.status_code == 200
    assert answer.mimetype == "text/csv"
    assert answer.headers["Content-Disposition"].startswith('attachment; filename="sensorhub-appareil1-light-')
    assert answer.get_data(as_text=True).startswith("at,device_id,device_name,kind,value\r\n")
    assert rows_of(answer) == [{"at": iso(at), "device_id": str(fleet["one"]), "device_name": "salle, 1",
                                "kind": "light", "value": str(value)}
                               for at, value in fleet["light"] if start <= at < end]


@both_databases
def test_the_fleet_export_holds_every_kind_device_by_device(client: FlaskClient, fleet: dict[str, Any],
                                                           engine: Engine) -> None:
    answer = client.get("/api/export.csv", query_string={"from": iso(START), "to": iso(NOW + timedelta(hours=1))})
    rows = rows_of(answer)
    assert answer.headers["Content-Disposition"].startswith('attachment; filename="sensorhub-')
    assert len(rows) == len(fleet["light"]) + 2 + 4 + 2
    assert [r["device_id"] for r in rows] == sorted(r["device_id"] for r in rows)
    ones = [r for r in rows if r["device_id"] == str(fleet["one"])]
    assert [r["at"] for r in ones] == sorted(r["at"] for r in ones)
    assert {r["kind"] for r in ones} == {"light", "led", "button"}
    only = rows_of(client.get("/api/export.csv", query_string={
        "from": iso(START), "to": iso(NOW), "kind": "led", "device": fleet["one"]}))
    assert [(r["at"], r["value"]) for r in only] == [(iso(at), str(v)) for at, v in zip(fleet["led"], [1, 0, 1, 0],
                                                                                         strict=True)]


@both_databases
def test_stats_give_the_database_size_and_the_oldest_reading(client: FlaskClient, fleet: dict[str, Any],
                                                             settings: Any, engine: Engine) -> None:
    body = client.get("/api/stats").json
    assert body is not None
    assert body["oldest"] == iso(fleet["light"][0][0])
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            size = conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar_one()
        assert body["db_bytes"] == size > 1_000_000  # the database with its catalogs, not the file of another
        return
    path = settings.database_url.removeprefix("sqlite:///")
    import os

    assert body["db_bytes"] >= os.stat(path).st_size > 0


def test_anonymous_visitors_read_the_series_once_accounts_exist(client: FlaskClient, fleet: dict[str, Any],
                                                                engine: Engine) -> None:
    accounts.add(engine, "alice", "correct horse battery")
    with engine.begin() as conn:
        conn.execute(update(Device).values(online=False))
    assert client.get(f"/api/devices/{fleet['one']}/readings").status_code == 200
    answer = client.get(f"/api/devices/{fleet['one']}/readings.csv")
    assert answer.status_code == 200 and "mac" not in answer.get_data(as_text=True).splitlines()[0]


# -- the device page ---------------------------------------------------------------------------------------------


@both_databases
def test_the_device_page_has_its_ranges_csv_link_and_sessions(client: FlaskClient, fleet: dict[str, Any],
                                                              engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO device_session (device_id, session_id, started_at, online_at, ended_at) "
                          "VALUES (1, '1764380000.000001', '2026-11-29 01:00:00.000000', "
                          "'2026-11-29 01:00:01.000000', '2026-11-29 02:00:00.000000')"))
    answer = client.get(f"/appareil/{fleet['one']}")
    assert answer.status_code == 200
    html = answer.get_data(as_text=True)
    assert "<h1 data-device-name>salle, 1</h1>" in html
    for key, label in (("1h", "1 h"), ("24h", "24 h"), ("7j", "7 j"), ("30j", "30 j"), ("custom", "Personnalisée")):
        assert re.search(rf'<button type="button" data-range="{key}" aria-pressed="\w+"[^>]*>{label}</button>', html)
    assert 'data-range="24h" aria-pressed="true"' in html
    assert f'href="/api/export.csv?device={fleet["one"]}" data-csv download' in html
    assert 'vendor/chartjs-adapter-date-fns.bundle.min.js' in html and 'appareil.js' in html
    sessions = html[html.index("data-sessions"):]
    assert '<time datetime="2026-11-29T01:00:00.000000+00:00">2026-11-29 01:00:00 UTC</time>' in sessions
    assert "parti le" in sessions and "session 1764380000.000001" in sessions
    for script in re.findall(r"<script\b[^>]*>", html):  # no inline code: data only, or files
        assert "src=" in script or 'type="application/json"' in script
    assert client.get(f"/appareil/{fleet['one']}?periode=7j").get_data(as_text=True).count(
        'data-range="7j" aria-pressed="true"') == 1
    assert client.get("/appareil/99").status_code == 404


def test_the_device_pages_ranges_and_buckets_are_written_once(client: FlaskClient, fleet: dict[str, Any]) -> None:
    # The script takes each range's span from its button (pages.RANGES): no key or duration of its own.
    html = client.get(f"/appareil/{fleet['one']}").get_data(as_text=True)
    spans = dict(re.findall(r'data-range="(\w+)" aria-pressed="\w+"\s+data-span-ms="(\d+)"', html))
    assert spans == {key: str(span.seconds * 1000) for key, span in RANGES.items()}
    assert f'data-period="{DEFAULT_RANGE}"' in html
    script = (ROOT / "src" / "sensorhub" / "web" / "static" / "appareil.js").read_text()
    for key in set(RANGES) - {"1h"}:  # '1h' is also a bucket's name (the API's), which the script knows
        assert f"'{key}'" not in script, key
    assert "86400" not in script and "3600e3 *" not in script and "60e3" not in script
    # The buckets' widths (for the step series' share of time on) are the roll-ups' own.
    found = re.search(r'data-bucket-ms="([^"]*)"', html)
    assert found is not None
    assert json.loads(htmllib.unescape(found[1])) == {name: micros // 1000 for name, micros in buckets.SIZES.items()}


def test_every_card_links_to_its_device_page(client: FlaskClient, fleet: dict[str, Any]) -> None:
    for path in ("/capteurs", "/historique", f"/sensor/{fleet['one']}"):
        html = client.get(path).get_data(as_text=True)
        assert re.search(rf'<a href="/appareil/{fleet["one"]}" data-device-name[^>]*>salle, 1</a>', html), path


def test_anonymous_visitors_see_the_device_page_without_private_fields(client: FlaskClient, fleet: dict[str, Any],
                                                                       engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO device_session (device_id, session_id, started_at) "
                          "VALUES (1, '1764380000.000001', '2026-11-29 01:00:00.000000')"))
    accounts.add(engine, "alice", "correct horse battery")
    html = client.get(f"/appareil/{fleet['one']}").get_data(as_text=True)
    assert "salle, 1" in html and "02:00:00:00:00:01" not in html and "1764380000.000001" not in html
    # nor the times of its sessions (issue 23: a session id used to be the time it started)
    assert "Nommé le" not in html and "2026-11-29T01:00:00" not in html and "data-sessions-hidden" in html


def test_aide_shows_the_database_size_and_oldest_reading(client: FlaskClient, fleet: dict[str, Any]) -> None:
    html = client.get("/aide").get_data(as_text=True)
    assert "Taille sur le disque" in html and re.search(r'data-db-bytes="\d+">[\d,]+ (ko|Mo)<', html)
    assert f'<time datetime="{iso(fleet["light"][0][0])}">' in html
    assert "Conservation des mesures brutes</dt><dd>illimitée" in html


@both_databases
def test_a_led_on_now_counts_up_to_now_while_its_device_is_online(client: FlaskClient, fleet: dict[str, Any],
                                                                   engine: Engine) -> None:
    switched = add_readings(engine, LedReading, fleet["two"], [1], START + timedelta(minutes=10))[0]
    query = {"kind": "led", "from": iso(START), "to": iso(switched + timedelta(minutes=70)), "bucket": "1m"}

    def on_seconds() -> float:
        body = client.get(f"/api/devices/{fleet['two']}/readings", query_string=query).json
        assert body is not None
        return float(sum(point["on_seconds"] for point in body["points"]))

    assert on_seconds() == 70 * 60  # nothing ended it yet: on until `to`
    with engine.begin() as conn:  # a session that started after the reading: that state is over
        conn.execute(text("INSERT INTO device_session (device_id, session_id, started_at) "
                          "VALUES (:d, '1.000002', :at)"),
                     {"d": fleet["two"], "at": (switched + timedelta(minutes=5)).strftime("%Y-%m-%d %H:%M:%S.%f")})
    assert on_seconds() == 0
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM device_session"))
        conn.execute(update(Device).where(Device.id == fleet["two"]).values(online=False))
    assert on_seconds() == 0  # away: nothing is counted
