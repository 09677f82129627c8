"""The web app through Flask's test client, on a real temporary SQLite database (the queries: PostgreSQL too) and
real FIFOs."""

from __future__ import annotations

import json
import os
import queue
import re
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, jsonify
from flask.testing import FlaskClient
from sqlalchemy import Engine, text, update
from sqlalchemy.exc import InternalError, OperationalError

from sensorhub.config import Settings
from sensorhub.db.models import ButtonReading, Device, LedReading, LightReading
from sensorhub.ports import PortError, ensure_free
from sensorhub.protocol import MAX_NAME, NAME_RULE, Topic, browser_data
from sensorhub.web import create_app
from sensorhub.web.serve import gunicorn_options, web_sizing
from sensorhub.web.state import web_state
from tests.factories import SESSION, add_device, add_readings, mac_of
from tests.stack import ROOT
from tests.support import both_databases, finishes

STATIC = ROOT / "src" / "sensorhub" / "web" / "static"
XSS_NAME = "<script>x</script>"
XSS_ATTR_NAME = "'\"><img src=x onerror=1>"


# -- helpers -----------------------------------------------------------------------------------------------------


def csrf_token(client: FlaskClient, path: str = "/accueil") -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', page)
    assert match, "no csrf-token meta tag"
    return match.group(1)


def post(client: FlaskClient, path: str, body: Any, token: str | None) -> Any:
    headers = {"X-CSRFToken": token} if token else {}
    return client.post(path, json=body, headers=headers)


def position(html: str, needle: str) -> int:
    index = html.find(needle)
    assert index >= 0, f"{needle!r} not in the page"
    return index


