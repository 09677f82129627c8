"""Health, metrics and logs of the real stack: Mosquitto, `sensorhub client` and `sensorhub web` (gunicorn, two
workers) as subprocesses on one SQLite file, shared by the module's tests."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text

from sensorhub import accounts, health
from sensorhub.broker import Broker
from sensorhub.commands import LedRequest
from sensorhub.config import Settings
from sensorhub.errors import ConfigError
from sensorhub.health import write_heartbeat
from sensorhub.pipe import send_command
from sensorhub.protocol import Topic
from sensorhub.telemetry import heartbeat_path
from sensorhub.web import create_app
from tests.devices import RawDevice
from tests.stack import ROOT, Stack, start, web_server, web_url
from tests.support import settings_for, wait_for

pytestmark = pytest.mark.integration

#: What Prometheus 3 sends (its default scrape_protocols).
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0;escaping=underscores,application/openmetrics-text;"
                     "version=0.0.1;q=0.9,text/plain;version=1.0.0;escaping=underscores;q=0.5,"
                     "text/plain;version=0.0.4;q=0.4,*/*;q=0.1")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The module's stack (conftest's `stack`) logs JSON at INFO, its heartbeat and metrics in a runtime directory of
    its own; a test may stop one of its components and must leave it running again."""
    directory = tmp_path_factory.mktemp("monitoring")
    return settings_for(directory).replace(log_format="json", log_level="INFO", runtime_dir=str(directory / "run"))


def healthz(settings: Settings) -> tuple[int, dict[str, Any]]:
    """Status and body of GET /healthz."""
    try:
        with urllib.request.urlopen(web_url(settings, "/healthz"), timeout=10) as answer:
            return int(answer.status), json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def status(settings: Settings) -> subprocess.CompletedProcess[str]:
    """`sensorhub status` against `settings`."""
    return subprocess.run([sys.executable, "-m", "sensorhub", "status"], capture_output=True, text=True, timeout=30,
                          cwd=ROOT, env={**os.environ, **settings.environ()})


def scrape(settings: Settings) -> Samples:
    """Every sample of GET /metrics, by name and labels."""
    with urllib.request.urlopen(web_url(settings, "/metrics"), timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        body = answer.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body) for sample in family.samples}


