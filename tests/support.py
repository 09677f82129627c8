"""Helpers shared by the tests."""

from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine

from bench.ports import free_port
from sensorhub.config import Settings
from sensorhub.credentials import CLIENT_USER, client_password
from sensorhub.db.engine import make_engine, sqlite_path
from sensorhub.db.schema import init_db
from sensorhub.mqttclient import stop_loop

T = TypeVar("T")

#: Run a test on SQLite and on PostgreSQL (the `backend` fixture; the `settings` fixture follows it).
both_databases = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)

#: Debian's Chromium (never a downloaded browser), with the flags that keep it off the network; a French browser
#: (`Accept-Language: fr-FR`, `navigator.language`), as the specification's pages are: a context made with
#: `locale="en-US"` is an English one (tests/test_i18n.py).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--accept-lang=fr-FR,fr"]
#: For `add_init_script`: counts /capteurs's reconciliations with the server's list (the `sensorhub:reconciled`
#: events of static/reconcile.js) in `window.__reconciliations`, from before the page's own scripts run.
COUNT_RECONCILIATIONS = """
window.__reconciliations = 0;
document.addEventListener('sensorhub:reconciled', () => { window.__reconciliations += 1; });
"""


def settings_for(directory: Path) -> Settings:
    """Settings pointing at a temporary database, state directory, FIFO and log in `directory`, on free ports."""
    return Settings().replace(
        database_url=f"sqlite:///{directory / 'db.sqlite3'}",
        mqtt_port=free_port(),
        mqtt_ws_port=free_port(),
        web_port=free_port(),
        fifo=str(directory / "led.fifo"),
        state_dir=str(directory / "var"),
        broker_log=str(directory / "mosquitto.log"),
        broker_max_connections=-1,
        keepalive=2,
        log_level="DEBUG",
        mqtt_tls_port=free_port(),
        mqtt_wss_port=free_port(),
        cli_language="en",  # the tests read English messages, whatever the developer's locale (conftest.py)
    )


@cache
def _migrated_sqlite() -> Path:
    """A SQLite file with sensorhub's schema, migrated once per test process (removed at its exit)."""
    directory = Path(tempfile.mkdtemp(prefix="sensorhub-template-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    engine = make_engine(f"sqlite:///{directory / 'db.sqlite3'}", create_dir=True)
    init_db(engine)
    engine.dispose()  # the last connection checkpoints and removes the WAL: the file alone is the database
    return directory / "db.sqlite3"


def fresh_database(url: str) -> Engine:
    """An engine on the database at `url`, brought to sensorhub's schema. A new SQLite file is a copy of one migrated
    once per test process: running the migrations takes 60 ms of CPU, for each of the suite's ~500 databases."""
    path = sqlite_path(url)
    new = path is not None and not path.exists()
    engine = make_engine(url, create_dir=True)  # creates the file as sensorhub does: readable by its owner only
    if new and path is not None:
        shutil.copyfile(_migrated_sqlite(), path)  # into the empty file: its mode stays
    else:
        init_db(engine)
    return engine


def log_in_as_server(client: Any, settings: Settings) -> None:
    """Give a paho client the ingest client's broker user: only it may publish nameAssign and led/command."""
    client.username_pw_set(CLIENT_USER, client_password(settings))


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> T:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


_SKIPPED_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
                 ".hypothesis", "build", "dist"}


def tracked_files(root: Path, under: str = "") -> list[Path]:
    """The files git tracks below `root / under` (outside a git checkout: every file but caches and packages)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--", under or "."], cwd=root, capture_output=True,
                                check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return [p for p in (root / under).rglob("*")
                if p.is_file() and not _SKIPPED_DIRS & set(p.relative_to(root).parts)]
    return [root / name for name in listed.decode().split("\0") if name]


def digests(paths: list[Path]) -> dict[Path, str]:
    """SHA-256 of each file that exists."""
    return {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in paths if path.is_file()}


def quick_bench(*only: str) -> Any:
    """Run `python -m bench --quick --only ...` and return its JSON report, after checking its header and that no
    figure failed to be measured (met or not: nothing is timed in the tests)."""
    result = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", *only],
                            cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("sensorhub benchmark (quick smoke run) on ")
    assert "cores" in lines[0] and "mosquitto" in lines[0]
    assert lines[1].split()[:3] == ["figure", "measured", "target"]
    report = json.loads(lines[-1])
    for key, figure in report["figures"].items():
        assert not figure["value"].startswith("FAILED"), f"{key}: {figure['value']}"
    return report


def connects(port: int, transport: str = "tcp", ca: str | None = None, client: Any = None) -> bool:
    """Whether an MQTT client (`client`, or a new MQTT 5 one) gets a CONNACK on `port` within 3 s."""
    import ssl

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    if client is None:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, transport=transport, protocol=mqtt.MQTTv5)
    if ca is not None:
        client.tls_set(ca_certs=ca)
    try:
        client.connect("127.0.0.1", port, keepalive=5)
    except (OSError, mqtt.WebsocketConnectionError, ssl.SSLError):
        return False
    client.loop_start()
    try:
        wait_for(client.is_connected, 3)
        return True
    except AssertionError:
        return False
    finally:
        client.disconnect()
        stop_loop(client)


def finishes(action: Callable[[], T], timeout: float = 10.0, what: str = "") -> T:
    """Run `action` in a thread and return what it returns (or raise what it raises); fail the test if it is still
    running after `timeout` seconds: for "never waits" checks, without timing what should take no time."""
    import threading

    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, action()))
        except BaseException as err:  # handed to the test's thread
            outcome.append((False, err))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise AssertionError(f"{what or action} was still waiting after {timeout} s")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]