class PipeClient:
    """Plays the ingest client's part of the FIFO: a thread reads the lines; it may also apply renames."""

    def __init__(self, path: str, engine: Engine | None = None) -> None:
        os.mkfifo(path, 0o600)
        self.engine = engine
        self.lines: queue.Queue[bytes] = queue.Queue()
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pending = b""
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(50):
                continue
            chunk = os.read(self._fd, 4096)
            if not chunk:  # no writer right now
                time.sleep(0.01)
                continue
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                self.lines.put(line)
                self._apply(line)

    def _apply(self, line: bytes) -> None:
        command = json.loads(line)
        if self.engine is not None and command["cmd"] == "rename":
            with self.engine.begin() as conn:
                conn.execute(update(Device).where(Device.id == command["device"]).values(name=command["name"]))

    def line(self, timeout: float = 2.0) -> bytes:
        return self.lines.get(timeout=timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        os.close(self._fd)


# -- fixtures ----------------------------------------------------------------------------------------------------


def web_state_of(app: Flask) -> Any:
    with app.app_context():
        return web_state()


@pytest.fixture
def pipe(settings: Settings) -> Iterator[PipeClient]:
    reader = PipeClient(settings.fifo)
    yield reader
    reader.close()


@pytest.fixture
def applying_pipe(settings: Settings, engine: Engine) -> Iterator[PipeClient]:
    reader = PipeClient(settings.fifo, engine)
    yield reader
    reader.close()


# -- pages -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "heading"), [
    ("/", "Vue d'ensemble"),
    ("/accueil", "Vue d'ensemble"),
    ("/aide", "Un réseau de capteurs ESP32"),
    ("/capteurs", "Capteurs connectés"),
    ("/historique", "Historique"),
])
def test_pages_answer_in_french(client: FlaskClient, path: str, heading: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert '<html lang="fr">' in html
    assert heading in html
    for label in ("Accueil", "Capteurs", "Historique", "Aide"):
        assert f">{label}</a>" in html
    assert "Ce site a besoin de JavaScript" in html  # the <noscript> warning
    assert re.search(r'<meta name="csrf-token" content="[^"]+">', html)


def test_aide_explains_how_to_connect_a_device(client: FlaskClient, settings: Settings) -> None:
    html = client.get("/aide", base_url="http://192.168.1.20:8000").get_data(as_text=True)
    assert "192.168.1.20" in html  # the broker address is the host the page came from
    assert f"<code>{settings.mqtt_port}</code>" in html
    assert f"<code>{settings.mqtt_ws_port}</code>" in html
    for topic in Topic:
        assert f'<code class="topic">{topic}</code>' in html
    for words in ("Broker Mosquitto", "Client d'ingestion", "Base SQLite", "Serveur web Flask", "keepalive",
                  "nom;session;0-100", "Keepalive"):
        assert words in html or words.lower() in html.lower()
    assert "strictement moins de 12 s" in html


def test_aide_hints_at_the_lan_address_when_browsed_locally(client: FlaskClient) -> None:
    html = client.get("/aide", base_url="http://127.0.0.1:8000").get_data(as_text=True)
    assert "adresse IP de cette machine sur le réseau local" in html


def test_no_external_url_and_no_inline_script(client: FlaskClient, engine: Engine) -> None:
    add_device(engine, "capteur01")
    for path in ("/accueil", "/aide", "/capteurs", "/historique", "/sensor/1", "/sensor/online"):
        html = client.get(path).get_data(as_text=True)
        assert not re.search(r"(?:src|href)=\"(?:https?:)?//", html), path
        assert "http://" not in html and "https://" not in html, path
        for tag in re.findall(r"<script\b[^>]*>", html):
            if tag in ('<script type="application/json" id="sensorhub-protocol">',
                       '<script type="application/json" id="sensorhub-strings">'):
                continue  # data for the scripts (the protocol, the page's strings), never executed
            assert "src=" in tag, f"inline script on {path}: {tag}"
    for static in STATIC.glob("*.*"):
        content = static.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")  # a name, not a fetch
        assert "http://" not in content and "https://" not in content, static.name


def test_pages_carry_the_protocol_as_data_for_their_scripts(client: FlaskClient) -> None:
    for path in ("/accueil", "/capteurs", "/historique"):
        html = client.get(path).get_data(as_text=True)
        found = re.search(r'<script type="application/json" id="sensorhub-protocol">(.*?)</script>', html, re.S)
        assert found, path
        data = json.loads(found[1])
        assert data == browser_data(), path
    assert data["subscriptions"]["state/join"] == {"qos": 2}
    assert data["topics"]["PHOTORESISTOR_STATUS"] == "photoresistor/status"
    assert data["name"]["maxLength"] == MAX_NAME and data["name"]["messages"]["separator"].endswith("« ; »")
    for script in sorted(STATIC.glob("*.js")):  # nothing of it copied into the scripts
        source = script.read_text()
        for copied in ("state/join", "led/status", "photoresistor/status", "29", "qos: 2", "caractères",
                       "edge-spaces", "too-long"):
            assert copied not in source, f"{copied!r} in {script.name}"


def test_pages_carry_a_content_security_policy(client: FlaskClient) -> None:
    response = client.get("/capteurs")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy and "unsafe-inline" not in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_static_files_are_served(client: FlaskClient) -> None:
    for name in ("style.css", "common.js", "capteurs.js", "live.js", "reconcile.js", "ledcontrol.js", "livecards.js",
                 "fleetview.js", "historique.js", "favicon.svg"):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200, name
        response.close()


def page_strings(client: FlaskClient, language: str = "fr") -> dict[str, str]:
    """The scripts' strings a page carries (base.html) for a browser asking for `language`."""
    html = client.get("/aide", headers={"Accept-Language": language}).get_data(as_text=True)
    found = re.search(r'<script type="application/json" id="sensorhub-strings">(.*?)</script>', html, re.S)
    assert found
    return dict(json.loads(found[1]))


def run_js(tmp_path: Path, module: str, script: str, strings: dict[str, str] | None = None,
           language: str = "fr") -> Any:
    """Import a static ES module in Node and print `script`'s value as JSON; with `strings`, as in a page in
    `language` carrying them (the little of `document` that common.js's `t` reads)."""
    if shutil.which("node") is None:
        pytest.fail("node is missing: sudo apt-get install nodejs (make install needs it too)")
    copy = tmp_path / f"{module}.mjs"  # .mjs: Node loads it as the ES module it is, without a warning
    copy.write_text((STATIC / f"{module}.js").read_text())
    page = ""
    if strings is not None:
        text = json.dumps(json.dumps(strings))
        page = (f"globalThis.document = {{documentElement: {{lang: {json.dumps(language)}}}, getElementById: "
                f"(id) => (id === 'sensorhub-strings' ? {{textContent: {text}}} : null)}};\n")
    program = f"import * as m from {json.dumps(copy.as_uri())};\n{page}console.log(JSON.stringify({script}));"
    ran = subprocess.run(["node", "--input-type=module", "-e", program], capture_output=True, text=True, timeout=30)
    assert ran.returncode == 0 and ran.stderr == "", ran.stderr
    return json.loads(ran.stdout)


def test_the_filter_count_speaks_french_and_english(tmp_path: Path, client: FlaskClient) -> None:
    count = "[0, 1, 2, 3].map((n) => m.countLabel(n, 3)).concat(m.countLabel(1, 1))"
    labels = run_js(tmp_path, "common", count, page_strings(client))
    assert labels == ["0 appareil affiché sur 3", "1 appareil affiché sur 3", "2 appareils affichés sur 3",
                      "3 appareils affichés sur 3", "1 appareil affiché sur 1"]
    labels = run_js(tmp_path, "common", count, page_strings(client, "en"), "en")
    assert labels == ["0 devices shown of 3", "1 device shown of 3", "2 devices shown of 3", "3 devices shown of 3",
                      "1 device shown of 1"]


def test_the_device_page_counts_its_points_in_french_and_english(tmp_path: Path, client: FlaskClient) -> None:
    # "1 mesures" was shown under a chart of one reading.
    points = "[[0, 'raw'], [1, 'raw'], [2, 'raw'], [1, '1h'], [5, '1m']].map(([n, b]) => m.seriesLabel(n, b))"
    labels = run_js(tmp_path, "common", points, page_strings(client))
    assert labels == ["aucune mesure", "1 mesure", "2 mesures", "1 heure (min, moyenne, max)",
                      "5 minutes (min, moyenne, max)"]
    labels = run_js(tmp_path, "common", points, page_strings(client, "en"), "en")
    assert labels == ["no reading", "1 reading", "2 readings", "1 hour (min, average, max)",
                      "5 minutes (min, average, max)"]


def test_the_pages_check_a_name_with_the_servers_rule(tmp_path: Path) -> None:
    # The browser runs the rule's patterns from browser_data (common.js has no rule of its own): the same
    # message as the API for edges, spaces, the separator, control and non-ASCII characters, astral ones included.
    names = ["", "salle B", "a" * MAX_NAME, "a" * (MAX_NAME + 1), "a" * (MAX_NAME - 1) + "\U0001f600", " salle",
             "salle ", " ", "a;b", ";", "é", "a\n", " \n", "a \n", "\t", "\x7f", "~!", "a  b", "\u2028", "; ",
             ";" * 40, "\U0001f600" * 15]
    rule = browser_data()["name"]
    found = run_js(tmp_path, "common", f"{json.dumps(names)}.map((name) => m.ruleProblem({json.dumps(rule)}, name))")
    expected = [None if (code := NAME_RULE.problem(name)) is None else NAME_RULE.messages[code].fr for name in names]
    assert found == expected


def test_the_layout_toggle_names_the_layout_it_switches_to(client: FlaskClient) -> None:
    html = client.get("/capteurs").get_data(as_text=True)
    toggle = re.search(r"<button[^>]*data-layout-toggle.*?</button>", html, flags=re.S)
    assert toggle is not None
    assert 'aria-pressed="false"' in toggle[0] and "Afficher en liste" in toggle[0]  # the grid is the default
    assert re.search(r'data-layout-icon="grid"[^>]*\shidden[\s>]', toggle[0])
    assert not re.search(r'data-layout-icon="list"[^>]*\shidden[\s>]', toggle[0])


@both_databases
def test_capteurs_shows_online_devices_with_their_state(client: FlaskClient, engine: Engine,
                                                        settings: Settings) -> None:
    now = datetime.now(UTC)
    online = add_device(engine, "capteur01", 1, session="100.000001", display_name="salle B")
    add_device(engine, "capteur02", 2, online=False)
    start = now - timedelta(minutes=30)
    add_readings(engine, LedReading, online, [0, 1], start)
    add_readings(engine, ButtonReading, online, [1], start)
    add_readings(engine, LightReading, online, list(range(40, 52)), start)
    html = client.get("/capteurs").get_data(as_text=True)
    assert f'data-ws-port="{settings.mqtt_ws_port}"' in html
    assert "salle B" in html and "capteur02" not in html
    # Messages carry the session name: the card keeps it beside the name it shows.
    assert 'data-session-name="capteur01"' in html and 'data-session="100.000001"' in html
    assert 'data-led-state data-value="1">allumée<' in html
    assert "data-led-toggle checked" in html
    assert 'data-value="1">appuyé<' in html
    assert ">51 %<" in html
    light = json.loads(re.search(r"data-light='([^']*)'", html).group(1))  # type: ignore[union-attr]
    assert [p["value"] for p in light] == list(range(42, 52))  # the last 10, oldest first for the chart
    assert "Aucun capteur connecté" in html  # present, hidden while cards are shown
    assert 'data-empty-state hidden' in html


def test_capteurs_without_devices_says_so(client: FlaskClient) -> None:
    html = client.get("/capteurs").get_data(as_text=True)
    assert "Aucun capteur connecté pour le moment" in html
    assert "data-empty-state hidden" not in html


@both_databases
def test_historique_lists_every_device_most_recently_seen_first(client: FlaskClient, engine: Engine) -> None:
    now = datetime.now(UTC)
    joined = now - timedelta(days=1)
    old = add_device(engine, "ancien", 1, online=False, joined=joined, last_seen=now - timedelta(hours=5))
    recent = add_device(engine, "recent", 2, joined=joined, last_seen=now - timedelta(minutes=1))
    middle = add_device(engine, "milieu", 3, online=False, joined=joined, last_seen=now - timedelta(hours=1))
    html = client.get("/historique").get_data(as_text=True)
    assert position(html, f'id="appareil-{recent}"') < position(html, f'id="appareil-{middle}"') \
        < position(html, f'id="appareil-{old}"')
    # last_seen and joined_at in UTC
    seen = (now - timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert seen in html
    assert joined.strftime("%Y-%m-%d %H:%M:%S UTC") in html
    assert "en ligne" in html and "hors ligne" in html
    # No readings at all: the message in each of the three boxes of each device.
    assert html.count("Aucune valeur enregistrée") == 9


@both_databases
def test_historique_shows_the_ten_newest_values_newest_first_with_utc_timestamps(
        client: FlaskClient, engine: Engine) -> None:
    device = add_device(engine, "capteur01")
    start = datetime.now(UTC) - timedelta(hours=1)
    moments = add_readings(engine, LightReading, device, list(range(60, 72)), start)
    add_readings(engine, ButtonReading, device, [1, 0], start)
    html = client.get("/historique").get_data(as_text=True)
    light = html[position(html, 'data-kind="light"'):]
    light = light[:light.index("</section>")]
    items = re.findall(r'<li><time datetime="([^"]+)" data-precision="ms">([^<]+)</time> '
                       r'<span class="value">([^<]+)</span></li>', light)
    assert [value for _, _, value in items] == [f"{v} %" for v in range(71, 61, -1)]
    newest = moments[-1]
    assert items[0][0] == newest.isoformat()
    assert items[0][1] == newest.strftime("%Y-%m-%d %H:%M:%S.") + f"{newest.microsecond // 1000:03d} UTC"
    button = html[position(html, 'data-kind="button"'):]
    assert re.findall(r'class="value">([^<]+)<', button[:button.index("</section>")]) == ["relâché", "appuyé"]
    led = html[position(html, 'data-kind="led"'):]
    assert "Aucune valeur enregistrée" in led[:led.index("</section>")]
    assert html.count("Aucune valeur enregistrée") == 1


@both_databases
def test_historique_pages_with_a_keyset_cursor(client: FlaskClient, engine: Engine) -> None:
    now = datetime.now(UTC)
    joined = now - timedelta(days=2)
    devices = []
    for i in range(120):
        seen = now - timedelta(minutes=(i * 7) % 40)  # groups sharing a last_seen: the id breaks the tie
        devices.append((seen, add_device(engine, f"dev{i:03d}", i, online=False, joined=joined, last_seen=seen)))
    expected = [device_id for _, device_id in sorted(devices, reverse=True)]
    shown: list[int] = []
    path: str | None = "/historique"
    while path:
        html = client.get(path).get_data(as_text=True)
        ids = [int(x) for x in re.findall(r'id="appareil-(\d+)"', html)]
        assert len(ids) == 50 or (len(ids) == 20 and len(shown) == 100)
        assert ("Les plus récents" in html) == bool(shown)
        shown += ids
        match = re.search(r'<a href="([^"]+)" rel="next">Plus anciens', html)
        path = match.group(1).replace("&amp;", "&") if match else None
    assert shown == expected


@both_databases
def test_historique_searches_names_and_macs_server_side(client: FlaskClient, engine: Engine) -> None:
    for i, name in enumerate(["cuisine", "salon", "garage"], start=1):
        add_device(engine, name, i)
    html = client.get("/historique?q=SAL").get_data(as_text=True)
    assert "salon" in html and "cuisine" not in html and "garage" not in html
    html = client.get("/historique?q=00:00:03").get_data(as_text=True)  # part of a MAC, any case
    assert "garage" in html and "salon" not in html
    html = client.get("/historique?q=%25").get_data(as_text=True)  # LIKE wildcards are plain characters
    assert "Aucun appareil ne correspond" in html
    assert 'value="%"' in html


def test_historique_refuses_a_bad_cursor(client: FlaskClient) -> None:
    response = client.get("/historique?avant=2024-13-99")
    assert response.status_code == 400
    assert "Requête invalide" in response.get_data(as_text=True)


@both_databases
def test_device_names_are_escaped_everywhere(client: FlaskClient, engine: Engine) -> None:
    first = add_device(engine, XSS_NAME, 1)
    add_device(engine, XSS_ATTR_NAME, 2, session="200.000002")
    paths = ["/capteurs", "/historique", f"/sensor/{first}", "/sensor/online", "/sensor/online?brief=1",
             f"/sensor/by-session?name=%3Cscript%3Ex%3C%2Fscript%3E&session={SESSION}",
             "/historique?q=%3Cscript%3E"]
    for path in paths:
        response = client.get(path)
        assert response.status_code == 200, path
        html = response.get_data(as_text=True)
        assert XSS_NAME not in html, path
        assert "&lt;script&gt;x&lt;/script&gt;" in html, path
        assert "<img" not in html, path
    device = client.get(f"/api/devices/{first}").get_json()
    assert device["name"] == XSS_NAME  # JSON carries the data as it is


# -- fragments ---------------------------------------------------------------------------------------------------


@both_databases
def test_sensor_fragments(client: FlaskClient, engine: Engine) -> None:
    online = add_device(engine, "capteur01", 1, session="100.000001")
    offline = add_device(engine, "capteur02", 2, online=False, session="200.000002")
    card = client.get(f"/sensor/{online}").get_data(as_text=True)
    assert card.lstrip().startswith("<article") and 'data-online="1"' in card
    assert "<html" not in card
    assert 'data-online="0"' in client.get(f"/sensor/{offline}").get_data(as_text=True)
    assert client.get("/sensor/999").status_code == 404
    found = client.get("/sensor/by-session?name=capteur01&session=100.000001")
    assert found.status_code == 200 and 'id="capteur-1"' in found.get_data(as_text=True)
    # Not (yet) recorded: another session, or an offline device, or nothing.
    assert client.get("/sensor/by-session?name=capteur01&session=100.000002").status_code == 404
    assert client.get("/sensor/by-session?name=capteur02&session=200.000002").status_code == 404
    assert client.get("/sensor/by-session?name=capteur01").status_code == 400
    listing = client.get("/sensor/online").get_data(as_text=True)
    assert re.findall(r'id="capteur-(\d+)"', listing) == [str(online)]
    # The brief list a large /capteurs page reconciles with: what identifies each card, nothing more.
    brief = client.get("/sensor/online?brief=1").get_data(as_text=True)
    assert re.findall(r'<article data-card data-id="(\d+)"', brief) == [str(online)]
    assert 'data-session-name="capteur01" data-session="100.000001" data-online="1"' in brief
    assert "data-light" not in brief and "<input" not in brief


@both_databases
def test_by_session_matches_the_session_name_not_the_display_name(client: FlaskClient, engine: Engine) -> None:
    add_device(engine, "capteur01", 1, display_name="salle B")
    assert client.get(f"/sensor/by-session?name=capteur01&session={SESSION}").status_code == 200
    assert client.get(f"/sensor/by-session?name=salle%20B&session={SESSION}").status_code == 404


# -- JSON API ----------------------------------------------------------------------------------------------------

DEVICE_KEYS = ["id", "name", "session_name", "mac", "online", "session_id", "joined_at", "last_seen",
               "led", "button", "light"]


@both_databases
def test_api_devices(client: FlaskClient, engine: Engine) -> None:
    now = datetime.now(UTC)
    first = add_device(engine, "capteur01", 1, last_seen=now - timedelta(minutes=5), display_name="salle B")
    second = add_device(engine, "capteur02", 2, online=False, last_seen=now - timedelta(minutes=1))
    add_readings(engine, LightReading, first, [10, 20, 30], now - timedelta(hours=1))
    add_readings(engine, LedReading, first, [1, 0], now - timedelta(hours=1))
    devices = client.get("/api/devices").get_json()
    assert [d["id"] for d in devices] == [second, first]  # most recently seen first
    assert list(devices[1]) == DEVICE_KEYS
    body = devices[1]
    assert body["name"] == "salle B" and body["session_name"] == "capteur01"
    assert body["mac"] == mac_of(1) and body["online"] is True and body["session_id"] == SESSION
    assert (body["led"], body["button"], body["light"]) == (0, None, 30)
    assert datetime.fromisoformat(body["last_seen"]) == now - timedelta(minutes=5)
    assert body["last_seen"].endswith("+00:00")
    assert devices[0]["led"] is None and devices[0]["light"] is None
    assert [d["id"] for d in client.get("/api/devices?online=1").get_json()] == [first]
    assert [d["id"] for d in client.get("/api/devices?online=0").get_json()] == [second]
    assert [d["id"] for d in client.get("/api/devices?q=salle").get_json()] == [first]
    bad = client.get("/api/devices?online=maybe")
    assert bad.status_code == 400 and "online" in bad.get_json()["error"]


@both_databases
def test_api_devices_fast_path_writes_what_device_json_writes(client: FlaskClient, engine: Engine) -> None:
    from sensorhub.db import queries
    from sensorhub.web.present import device_json, device_records_json

    now = datetime.now(UTC)
    first = add_device(engine, "capteur01", 1, last_seen=now - timedelta(seconds=3))
    add_device(engine, "capteur02", 2, online=False, last_seen=now.replace(microsecond=0) - timedelta(minutes=1))
    add_readings(engine, LightReading, first, [10, 20, 30], now - timedelta(hours=1))
    add_readings(engine, ButtonReading, first, [1], now - timedelta(hours=1))
    with engine.connect() as conn:
        rows = queries.list_devices(conn)
        records = queries.device_records(conn)
    for private in (True, False):
        assert device_records_json(records, private) == [device_json(row, private) for row in rows]
    assert device_records_json(records)[1]["last_seen"].endswith(".000000+00:00")  # whole seconds keep .000000
    with client.application.app_context():  # the route's orjson body: byte for byte what jsonify writes
        expected = jsonify(device_records_json(records)).get_data()
    response = client.get("/api/devices")
    assert response.mimetype == "application/json" and response.get_data() == expected


@both_databases
def test_lists_and_cards_answer_304_while_unchanged(client: FlaskClient, engine: Engine) -> None:
    device = add_device(engine, "capteur01", 1)
    for path in ("/api/devices", f"/sensor/{device}", "/sensor/online", "/sensor/online?brief=1",
                 f"/sensor/by-session?name=capteur01&session={SESSION}"):
        first = client.get(path)
        etag = first.headers["ETag"]
        assert first.status_code == 200 and first.headers["Cache-Control"] == "private, no-cache"
        again = client.get(path, headers={"If-None-Match": etag})
        assert (again.status_code, again.data) == (304, b""), path
        assert client.get(path, headers={"If-None-Match": '"other"'}).status_code == 200
    add_readings(engine, LightReading, device, [42], datetime.now(UTC) - timedelta(seconds=1))
    changed = client.get("/api/devices", headers={"If-None-Match": first.headers["ETag"]})
    assert changed.status_code == 200 and changed.get_json()[0]["light"] == 42
    assert client.get("/sensor/999", headers={"If-None-Match": "*"}).status_code == 404


@both_databases
def test_api_device_detail_has_the_last_ten_values_newest_first(client: FlaskClient, engine: Engine) -> None:
    device = add_device(engine, "capteur01")
    start = datetime.now(UTC) - timedelta(hours=1)
    moments = add_readings(engine, LightReading, device, list(range(80, 93)), start)
    add_readings(engine, ButtonReading, device, [1, 0, 1], start)
    body = client.get(f"/api/devices/{device}").get_json()
    assert list(body) == [*DEVICE_KEYS, "history"]
    history = body["history"]
    assert list(history) == ["led", "button", "light"]
    assert history["led"] == []
    assert [v["value"] for v in history["button"]] == [1, 0, 1]
    assert [v["value"] for v in history["light"]] == list(range(92, 82, -1))
    assert [datetime.fromisoformat(v["at"]) for v in history["light"]] == moments[:2:-1]


def test_api_index_lists_the_api_routes_with_their_docstrings(app: Flask, client: FlaskClient) -> None:
    from sensorhub.web import api

    for path in ("/api", "/api/"):
        response = client.get(path)
        assert response.status_code == 200 and response.mimetype == "application/json", path
        body = response.get_json()
        assert body["documentation"] == "docs/api.md"
        listed = [(r["method"], r["path"]) for r in body["routes"]]
        assert listed == [("GET", "/api"), ("GET", "/api/devices"), ("GET", "/api/devices/<device_id>"),
                          ("GET", "/api/stats"), ("GET", "/api/overview"), ("GET", "/api/live-token"),
                          ("POST", "/api/devices/<device_id>/led"),
                          ("POST", "/api/devices/<device_id>/name"), ("GET", "/api/devices/<device_id>/readings"),
                          ("GET", "/api/devices/<device_id>/readings.csv"), ("GET", "/api/export.csv"),
                          ("GET", "/api/alerts"), ("GET", "/api/alerts/rules"), ("POST", "/api/alerts/rules"),
                          ("PUT", "/api/alerts/rules/<rule_id>"), ("DELETE", "/api/alerts/rules/<rule_id>"),
                          ("POST", "/api/alerts/<alert_id>/ack"), ("POST", "/api/alerts/<alert_id>/snooze")]
    described = {r["path"]: r["description"] for r in body["routes"] if r["method"] == "GET"}
    assert api.devices.__doc__ is not None and described["/api/devices"] == api.devices.__doc__
    assert all(r["description"] for r in body["routes"])
    # Whole sentences: the first line alone cut `/api/stats`'s in the middle ("...; the").
    assert all(r["description"].endswith((".", ")")) for r in body["routes"]), body["routes"]
    assert described["/api/stats"].endswith("free space on its disk and whether that is low.")
    assert not any(r["path"].startswith(("/static", "/sensor", "/accueil")) for r in body["routes"])


def test_the_footer_and_aide_link_the_api_index(client: FlaskClient) -> None:
    html = client.get("/aide").get_data(as_text=True)
    assert '<a href="/api">API JSON</a>' in html
    assert '<a href="/api">/api</a>' in html and "docs/api.md" in html


def test_api_unknown_device_and_routes_answer_json(client: FlaskClient) -> None:
    response = client.get("/api/devices/42")
    assert response.status_code == 404 and "42" in response.get_json()["error"]
    response = client.get("/api/nothing")
    assert response.status_code == 404 and response.get_json() == {"error": "introuvable"}
    response = client.get("/api/devices/1/led")
    assert response.status_code == 405 and "error" in response.get_json()
    page = client.get("/nulle-part")
    assert page.status_code == 404 and "Erreur 404" in page.get_data(as_text=True)


@both_databases
def test_api_stats(client: FlaskClient, engine: Engine) -> None:
    first = add_device(engine, "capteur01", 1)
    add_device(engine, "capteur02", 2, online=False)
    add_device(engine, "capteur03", 3)
    add_device(engine, "capteur04", 4)
    start = datetime.now(UTC) - timedelta(hours=1)
    add_readings(engine, LightReading, first, [1, 2, 3], start)
    add_readings(engine, ButtonReading, first, [1], start)
    body = client.get("/api/stats").get_json()
    assert body.pop("db_bytes") > 0
    free = body.pop("disk_free_bytes")  # of the SQLite file's disk; a server database's is not ours to see
    assert (free > 0) if engine.dialect.name == "sqlite" else (free is None)
    low = body.pop("disk_low")
    assert isinstance(low, bool) and (free is not None or low is False)
    assert body == {"devices": 4, "online": 3, "readings": {"led": 0, "button": 1, "light": 3},
                    "oldest": (start + timedelta(seconds=1)).isoformat()}


# -- CSRF and bad requests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "not-the-token"])
@pytest.mark.parametrize(("path", "body"), [("/api/devices/1/led", {"on": True}),
                                            ("/api/devices/1/name", {"name": "x"})])
def test_state_changing_requests_need_the_csrf_token(client: FlaskClient, engine: Engine, pipe: PipeClient,
                                                    token: str | None, path: str, body: Any) -> None:
    add_device(engine, "capteur01")
    csrf_token(client)  # the session has a token; the request does not send it (or sends another)
    response = post(client, path, body, token)
    assert response.status_code == 400
    assert response.mimetype == "application/json"
    assert "CSRF" in response.get_json()["error"]
    assert pipe.lines.empty()


def test_a_token_from_another_session_is_refused(app: Flask, engine: Engine) -> None:
    add_device(engine, "capteur01")
    token = csrf_token(app.test_client())
    response = post(app.test_client(), "/api/devices/1/led", {"on": True}, token)
    assert response.status_code == 400 and "CSRF" in response.get_json()["error"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"data": "on=1"}, "Content-Type"),
    ({"data": "{not json", "content_type": "application/json"}, "JSON valide"),
    ({"json": [True]}, "objet JSON"),
    ({"json": {}}, "champ manquant"),
    ({"json": {"on": "yes"}}, "true ou false"),
    ({"json": {"on": 1}}, "true ou false"),
    ({"json": {"on": True, "colour": "red"}}, "champ inconnu"),
])
def test_bad_led_bodies_get_400_with_a_reason(client: FlaskClient, engine: Engine, kwargs: dict[str, Any],
                                              message: str) -> None:
    add_device(engine, "capteur01")
    token = csrf_token(client)
    response = client.post("/api/devices/1/led", headers={"X-CSRFToken": token}, **kwargs)
    assert response.status_code == 400
    assert message in response.get_json()["error"]


