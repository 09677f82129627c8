"""The one table of settings: name, default and help, overridable by SENSORHUB_* variables and CLI flags."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sensorhub.errors import ConfigError

ENV_PREFIX = "SENSORHUB_"


def _port(value: str) -> int:
    port = _int(value)
    if not 1 <= port <= 65535:
        raise ValueError("a port number is between 1 and 65535")
    return port


def _int(value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ValueError("not a whole number") from None


def _max_connections(value: str) -> int:
    number = _int(value)
    if number == 0 or number < -1:
        raise ValueError("use a positive number, or -1 for no limit")
    return number


def _keepalive(value: str) -> int:
    seconds = _int(value)
    # The broker's max_keepalive is 12 and the specification wants it strictly lower.
    if not 1 <= seconds <= 11:
        raise ValueError("the keepalive must be between 1 and 11 seconds (the broker allows at most 12)")
    return seconds


def _log_level(value: str) -> str:
    level = value.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("use one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return level


def _database_url(value: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(value.strip())
    except ArgumentError:
        raise ValueError("not a SQLAlchemy database URL (e.g. sqlite:///db/db.sqlite3)") from None
    if url.get_backend_name() != "sqlite":
        raise ValueError("only SQLite URLs (sqlite:///path) are supported")
    return value.strip()


def _host(value: str) -> str:
    host = value.strip()
    if not host or not re.fullmatch(r"[A-Za-z0-9.:\-\[\]%]+", host):
        raise ValueError("not a host name or IP address")
    return host


def _path(value: str) -> str:
    path = value.strip()
    if not path or "\0" in path:
        raise ValueError("not a file path")
    return path


def _text(value: str) -> str:
    return value


def setting(default: str, help: str, parse: Callable[[str], Any]) -> Any:
    """Declare one setting: its default (as text, as in the environment), help text and parser."""
    return field(default=parse(default), metadata={"default": default, "help": help, "parse": parse})


@dataclass(frozen=True)
class Settings:
    """Every setting of sensorhub. The field list below *is* the settings table."""

    database_url: str = setting(
        "sqlite:///db/db.sqlite3", "SQLAlchemy URL of the database (SQLite).", _database_url
    )
    mqtt_host: str = setting(
        "127.0.0.1", "Where the ingest client and the simulator find the broker.", _host
    )
    mqtt_port: int = setting("1883", "Broker TCP port (devices connect here).", _port)
    mqtt_ws_port: int = setting("9001", "Broker WebSockets port (the /capteurs page connects here).", _port)
    web_host: str = setting("0.0.0.0", "Address the production web server listens on.", _host)
    web_port: int = setting("8000", "Port of the production web server.", _port)
    fifo: str = setting(
        "/tmp/IOC_ERKEN_PRANDO", "Named pipe carrying LED and rename commands from web to client.", _path
    )
    broker_max_connections: int = setting(
        "20", "Broker connection limit (the specification's value; -1 = unlimited).", _max_connections
    )
    broker_log: str = setting("mqtt/mosquitto.log", "Broker log file.", _path)
    keepalive: int = setting(
        "5",
        "MQTT keepalive (s) of the ingest client and virtual devices; after a broker restart, "
        "devices not heard from within 3x this are marked offline.",
        _keepalive,
    )
    log_level: str = setting("INFO", "Logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL.", _log_level)
    secret_key: str = setting(
        "", "Key signing the web forms' CSRF tokens (empty: a random key at each start).", _text
    )

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Build settings from defaults, then SENSORHUB_* variables, then explicit overrides (CLI flags)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in SETTINGS:
            raw: Any = environ.get(spec.env)
            source = spec.env
            if overrides is not None and overrides.get(spec.name) is not None:
                raw, source = overrides[spec.name], spec.flag
            if raw is None:
                continue
            try:
                values[spec.name] = spec.parse(str(raw))
            except ValueError as err:
                raise ConfigError(f"{source}={raw!r} is invalid: {err}") from None
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with some settings changed (used by tests and the supervisor)."""
        return dataclasses.replace(self, **changes)

    def environ(self) -> dict[str, str]:
        """These settings as SENSORHUB_* variables, to hand to a child process."""
        return {spec.env: str(getattr(self, spec.name)) for spec in SETTINGS}

    @property
    def log_level_number(self) -> int:
        """The logging module's number for log_level."""
        return int(logging.getLevelName(self.log_level))


@dataclass(frozen=True)
class SettingSpec:
    """One row of the settings table, as shown by --help and the README."""

    name: str
    default: str
    help: str
    parse: Callable[[str], Any]

    @property
    def env(self) -> str:
        """Environment variable name, e.g. SENSORHUB_MQTT_PORT."""
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        """CLI flag, e.g. --mqtt-port."""
        return "--" + self.name.replace("_", "-")


SETTINGS: tuple[SettingSpec, ...] = tuple(
    SettingSpec(f.name, f.metadata["default"], f.metadata["help"], f.metadata["parse"])
    for f in dataclasses.fields(Settings)
)


def settings_table_markdown() -> str:
    """The settings table in Markdown, as embedded in the README (a test keeps them equal)."""
    lines = ["| Environment variable | CLI flag | Default | Meaning |", "|---|---|---|---|"]
    for spec in SETTINGS:
        default = f"`{spec.default}`" if spec.default else "(empty)"
        lines.append(f"| `{spec.env}` | `{spec.flag}` | {default} | {spec.help} |")
    return "\n".join(lines)