def scrape_openmetrics(settings: Settings) -> Samples:
    """GET /metrics as Prometheus asks for it: OpenMetrics, parsed by its strict parser."""
    request = urllib.request.Request(web_url(settings, "/metrics"), headers={"Accept": PROMETHEUS_ACCEPT})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
        body = answer.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in openmetrics_families(body) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample, 0 if absent (a counter not counted yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def count(engine: Engine, sql: str) -> int:
    """The integer a query answers."""
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def healthy_again(stack: Stack) -> None:
    """Wait for /healthz to say 200 from the client's own heartbeat (connected), not from a direct probe of the
    broker made while the client's heartbeat still said it was connecting."""
    def healthy() -> bool:
        code, body = healthz(stack.settings)
        return code == 200 and "is connected to it" in body["checks"]["broker"]["detail"]
    wait_for(healthy, 30, interval=0.2, what="/healthz 200, the client connected")


def test_healthz_and_status_follow_the_client_and_the_broker(stack: Stack) -> None:
    settings = stack.settings
    healthy_again(stack)
    code, body = healthz(settings)
    assert code == 200 and body["status"] == "ok" and body["problems"] == []
    assert set(body["checks"]) == {"database", "client", "broker"}
    ran = status(settings)
    assert ran.returncode == 0 and ran.stdout.splitlines()[-1] == "healthy", ran.stdout + ran.stderr

    # The client is killed: no clean stop, its heartbeat just gets old.
    os.killpg(stack.client.pid, signal.SIGKILL)
    stack.client.process.wait()  # type: ignore[union-attr]
    wait_for(lambda: healthz(settings)[0] == 503, 15, interval=0.2, what="/healthz 503 without the client")
    code, body = healthz(settings)
    assert code == 503 and body["status"] == "unhealthy" and not body["checks"]["client"]["ok"]
    assert [problem.split(":")[0] for problem in body["problems"]] == ["client"]
    assert body["checks"]["broker"]["ok"] and "asked directly" in body["checks"]["broker"]["detail"]
    ran = status(settings)
    assert ran.returncode == 1 and "unhealthy: client: the ingest client was last seen" in ran.stdout, ran.stdout
    start(stack.client)
    healthy_again(stack)

    # The broker stops: the client says it lost it, at once.
    stack.broker.stop()
    wait_for(lambda: healthz(settings)[0] == 503, 15, interval=0.2, what="/healthz 503 without the broker")
    code, body = healthz(settings)
    assert code == 503 and [problem.split(":")[0] for problem in body["problems"]] == ["broker"], body
    assert status(settings).returncode == 1
    stack.broker = Broker(settings)
    stack.broker.start()
    healthy_again(stack)
    assert status(settings).returncode == 0


def test_metrics_count_what_a_real_stream_stored(stack: Stack) -> None:
    settings, engine = stack.settings, stack.engine
    healthy_again(stack)
    before = scrape(settings)
    assert value(before, "sensorhub_client_up") == 1
    light_before = count(engine, "SELECT count(*) FROM light_reading")
    button_before = count(engine, "SELECT count(*) FROM button_reading")
    device = RawDevice(settings.mqtt_port, "AA:BB:CC:00:15:01")
    name, session = device.join()
    wait_for(lambda: count(engine, f"SELECT count(*) FROM device WHERE name = '{name}' AND online = 1"), 10,
             what="the device online")
    for number in range(300):
        device.reading(Topic.PHOTORESISTOR_STATUS, number % 100, qos=1)
    for number in range(40):
        device.reading(Topic.BUTTON_STATUS, number % 2, qos=1).wait_for_publish(5)
    device.reading(Topic.PHOTORESISTOR_STATUS, 1, qos=1, session="1.000001").wait_for_publish(5)  # out of band
    wait_for(lambda: count(engine, "SELECT count(*) FROM light_reading") == light_before + 300, 20,
             what="300 light readings stored")
    device_id = count(engine, f"SELECT id FROM device WHERE name = '{name}'")
    send_command(settings.fifo_path, LedRequest(device_id, session, True))
    send_command(settings.fifo_path, LedRequest(device_id, "1.000001", True))  # not its session: refused
    wait_for(lambda: device.commands, 10, what="the LED command at the device")
    for _ in range(7):
        urllib.request.urlopen(web_url(settings, "/api/devices"), timeout=10).close()

    def settled() -> Samples | None:
        now = scrape(settings)
        return now if value(now, "sensorhub_led_commands_total", outcome="device-offline") > value(
            before, "sensorhub_led_commands_total", outcome="device-offline") else None

    after = wait_for(settled, 10, interval=0.3, what="the client's metrics file to catch up")

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    stored_light = count(engine, "SELECT count(*) FROM light_reading") - light_before
    stored_button = count(engine, "SELECT count(*) FROM button_reading") - button_before
    assert (stored_light, stored_button) == (300, 40)
    assert delta("sensorhub_readings_stored_total", kind="light") == stored_light
    assert delta("sensorhub_readings_stored_total", kind="button") == stored_button
    assert delta("sensorhub_messages_discarded_total", reason="out-of-band") == 1
    assert delta("sensorhub_device_joins_total") == 1
    assert value(after, "sensorhub_devices_online") == count(engine, "SELECT count(*) FROM device WHERE online = 1")
    assert delta("sensorhub_led_commands_total", outcome="published") == 1
    assert delta("sensorhub_led_commands_total", outcome="device-offline") == 1
    assert delta("sensorhub_writer_batch_messages_sum") >= 300 + 40 + 1
    assert value(after, "sensorhub_writer_commit_duration_seconds_count") >= 1
    assert value(after, "sensorhub_broker_connected") == 1
    # Seven requests, answered by either of the two gunicorn workers, all counted.
    assert delta("sensorhub_http_requests_total", route="/api/devices", method="GET", status="200") == 7
    assert delta("sensorhub_http_request_duration_seconds_count", route="/api/devices", method="GET") == 7
    # The same figures in OpenMetrics, what Prometheus asks for.
    strict = scrape_openmetrics(settings)
    assert value(strict, "sensorhub_readings_stored_total", kind="light") == value(
        after, "sensorhub_readings_stored_total", kind="light")
    assert value(strict, "sensorhub_writer_batch_messages_count") >= value(after,
                                                                           "sensorhub_writer_batch_messages_count")

    # Every metric served is documented in docs/deploy.md, and the examples in deploy/ use served ones.
    served = {re.sub(r"_(bucket|sum|count)$", "", name) for name, _labels in after if name.startswith("sensorhub_")}
    documented = set(re.findall(r"`(sensorhub_\w+)`", (ROOT / "docs" / "deploy.md").read_text()))
    assert sorted(name for name in served - documented if "_process_" not in name) == []
    used = {name for path in (ROOT / "deploy").glob("*.yml") for name in re.findall(r"sensorhub_\w+", path.read_text())}
    assert sorted(used - served) == []

    device.leave()
    wait_for(lambda: value(scrape(settings), "sensorhub_device_leaves_total") - value(
        before, "sensorhub_device_leaves_total") == 1, 10, interval=0.3, what="the leave counted")
    # One line for the new device, its join and its leave, none per reading; every line a JSON object.
    lines = [json.loads(line) for line in stack.client.lines]
    about = [line["message"] for line in lines if line["level"] == "INFO" and name in line["message"]]
    assert about == [f"new device {device.mac}: {name}", f"{name} joined (device {device_id}, session {session})",
                     f"{name} left (device {device_id}, session {session})"], about
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    web_lines = [json.loads(line) for line in stack.web.lines if line.startswith("{")]
    assert any("/api/devices" in line["message"] for line in web_lines)  # gunicorn's access log, as JSON


def test_status_names_everything_that_is_missing(tmp_path: Path) -> None:
    """Nothing runs and there is no database: each check says so in one line, and the exit status is 1."""
    settings = settings_for(tmp_path)
    ran = subprocess.run([sys.executable, "-m", "sensorhub", "status", "--json"], capture_output=True, text=True,
                         timeout=30, cwd=ROOT, env={**os.environ, **settings.environ()})
    assert ran.returncode == 1, ran.stdout + ran.stderr
    body = json.loads(ran.stdout)
    assert body["status"] == "unhealthy" and [p.split(":")[0] for p in body["problems"]] == [
        "database", "client", "broker"]
    assert "no database at" in body["checks"]["database"]["detail"]
    assert body["checks"]["client"]["detail"] == "no heartbeat: the ingest client is not running"
    assert body["checks"]["broker"]["detail"].startswith(f"cannot reach it at 127.0.0.1:{settings.mqtt_port}")
    # A client that stopped beating long ago, with its writer dead.
    (tmp_path / "var").mkdir()
    write_heartbeat(heartbeat_path(settings), {"broker": True, "writer": False, "queued": 3})
    found = health.check(settings, lambda: None)
    assert [check.ok for check in found.checks] == [True, False, True]
    assert found.summary() == "unhealthy: client: the ingest client runs but its database writer stopped"
    stale = health.check(settings, lambda: None, now=time.time() + 60)
    assert stale.problems()[0].startswith("client: the ingest client was last seen 6") and not stale.checks[2].ok
    # A client just (re)started, not connected yet: the broker is asked directly rather than blamed (after a
    # `kill -9` of the client, /healthz used to say for a moment that the broker could not be reached).
    write_heartbeat(heartbeat_path(settings), {"broker": False, "writer": True, "queued": 0, "connecting": True})
    starting = health.check(settings, lambda: None)
    assert starting.checks[2].detail.startswith(f"cannot reach it at 127.0.0.1:{settings.mqtt_port}")
    with Broker(settings):
        starting = health.check(settings, lambda: None)
        assert starting.checks[2].ok and "the ingest client is connecting to it" in starting.checks[2].detail
    write_heartbeat(heartbeat_path(settings), {"broker": False, "writer": True, "queued": 0})
    assert "the ingest client cannot reach it" in health.check(settings, lambda: None).checks[2].detail


def test_healthz_and_metrics_need_no_login_on_a_private_site(settings: Settings, engine: Engine) -> None:
    """Monitoring logs in nowhere: with accounts and SENSORHUB_WEB_PRIVATE=1, both still answer (and show no
    device), while the pages ask for a login."""
    accounts.add(engine, "alice", "correct horse battery")
    app = create_app(settings.replace(web_private=True))
    web = app.test_client()
    assert web.get("/capteurs").status_code == 302
    answer = web.get("/healthz")
    assert answer.status_code == 503 and answer.json is not None
    assert [problem.split(":")[0] for problem in answer.json["problems"]] == ["client", "broker"]
    nowhere = f"sqlite:///{Path(settings.state_dir).parent / 'none.sqlite3'}"
    missing = create_app(settings.replace(database_url=nowhere)).test_client().get("/healthz").json
    assert missing is not None and missing["checks"]["database"]["detail"].startswith("no database yet")
    metrics = web.get("/metrics")
    assert metrics.status_code == 200 and b"sensorhub_client_up 0.0" in metrics.data
    # The requests just made, counted by route and status, in this app's own registry (no gunicorn here).
    assert b'sensorhub_http_requests_total{method="GET",route="/healthz",status="503"} 1.0' in metrics.data


# -- who sees what: SENSORHUB_METRICS_TOKEN, SENSORHUB_METRICS_FROM -------------------------------------------------

TOKEN = "metrics-token-0123456789"


def lan_address() -> str:
    """This machine's address on its network (not loopback), to visit the web server as another host would."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # sends nothing: the route chooses the address
            address = str(probe.getsockname()[0])
    except OSError:
        address = "127.0.0.1"
    if ipaddress.ip_address(address).is_loopback:
        pytest.skip("this machine has no network address besides loopback")
    return address


def get(host: str, port: int, path: str, token: str | None = None) -> tuple[int, dict[str, str], str]:
    """Status, headers and body of GET http://HOST:PORT/PATH, with a bearer token if given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://{host}:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status), dict(answer.headers), answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def test_health_details_and_metrics_are_for_the_server_itself_or_the_token(settings: Settings, engine: Engine) -> None:
    """Neither broker nor client runs, so /healthz says where it looked for the broker: a visitor from the network
    sees which checks fail, not that host and port; /metrics opens to SENSORHUB_METRICS_FROM and the token."""
    lan = lan_address()
    settings = settings.replace(metrics_token=TOKEN, metrics_from="127.0.0.1,::1")
    where = f"127.0.0.1:{settings.mqtt_port}"
    port = settings.web_port
    with web_server(settings, workers=1):
        status, _, body = get(lan, port, "/healthz")
        assert status == 503 and where not in body
        assert json.loads(body) == {"status": "unhealthy", "problems": ["client", "broker"], "checks": {
            "database": {"ok": True}, "client": {"ok": False}, "broker": {"ok": False}}}
        for host, token in ((lan, TOKEN), ("127.0.0.1", None)):
            status, _, body = get(host, port, "/healthz", token)
            assert status == 503 and f"broker: cannot reach it at {where}: " in "".join(json.loads(body)["problems"])

        for token in (None, "wrong-token-0123456789", TOKEN.upper()):
            status, headers, body = get(lan, port, "/metrics", token)
            assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer") and "sensorhub_" not in body
        for host, token in ((lan, TOKEN), ("127.0.0.1", None)):
            status, _, body = get(host, port, "/metrics", token)
            assert status == 200 and "sensorhub_client_up 0.0" in body


def test_by_default_metrics_are_open_and_health_details_stay_on_the_server(settings: Settings, engine: Engine) -> None:
    """A fresh install: /metrics answers everyone (counts, no names nor addresses), /healthz's details only the
    server itself; SENSORHUB_METRICS_FROM empty and no token closes /metrics to everyone."""
    visitor = {"REMOTE_ADDR": "192.168.1.20"}
    web = create_app(settings).test_client()
    assert web.get("/metrics", environ_base=visitor).status_code == 200
    assert web.get("/metrics", environ_base={"REMOTE_ADDR": "2001:db8::1"}).status_code == 200
    assert web.get("/healthz", environ_base=visitor).json["problems"] == ["client", "broker"]  # type: ignore[index]
    assert "detail" in web.get("/healthz", environ_base={"REMOTE_ADDR": "::ffff:127.0.0.1"}).json["checks"]["broker"]  # type: ignore[index]
    closed = create_app(settings.replace(metrics_from="")).test_client()
    assert closed.get("/metrics", environ_base=visitor).status_code == 403
    assert closed.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 403
    lan = create_app(settings.replace(metrics_from="192.168.1.0/24")).test_client()
    assert lan.get("/metrics", environ_base=visitor).status_code == 200
    assert lan.get("/metrics", environ_base={"REMOTE_ADDR": "192.168.2.20"}).status_code == 403
    for name, value in (("SENSORHUB_METRICS_FROM", "192.168.1.0/33"), ("SENSORHUB_METRICS_TOKEN", "short")):
        with pytest.raises(ConfigError, match=name):
            Settings.load({name: value})
    with pytest.raises(ConfigError, match=r"\(hidden\)"):
        Settings.load({"SENSORHUB_METRICS_TOKEN": "has a space in it, sadly"})


def test_the_clients_heartbeat_and_metrics_files_are_its_owners_only(settings: Settings) -> None:
    # The metrics name the database and count what each device sent: not for the machine's other users.
    from prometheus_client import CollectorRegistry, Counter

    from sensorhub.ingest.beacon import Beacon
    from sensorhub.telemetry import client_metrics_path

    registry = CollectorRegistry()
    Counter("sensorhub_probe", "A counter.", registry=registry).inc()
    beacon = Beacon(settings, lambda: {"broker": True}, registry, interval=3600)
    beacon.start()
    for path in (heartbeat_path(settings), client_metrics_path(settings)):
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert "sensorhub_probe_total 1.0" in client_metrics_path(settings).read_text()
    beacon.stop()
    assert not client_metrics_path(settings).exists()