# -- LED ---------------------------------------------------------------------------------------------------------


def test_led_command_goes_through_the_pipe(client: FlaskClient, engine: Engine, pipe: PipeClient) -> None:
    device = add_device(engine, "capteur01", session="1743946777.603371")
    token = csrf_token(client, "/capteurs")
    response = post(client, f"/api/devices/{device}/led", {"on": True}, token)
    assert response.status_code == 202
    assert response.get_json() == {"status": "relayed"}
    assert pipe.line() == b'{"cmd":"led","device":1,"session":"1743946777.603371","on":true}'
    assert post(client, f"/api/devices/{device}/led", {"on": False}, token).status_code == 202
    assert pipe.line() == b'{"cmd":"led","device":1,"session":"1743946777.603371","on":false}'


@both_databases
def test_led_for_an_unknown_or_offline_device(client: FlaskClient, engine: Engine, pipe: PipeClient) -> None:
    offline = add_device(engine, "capteur01", online=False)
    token = csrf_token(client)
    response = post(client, "/api/devices/99/led", {"on": True}, token)
    assert response.status_code == 404 and "99" in response.get_json()["error"]
    response = post(client, f"/api/devices/{offline}/led", {"on": True}, token)
    assert response.status_code == 409
    assert response.get_json() == {"error": "l'appareil « capteur01 » est hors ligne"}
    assert pipe.lines.empty()


