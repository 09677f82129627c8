"""The settings table: defaults, environment variables, CLI flags and errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sensorhub.config import SETTINGS, Settings, settings_table_markdown
from sensorhub.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

REQUIRED = {
    "SENSORHUB_DATABASE_URL": "sqlite:///db/db.sqlite3",
    "SENSORHUB_MQTT_HOST": "127.0.0.1",
    "SENSORHUB_MQTT_PORT": "1883",
    "SENSORHUB_MQTT_WS_PORT": "9001",
    "SENSORHUB_WEB_HOST": "0.0.0.0",
    "SENSORHUB_WEB_PORT": "8000",
    # The specification's /tmp/IOC_ERKEN_PRANDO moved to the private state directory (docs/security.md).
    "SENSORHUB_FIFO": "",
    "SENSORHUB_BROKER_MAX_CONNECTIONS": "20",
    "SENSORHUB_LOG_LEVEL": "INFO",
}


def test_required_settings_and_defaults() -> None:
    table = {spec.env: spec.default for spec in SETTINGS}
    for env, default in REQUIRED.items():
        assert table[env] == default
    loaded = Settings.load(environ={})
    assert loaded.mqtt_port == 1883 and loaded.web_port == 8000 and loaded.broker_max_connections == 20
    # Relative paths start from the checkout sensorhub runs from, wherever the command is typed.
    assert loaded == Settings().anchored(ROOT)
    assert loaded.fifo_path == ROOT / "var/ledpipe" and loaded.database_url == f"sqlite:///{ROOT}/db/db.sqlite3"
    assert Settings.load(environ={"SENSORHUB_STATE_DIR": "/srv/x"}).fifo_path == Path("/srv/x/ledpipe")
    assert Settings.load(environ={"SENSORHUB_FIFO": "/run/p"}).fifo_path == Path("/run/p")


def test_environment_overrides_default_and_flag_overrides_environment() -> None:
    env = {"SENSORHUB_MQTT_PORT": "1884", "SENSORHUB_LOG_LEVEL": "debug"}
    assert Settings.load(environ=env).mqtt_port == 1884
    assert Settings.load(environ=env).log_level == "DEBUG"
    assert Settings.load(environ=env, overrides={"mqtt_port": "1999"}).mqtt_port == 1999
    assert Settings.load(environ=env, overrides={"mqtt_port": None}).mqtt_port == 1884
    assert Settings.load(environ={"SENSORHUB_BROKER_MAX_CONNECTIONS": "-1"}).broker_max_connections == -1


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        ("SENSORHUB_MQTT_PORT", "abc", "not a whole number"),
        ("SENSORHUB_MQTT_PORT", "70000", "between 1 and 65535"),
        ("SENSORHUB_WEB_PORT", "0", "between 1 and 65535"),
        ("SENSORHUB_BROKER_MAX_CONNECTIONS", "0", "-1 for no limit"),
        ("SENSORHUB_LOG_LEVEL", "LOUD", "one of DEBUG"),
        ("SENSORHUB_DATABASE_URL", "postgresql+psycopg2://x/y", "psycopg 3"),
        ("SENSORHUB_DATABASE_URL", "mysql://x/y", "use SQLite (sqlite:///path) or PostgreSQL"),
        ("SENSORHUB_DATABASE_URL", "not a url", "not a SQLAlchemy database URL"),
        ("SENSORHUB_KEEPALIVE", "12", "between 1 and 11"),
        ("SENSORHUB_MQTT_HOST", "bad host!", "not a host name"),
        ("SENSORHUB_WEB_PRIVATE", "maybe", "use 1 or 0"),
        ("SENSORHUB_MQTT_TLS_PORT", "0", "between 1 and 65535"),
        ("SENSORHUB_WEB_SESSION_DAYS", "0", "between 1 and 365"),
        ("SENSORHUB_WEB_SESSION_DAYS", "366", "between 1 and 365"),
        ("SENSORHUB_WEB_STATE_URL", "mysql://x/y", "use SQLite (sqlite:///path) or PostgreSQL"),
    ],
)
def test_invalid_values_name_the_variable(env: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.load(environ={env: value})
    assert env in str(caught.value) and message in str(caught.value)


def test_a_database_password_is_never_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.load(environ={"SENSORHUB_DATABASE_URL": "postgresql+psycopg2://sensorhub:s3cret@db/sensorhub"})
    assert "sensorhub:***@db" in str(caught.value) and "s3cret" not in str(caught.value)


def test_secrets_are_never_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.load(environ={"SENSORHUB_DEVICE_PASSWORD": "short"})
    assert "SENSORHUB_DEVICE_PASSWORD=(hidden)" in str(caught.value) and "short" not in str(caught.value)


def test_tls_certificate_and_key_go_together() -> None:
    with pytest.raises(ConfigError, match="SENSORHUB_TLS_CERT and SENSORHUB_TLS_KEY go together"):
        Settings.load(environ={"SENSORHUB_TLS_CERT": "/etc/cert.pem"})
    both = Settings.load(environ={"SENSORHUB_TLS_CERT": "/c.pem", "SENSORHUB_TLS_KEY": "/k.pem"})
    assert both.tls and not Settings().tls


def test_web_sessions_last_a_week_and_the_web_state_is_not_the_sensor_database() -> None:
    assert Settings().web_session_days == 7 and Settings().web_state_url == ""
    assert Settings.load(environ={"SENSORHUB_WEB_SESSION_DAYS": "365"}).web_session_days == 365
    url = "postgresql+psycopg://web:pw@db/web_state"
    assert Settings.load(environ={"SENSORHUB_WEB_STATE_URL": url}).web_state_url == url
    with pytest.raises(ConfigError, match="SENSORHUB_WEB_STATE_URL must not be the sensor database"):
        Settings.load(environ={"SENSORHUB_WEB_STATE_URL": url, "SENSORHUB_DATABASE_URL": url})


def test_flags_round_trip_through_the_environment() -> None:
    private = Settings.load(environ={"SENSORHUB_WEB_PRIVATE": "1"})
    assert private.web_private is True
    assert Settings.load(environ=private.environ()) == private


def test_invalid_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="--web-port='x'"):
        Settings.load(environ={}, overrides={"web_port": "x"})


def test_invalid_setting_stops_the_cli_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sensorhub", "db", "init"],
        env={"SENSORHUB_MQTT_PORT": "nope", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "sensorhub: error: SENSORHUB_MQTT_PORT='nope' is invalid: not a whole number"
    ]


def test_cli_help_lists_every_setting() -> None:
    result = subprocess.run([sys.executable, "-m", "sensorhub", "--help"], capture_output=True, text=True,
                            check=True, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    for spec in SETTINGS:
        assert spec.flag in result.stdout and spec.env in result.stdout


#: The one page holding the settings table (the README links it).
SETTINGS_PAGE = ROOT / "docs" / "settings.md"


def test_the_settings_table_is_generated_from_the_code() -> None:
    assert settings_table_markdown() in SETTINGS_PAGE.read_text(), (
        "docs/settings.md's settings table is out of date: paste the output of "
        "`python -c 'from sensorhub.config import settings_table_markdown as t; print(t())'`"
    )
    header = settings_table_markdown().splitlines()[0]
    elsewhere = [path.name for path in (ROOT / "README.md", *(ROOT / "docs").glob("*.md"))
                 if path != SETTINGS_PAGE and header in path.read_text()]
    assert elsewhere == [], f"the settings table belongs to docs/settings.md alone, not {elsewhere}"


def test_environ_round_trips() -> None:
    settings = Settings().replace(mqtt_port=1999, fifo="/tmp/x").anchored(ROOT)
    assert Settings.load(environ=settings.environ()) == settings


def test_relative_paths_start_from_the_projects_home_and_absolute_ones_stay(tmp_path: Path) -> None:
    home = {"SENSORHUB_HOME": str(tmp_path)}
    loaded = Settings.load(environ={**home, "SENSORHUB_DATABASE_URL": "sqlite:///data/x.sqlite3?mode=ro",
                                    "SENSORHUB_BROKER_LOG": "logs/b.log", "SENSORHUB_TLS_CERT": "/etc/c.pem",
                                    "SENSORHUB_TLS_KEY": "k.pem"})
    assert loaded.database_url == f"sqlite:///{tmp_path}/data/x.sqlite3?mode=ro"
    assert loaded.state_dir == str(tmp_path / "var") and loaded.broker_log == str(tmp_path / "logs/b.log")
    assert loaded.tls_cert == "/etc/c.pem" and loaded.tls_key == str(tmp_path / "k.pem")
    for url in ("sqlite:////abs/db.sqlite3", "sqlite:///:memory:", "postgresql+psycopg://u:p@h/db"):
        assert Settings.load(environ={**home, "SENSORHUB_DATABASE_URL": url}).database_url == url


def test_the_command_line_finds_the_projects_database_from_another_directory(tmp_path: Path) -> None:
    # It used to say "no database" (or make a second, empty one) anywhere but in the project directory.
    home = tmp_path / "project"
    env = {key: value for key, value in os.environ.items() if not key.startswith("SENSORHUB_")}
    env["SENSORHUB_HOME"] = str(home)
    made = subprocess.run([sys.executable, "-m", "sensorhub", "db", "init"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert made.returncode == 0, made.stderr
    assert (home / "db" / "db.sqlite3").is_file() and not (tmp_path / "db").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    listed = subprocess.run([sys.executable, "-m", "sensorhub", "user", "list"], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert listed.returncode == 0 and "no account" in listed.stdout, listed.stderr
    missing = subprocess.run([sys.executable, "-m", "sensorhub", "user", "list"], cwd=elsewhere,
                             env={**env, "SENSORHUB_HOME": str(tmp_path / "nowhere")}, capture_output=True,
                             text=True, timeout=60, check=False)
    assert missing.returncode == 2 and str(tmp_path / "nowhere" / "db" / "db.sqlite3") in missing.stderr
