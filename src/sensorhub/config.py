"""The one table of settings: name, default and help, overridable by SENSORHUB_* variables and CLI flags."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
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


def _worker(value: str) -> int:
    number = _int(value)
    if not 0 <= number <= 64:
        raise ValueError("a worker number is between 0 (the only worker) and 64")
    return number


def _days(value: str) -> int:
    days = _int(value)
    if not 0 <= days <= 100_000:
        raise ValueError("a number of days between 0 (keep everything) and 100000")
    return days


def _session_days(value: str) -> int:
    days = _int(value)
    if not 1 <= days <= 365:
        raise ValueError("a number of days between 1 and 365")
    return days


def _number(value: str) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        raise ValueError("not a number") from None
    if not 0 <= number <= 1_000_000:  # also refuses nan and inf
        raise ValueError("a number between 0 (off) and 1000000")
    return number


def _burst(value: str) -> int:
    number = _int(value)
    if not 1 <= number <= 1_000_000:
        raise ValueError("a number of readings between 1 and 1000000")
    return number


def _per_minute(value: str) -> int:
    number = _int(value)
    if not 0 <= number <= 1_000_000:
        raise ValueError("a number between 0 (no limit) and 1000000")
    return number


def _megabytes(value: str) -> int:
    size = _int(value)
    if not 0 <= size <= 10_000_000:
        raise ValueError("a number of MiB between 0 (never warn) and 10000000")
    return size


def _interval(value: str) -> float:
    try:
        seconds = float(value.strip())
    except ValueError:
        raise ValueError("not a number of seconds") from None
    if not (seconds == 0 or 1 <= seconds <= 86_400):
        raise ValueError("use 0 (never) or a number of seconds between 1 and 86400")
    return seconds


def _count(value: str) -> int:
    number = _int(value)
    if not 0 <= number <= 64:
        raise ValueError("use 0 (chosen from the CPU count and memory) or a number from 1 to 64")
    return number


def _connections(value: str) -> int:
    number = _int(value)
    if not 10 <= number <= 100_000:
        raise ValueError("use a number of connections from 10 to 100000")
    return number


def _log_level(value: str) -> str:
    level = value.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("use one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return level


def _log_format(value: str) -> str:
    text = value.strip().lower()
    if text not in ("text", "json"):
        raise ValueError("use text or json")
    return text


def _commands(value: str) -> str:
    text = value.strip().lower()
    if text not in ("pipe", "broker"):
        raise ValueError("use pipe or broker")
    return text


def _database_url(value: str) -> str:
    # Only the scheme is checked here, without SQLAlchemy: every process reads the settings, and importing
    # SQLAlchemy costs ~25 MiB to those that never open the database (the supervisor, the web watcher).
    # make_engine parses the whole URL when the database is opened.
    scheme = re.match(r"([A-Za-z][\w+.-]*)://", value.strip())
    if scheme is None:
        raise ValueError("not a SQLAlchemy database URL (e.g. sqlite:///db/db.sqlite3)")
    backend, _, driver = scheme[1].lower().partition("+")
    if backend == "postgresql" and driver not in ("", "psycopg"):
        raise ValueError("PostgreSQL goes through psycopg 3: postgresql+psycopg://user:password@host:5432/database")
    if backend not in ("sqlite", "postgresql"):
        raise ValueError("use SQLite (sqlite:///path) or PostgreSQL (postgresql+psycopg://user:password@host/db)")
    return value.strip()


def _without_password(value: str) -> str:
    """A database URL with its password masked (any other value unchanged), for error messages."""
    return re.sub(r"^([\w+]+://[^:/@]*:)[^@]*@", r"\1***@", value)


def _optional_database_url(value: str) -> str:
    return _database_url(value) if value.strip() else ""


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


def _optional_path(value: str) -> str:
    return _path(value) if value.strip() else ""


def _text(value: str) -> str:
    return value


def _password(value: str) -> str:
    if value and (len(value) < 8 or not value.isprintable()):
        raise ValueError("use at least 8 printable characters")
    return value


def _token(value: str) -> str:
    token = value.strip()
    if token and (len(token) < 16 or not token.isascii() or not token.isprintable() or " " in token):
        raise ValueError("use at least 16 printable ASCII characters without spaces (e.g. `openssl rand -hex 16`)")
    return token


#: SENSORHUB_METRICS_FROM's word for every address.
ALL_ADDRESSES = "all"


def _networks(value: str) -> str:
    text = value.strip()
    if text.lower() == ALL_ADDRESSES:
        return ALL_ADDRESSES
    networks = []
    for item in re.split(r"[,\s]+", text):
        if not item:
            continue
        try:
            networks.append(str(ipaddress.ip_network(item.strip("[]"), strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an address or network (e.g. 127.0.0.1,::1,192.168.1.0/24)") from None
    return ",".join(networks)


def _mqtt_url(value: str) -> str:
    text = value.strip()
    if not text:
        return ""
    match = re.fullmatch(r"mqtt://([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.%\w]+\])(?::(\d{1,5}))?/?", text)
    if match is None or (match[2] is not None and not 1 <= int(match[2]) <= 65535):
        raise ValueError("use mqtt://host:port (e.g. mqtt://homeassistant.local:1883)")
    return text


def _flag(value: str) -> bool:
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("use 1 or 0")


def setting(default: str, help: str, parse: Callable[[str], Any]) -> Any:
    """Declare one setting: its default (as text, as in the environment), help text and parser."""
    return field(default=parse(default), metadata={"default": default, "help": help, "parse": parse})


@dataclass(frozen=True)
class Settings:
    """Every setting of sensorhub. The field list below *is* the settings table."""

    database_url: str = setting(
        "sqlite:///db/db.sqlite3", "SQLAlchemy URL of the database: SQLite or PostgreSQL (postgresql+psycopg://…).",
        _database_url
    )
    mqtt_host: str = setting(
        "127.0.0.1", "Where the ingest client and the simulator find the broker.", _host
    )
    mqtt_port: int = setting("1883", "Broker TCP port (devices connect here).", _port)
    mqtt_ws_port: int = setting("9001", "Broker WebSockets port (the /capteurs page connects here).", _port)
    web_host: str = setting("0.0.0.0", "Address the production web server listens on.", _host)
    web_port: int = setting("8000", "Port of the production web server.", _port)
    web_workers: int = setting(
        "0",
        "gunicorn worker processes (0: one per two CPU cores and per 512 MiB of memory, at least 1, at most 4).",
        _count,
    )
    web_connections: int = setting(
        "1000",
        "Connections one gunicorn worker holds at once (gevent: a slow or idle client costs a few KiB, no thread).",
        _connections,
    )
    fifo: str = setting(
        "",
        "Named pipe carrying LED and rename commands from web to client (empty: `ledpipe` in the state "
        "directory).",
        _optional_path,
    )
    commands: str = setting(
        "pipe",
        "How the web server hands LED commands and renames to the ingest workers: `pipe` (the named pipe, "
        "web server and a worker on one machine) or `broker` (the server-only topic `sensorhub/commands`, "
        "published as broker user `sensorhub-web`: for a web server on another machine than the workers).",
        _commands,
    )
    state_dir: str = setting(
        "var",
        "Directory of what sensorhub generates: broker passwords, the client's and web server's secrets, the pipe.",
        _path,
    )
    runtime_dir: str = setting(
        "",
        "Directory of the files the ingest client and the web server rewrite every second (heartbeat, metrics); "
        "empty: the state directory. /run/sensorhub under systemd: in memory, sparing an SD card.",
        _optional_path,
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
    log_format: str = setting(
        "text", "Log lines as `text` (for people) or `json` (one object a line, for log collectors).", _log_format
    )
    summary_every: float = setting(
        "10",
        "Seconds between the ingest client's summary line (joins, leaves, devices online, readings/s); "
        "0: none. `sensorhub run` shows it instead of the broker's line per connection (kept in its log file).",
        _interval,
    )
    secret_key: str = setting(
        "", "Key signing the web sessions and CSRF tokens (empty: one generated in the state directory).", _text
    )
    device_password: str = setting(
        "",
        "Password of the broker user `device`; set, boards must log in with it (no anonymous access).",
        _password,
    )
    web_private: bool = setting(
        "0", "1: every page and API needs a login (once an account exists), and the WebSockets port a token that "
        "only logged-in pages get.", _flag)
    web_session_days: int = setting(
        "7",
        "Days a web login lasts (1 to 365), counted from the login; logging out or `sensorhub user passwd` "
        "ends it sooner.",
        _session_days,
    )
    web_state_url: str = setting(
        "",
        "SQLAlchemy URL of the web servers' own writable state (login sessions, failed-login counts); empty: "
        "`web-state.sqlite3` in the state directory. Several web servers must share one: "
        "postgresql+psycopg://… (not the sensor database, which they only read).",
        _optional_database_url,
    )
    tls_cert: str = setting(
        "", "PEM certificate: adds MQTT over TLS and secure WebSockets listeners and serves HTTPS.", _optional_path
    )
    tls_key: str = setting("", "PEM private key of SENSORHUB_TLS_CERT.", _optional_path)
    mqtt_tls_port: int = setting("8883", "Broker MQTT over TLS port (with SENSORHUB_TLS_CERT).", _port)
    mqtt_wss_port: int = setting("9443", "Broker secure WebSockets port (with SENSORHUB_TLS_CERT).", _port)
    metrics_token: str = setting(
        "",
        "Bearer token opening `/metrics` from any address and the details of `/healthz` (sent as `Authorization: "
        "Bearer TOKEN`); empty: none.",
        _token,
    )
    metrics_from: str = setting(
        "all",
        "Addresses and networks that read `/metrics` without the token, comma-separated (e.g. "
        "`127.0.0.1,::1,192.168.1.0/24`); `all`: everyone; empty: only with SENSORHUB_METRICS_TOKEN.",
        _networks,
    )
    retention_days: int = setting(
        "0",
        "Days of raw readings kept; older ones are deleted by the ingest client, a little at a time "
        "(0 = keep everything). The roll-ups keep their summary.",
        _days,
    )
    rollup_retention_days: int = setting(
        "0", "Days of 1-minute and 1-hour roll-ups kept (0 = keep everything).", _days
    )
    readings_per_second: float = setting(
        "50",
        "Readings a board may send per second in its session, on average (a real board sends about one); what "
        "goes over is discarded and counted (`rate-limited` in /metrics). 0: no limit. Each worker limits what it "
        "receives.",
        _number,
    )
    readings_burst: int = setting(
        "1000", "Readings a board may send at once above SENSORHUB_READINGS_PER_SECOND (its bucket's size).", _burst
    )
    new_devices_per_minute: int = setting(
        "60",
        "New devices (joins of a MAC never seen) created in any minute at most; a join beyond it gets no name and "
        "is counted (`new-device-limit` in /metrics), the board asks again later. Known boards are never limited. "
        "0: no limit. Per worker.",
        _per_minute,
    )
    stray_device_hours: float = setting(
        "24",
        "Hours after which a device that was named by a MAC join but never came online nor sent a reading, and "
        "was not heard from since, is deleted by the ingest client (one log line says how many). 0: never.",
        _number,
    )
    low_space_mib: int = setting(
        "200", "Free space (MiB) on the database's disk under which start-up and /api/stats warn.", _megabytes
    )
    homeassistant: bool = setting(
        "0", "1: the ingest client announces every board to Home Assistant (MQTT discovery: a light, a button, a "
        "light sensor per board) and carries out its LED commands (docs/homeassistant.md).", _flag)
    homeassistant_url: str = setting(
        "", "Home Assistant's own broker, mqtt://host:port, when it does not use ours (empty: ours, where Home "
        "Assistant logs in as `homeassistant` with the password of var/mqtt-homeassistant.secret).", _mqtt_url)
    homeassistant_user: str = setting("", "User on SENSORHUB_HOMEASSISTANT_URL's broker (empty: anonymous).", _text)
    homeassistant_password: str = setting("", "Password of SENSORHUB_HOMEASSISTANT_USER.", _text)
    worker: int = setting(
        "0",
        "Ingest worker number: 0 = the only one (plain subscriptions); 1..N = one of several sharing the readings "
        "through MQTT 5 shared subscriptions `$share/sensorhub/…`, each with its own client id. "
        "`sensorhub run --workers N` sets it; one worker of a machine at a time reads the LED pipe.",
        _worker,
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
                shown = "(hidden)" if spec.name in SECRET_SETTINGS else repr(_without_password(str(raw)))
                raise ConfigError(f"{source}={shown} is invalid: {err}") from None
        settings = cls(**values)
        if bool(settings.tls_cert) != bool(settings.tls_key):
            raise ConfigError("SENSORHUB_TLS_CERT and SENSORHUB_TLS_KEY go together: set both or neither")
        if settings.web_state_url and settings.web_state_url == settings.database_url:
            raise ConfigError("SENSORHUB_WEB_STATE_URL must not be the sensor database (SENSORHUB_DATABASE_URL): "
                              "the web servers only read that one; give them a database of their own")
        return settings

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with some settings changed (used by tests and the supervisor)."""
        return dataclasses.replace(self, **changes)

    def environ(self) -> dict[str, str]:
        """These settings as SENSORHUB_* variables, to hand to a child process."""
        return {spec.env: _as_text(getattr(self, spec.name)) for spec in SETTINGS}

    @property
    def fifo_path(self) -> Path:
        """The LED pipe: SENSORHUB_FIFO, or `ledpipe` in the state directory."""
        return Path(self.fifo) if self.fifo else Path(self.state_dir) / "ledpipe"

    @property
    def tls(self) -> bool:
        """Whether TLS listeners and HTTPS are configured."""
        return bool(self.tls_cert)

    @property
    def metrics_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """SENSORHUB_METRICS_FROM as networks (`all`: every IPv4 and IPv6 address)."""
        text = "0.0.0.0/0,::/0" if self.metrics_from == ALL_ADDRESSES else self.metrics_from
        return tuple(ipaddress.ip_network(item) for item in text.split(",") if item)

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


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


#: Settings whose value is never echoed in an error message.
SECRET_SETTINGS = frozenset({"secret_key", "device_password", "metrics_token", "homeassistant_password"})

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