def test_led_without_ingest_client_answers_503_at_once(client: FlaskClient, engine: Engine,
                                                       settings: Settings) -> None:
    device = add_device(engine, "capteur01")
    token = csrf_token(client)
    # No pipe at all, then a pipe nobody reads: neither may block the request.
    for prepare in (lambda: None, lambda: os.mkfifo(settings.fifo)):
        prepare()
        response = finishes(lambda: post(client, f"/api/devices/{device}/led", {"on": True}, token),
                            what="the LED request")
        assert response.status_code == 503
        assert "le client d'ingestion ne tourne pas" in response.get_json()["error"]


def test_led_when_the_pipe_path_is_not_a_pipe(client: FlaskClient, engine: Engine, settings: Settings) -> None:
    device = add_device(engine, "capteur01")
    Path(settings.fifo).write_text("")
    response = post(client, f"/api/devices/{device}/led", {"on": True}, csrf_token(client))
    assert response.status_code == 503
    assert "not a named pipe" in response.get_json()["error"]


# -- rename ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "message"), [
    ("x" * 30, "au plus 29 caractères"),
    ("salle;B", "« ; »"),
    (" salle", "espace"),
    ("salle ", "espace"),
    ("", "vide"),
    ("café", "ASCII"),
    ("tab\there", "ASCII"),
])
def test_rename_refuses_bad_names(client: FlaskClient, engine: Engine, pipe: PipeClient, name: str,
                                  message: str) -> None:
    add_device(engine, "capteur01")
    response = post(client, "/api/devices/1/name", {"name": name}, csrf_token(client))
    assert response.status_code == 400
    assert message in response.get_json()["error"]
    assert pipe.lines.empty()


@both_databases
def test_rename_refuses_names_in_use(client: FlaskClient, engine: Engine, pipe: PipeClient) -> None:
    add_device(engine, "capteur01", 1)
    add_device(engine, "capteur02", 2, display_name="salle B")  # still in session as capteur02
    token = csrf_token(client)
    for taken in ("salle B", "capteur02"):
        response = post(client, "/api/devices/1/name", {"name": taken}, token)
        assert response.status_code == 409, taken
        assert "déjà utilisé" in response.get_json()["error"]
    response = post(client, "/api/devices/9/name", {"name": "libre"}, token)
    assert response.status_code == 404
    response = post(client, "/api/devices/1/name", {"name": 12}, token)
    assert response.status_code == 400 and "chaîne" in response.get_json()["error"]
    assert pipe.lines.empty()


@both_databases
def test_rename_answers_200_once_the_client_recorded_it(client: FlaskClient, engine: Engine,
                                                       applying_pipe: PipeClient) -> None:
    device = add_device(engine, "capteur01")
    response = post(client, f"/api/devices/{device}/name", {"name": "salle B"}, csrf_token(client))
    assert response.status_code == 200
    body = response.get_json()
    assert body["name"] == "salle B" and body["session_name"] == "capteur01" and list(body) == DEVICE_KEYS
    assert applying_pipe.line() == b'{"cmd":"rename","device":1,"name":"salle B"}'


def test_rename_answers_202_while_the_client_has_not_recorded_it(app: Flask, client: FlaskClient, engine: Engine,
                                                                pipe: PipeClient) -> None:
    app.config["SENSORHUB_RENAME_WAIT"] = 0.3
    device = add_device(engine, "capteur01")
    response = post(client, f"/api/devices/{device}/name", {"name": "salle B"}, csrf_token(client))
    assert response.status_code == 202
    assert response.get_json() == {"status": "pending"}
    assert pipe.line() == b'{"cmd":"rename","device":1,"name":"salle B"}'


def test_rename_to_its_own_session_name_or_same_name(client: FlaskClient, engine: Engine,
                                                    applying_pipe: PipeClient) -> None:
    device = add_device(engine, "capteur01", display_name="salle B")
    token = csrf_token(client)
    response = post(client, f"/api/devices/{device}/name", {"name": "salle B"}, token)
    assert response.status_code == 200 and response.get_json()["name"] == "salle B"
    assert applying_pipe.lines.empty()  # nothing to do
    response = post(client, f"/api/devices/{device}/name", {"name": "capteur01"}, token)
    assert response.status_code == 200 and response.get_json()["name"] == "capteur01"


def test_rename_without_ingest_client(client: FlaskClient, engine: Engine) -> None:
    device = add_device(engine, "capteur01")
    response = post(client, f"/api/devices/{device}/name", {"name": "salle B"}, csrf_token(client))
    assert response.status_code == 503
    assert "le client d'ingestion ne tourne pas" in response.get_json()["error"]


# -- database trouble --------------------------------------------------------------------------------------------


def test_missing_database_gives_a_clear_message(settings: Settings) -> None:
    app = create_app(settings)  # no `engine` fixture: the file does not exist
    client = app.test_client()
    for path in ("/", "/accueil", "/aide"):
        assert client.get(path).status_code == 200, path
    assert "data-no-database" in client.get("/accueil").get_data(as_text=True)
    assert client.get("/api/overview").get_json()["database"] is None
    for path in ("/capteurs", "/historique"):
        response = client.get(path)
        assert response.status_code == 503
        html = response.get_data(as_text=True)
        assert "base de données absente : lancez `make db`" in html
        assert '<html lang="fr">' in html
    response = client.get("/api/devices")
    assert response.status_code == 503
    assert "base de données absente" in response.get_json()["error"]
    response = post(client, "/api/devices/1/led", {"on": True}, csrf_token(client))
    assert response.status_code == 503 and "make db" in response.get_json()["error"]
    assert client.get("/sensor/online").status_code == 503
    assert not Path(settings.database_url.removeprefix("sqlite:///")).exists()  # the web never creates it


def test_database_without_schema(settings: Settings) -> None:
    Path(settings.database_url.removeprefix("sqlite:///")).write_bytes(b"")
    client = create_app(settings).test_client()
    response = client.get("/historique")
    assert response.status_code == 503
    assert "lancez `make db`" in response.get_data(as_text=True)
    assert client.get("/api/stats").status_code == 503


def test_the_database_appears_after_start(settings: Settings) -> None:
    client = create_app(settings).test_client()
    assert client.get("/api/devices").status_code == 503
    from sensorhub.db.engine import make_engine
    from sensorhub.db.schema import init_db
    engine = make_engine(settings.database_url, create_dir=True)
    init_db(engine)
    engine.dispose()
    assert client.get("/api/devices").get_json() == []


@both_databases
def test_the_web_app_cannot_write(app: Flask, engine: Engine) -> None:
    add_device(engine, "capteur01")
    with web_state_of(app).database.connect() as conn, pytest.raises((OperationalError, InternalError),
                                                                     match=r"readonly|read-only transaction"):
        conn.execute(text("UPDATE device SET name = 'x'"))


# -- serving -----------------------------------------------------------------------------------------------------


def test_busy_port_gives_one_clear_line(settings: Settings) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("0.0.0.0", settings.web_port))
        sock.listen()
        busy = rf"port {settings.web_port} \(web server\) is already.*SENSORHUB_WEB_PORT"
        with pytest.raises(PortError, match=busy):
            ensure_free(settings.web_port, "SENSORHUB_WEB_PORT", "web server", host="0.0.0.0")
        env = {**os.environ, **settings.environ()}
        result = subprocess.run([sys.executable, "-m", "sensorhub", "web"], env=env, capture_output=True,
                                text=True, timeout=30, check=False)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [f"sensorhub: error: port {settings.web_port} (web server) is already in use: "
                      "free it or choose another port with SENSORHUB_WEB_PORT"]


def test_gunicorn_configuration(settings: Settings) -> None:
    options = gunicorn_options(settings.replace(web_host="0.0.0.0", web_port=8000), workers=3)
    assert options["bind"] == ["0.0.0.0:8000"]
    assert options["preload_app"] is True  # one app, one secret key for every worker
    # Greenlets: a slow client holds no thread (docs/security.md, tests/test_security.py).
    assert options["workers"] == 3 and options["worker_class"] == "gevent"
    assert options["worker_connections"] == 1000
    assert gunicorn_options(settings.replace(web_host="::"), 1)["bind"] == [f"[::]:{settings.web_port}"]


def test_web_workers_fit_the_machine_unless_set(settings: Settings) -> None:
    gib = 2**30
    assert web_sizing(settings, cpus=4, memory=4 * gib) == 2  # Raspberry Pi 4
    assert web_sizing(settings, cpus=4, memory=gib // 2) == 1  # Pi Zero 2 W
    assert web_sizing(settings, cpus=2, memory=8 * gib) == 1  # a small VM
    assert web_sizing(settings, cpus=32, memory=64 * gib) == 4  # a big server: the devices need no more
    assert web_sizing(settings.replace(web_workers=3), cpus=2, memory=gib) == 3
    assert web_sizing(settings.replace(web_workers=3), workers=5, cpus=2, memory=gib) == 5  # --workers


def test_secret_key_comes_from_the_settings(settings: Settings) -> None:
    assert create_app(settings.replace(secret_key="s3cret")).secret_key == "s3cret"
    # Without one, a key is generated once in the state directory, private, and kept across restarts.
    generated = create_app(settings).secret_key
    assert isinstance(generated, str) and len(generated) >= 40
    assert create_app(settings).secret_key == generated
    key_file = Path(settings.state_dir) / "web.secret"
    assert key_file.read_text().strip() == generated and key_file.stat().st_mode & 0o777 == 0o600
    other = settings.replace(state_dir=str(Path(settings.state_dir).parent / "other-var"))
    assert create_app(other).secret_key != generated
