"""The one table of settings: name, default and help, overridable by SENSORHUB_* variables and CLI flags."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
import string
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sensorhub.errors import ConfigError
from sensorhub.i18n import N_, Msg, parse_choice

ENV_PREFIX = "SENSORHUB_"


def _port(value: str) -> int:
    port = _int(value)
    if not 1 <= port <= 65535:
        raise ValueError(N_("a port number is between 1 and 65535"))
    return port


def _int(value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ValueError(N_("not a whole number")) from None


def _max_connections(value: str) -> int:
    number = _int(value)
    if number == 0 or number < -1:
        raise ValueError(N_("use a positive number, or -1 for no limit"))
    return number


def _keepalive(value: str) -> int:
    seconds = _int(value)
    # The broker's max_keepalive is 12 and the specification wants it strictly lower.
    if not 1 <= seconds <= 11:
        raise ValueError(N_("the keepalive must be between 1 and 11 seconds (the broker allows at most 12)"))
    return seconds


def _worker(value: str) -> int:
    number = _int(value)
    if not 0 <= number <= 64:
        raise ValueError(N_("a worker number is between 0 (the only worker) and 64"))
    return number


def _days(value: str) -> int:
    days = _int(value)
    if not 0 <= days <= 100_000:
        raise ValueError(N_("a number of days between 0 (keep everything) and 100000"))
    return days


def _session_days(value: str) -> int:
    days = _int(value)
    if not 1 <= days <= 365:
        raise ValueError(N_("a number of days between 1 and 365"))
    return days


def _number(value: str) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        raise ValueError(N_("not a number")) from None
    if not 0 <= number <= 1_000_000:  # also refuses nan and inf
        raise ValueError(N_("a number between 0 (off) and 1000000"))
    return number


def _burst(value: str) -> int:
    number = _int(value)
    if not 1 <= number <= 1_000_000:
        raise ValueError(N_("a number of readings between 1 and 1000000"))
    return number


def _per_minute(value: str) -> int:
    number = _int(value)
    if not 0 <= number <= 1_000_000:
        raise ValueError(N_("a number between 0 (no limit) and 1000000"))
    return number


def _megabytes(value: str) -> int:
    size = _int(value)
    if not 0 <= size <= 10_000_000:
        raise ValueError(N_("a number of MiB between 0 (never warn) and 10000000"))
    return size


def _interval(value: str) -> float:
    try:
        seconds = float(value.strip())
    except ValueError:
        raise ValueError(N_("not a number of seconds")) from None
    if not (seconds == 0 or 1 <= seconds <= 86_400):
        raise ValueError(N_("use 0 (never) or a number of seconds between 1 and 86400"))
    return seconds


def _silent(value: str) -> int:
    seconds = _int(value)
    if not 1 <= seconds <= 86_400:
        raise ValueError(N_("use a number of seconds between 1 and 86400"))
    return seconds


def _count(value: str) -> int:
    number = _int(value)
    if not 0 <= number <= 64:
        raise ValueError(N_("use 0 (chosen from the CPU count and memory) or a number from 1 to 64"))
    return number


def _connections(value: str) -> int:
    number = _int(value)
    if not 10 <= number <= 100_000:
        raise ValueError(N_("use a number of connections from 10 to 100000"))
    return number


def _log_level(value: str) -> str:
    level = value.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(N_("use one of DEBUG, INFO, WARNING, ERROR, CRITICAL"))
    return level


def _log_format(value: str) -> str:
    text = value.strip().lower()
    if text not in ("text", "json"):
        raise ValueError(N_("use text or json"))
    return text


def _commands(value: str) -> str:
    text = value.strip().lower()
    if text not in ("pipe", "broker"):
        raise ValueError(N_("use pipe or broker"))
    return text


def _database_url(value: str) -> str:
    # Only the scheme is checked here, without SQLAlchemy: every process reads the settings, and importing
    # SQLAlchemy costs ~25 MiB to those that never open the database (the supervisor, the web watcher).
    # make_engine parses the whole URL when the database is opened.
    scheme = re.match(r"([A-Za-z][\w+.-]*)://", value.strip())
    if scheme is None:
        raise ValueError(N_("not a SQLAlchemy database URL (e.g. sqlite:///db/db.sqlite3)"))
    backend, _, driver = scheme[1].lower().partition("+")
    if backend == "postgresql" and driver not in ("", "psycopg"):
        raise ValueError(N_("PostgreSQL goes through psycopg 3: postgresql+psycopg://user:password@host:5432/database"))
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(N_("use SQLite (sqlite:///path) or PostgreSQL (postgresql+psycopg://user:password@host/db)"))
    return value.strip()


def _without_password(value: str) -> str:
    """A database URL with its password masked (any other value unchanged), for error messages."""
    return re.sub(r"^([\w+]+://[^:/@]*:)[^@]*@", r"\1***@", value)


def _optional_database_url(value: str) -> str:
    return _database_url(value) if value.strip() else ""


def _host(value: str) -> str:
    host = value.strip()
    if not host or not re.fullmatch(r"[A-Za-z0-9.:\-\[\]%]+", host):
        raise ValueError(N_("not a host name or IP address"))
    return host


def _optional_host(value: str) -> str:
    return _host(value) if value.strip() else ""

def _path(value: str) -> str:
    path = value.strip()
    if not path or "\0" in path:
        raise ValueError(N_("not a file path"))
    return path


def _optional_path(value: str) -> str:
    return _path(value) if value.strip() else ""


def _text(value: str) -> str:
    return value


def _password(value: str) -> str:
    if value and (len(value) < 8 or not value.isprintable()):
        raise ValueError(N_("use at least 8 printable characters"))
    return value


def _token(value: str) -> str:
    token = value.strip()
    if token and (len(token) < 16 or not token.isascii() or not token.isprintable() or " " in token):
        raise ValueError(N_("use at least 16 printable ASCII characters without spaces (e.g. `openssl rand -hex 16`)"))
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


#: The placeholders of SENSORHUB_NOTIFY_WEBHOOK_TEMPLATE and SENSORHUB_NOTIFY_WEBHOOK_HEADERS (docs/alerts.md).
WEBHOOK_PLACEHOLDERS = ("id", "event", "severity", "priority", "title", "text", "rule", "device", "mac", "value",
                        "alert", "json")


def _template(value: str) -> str:
    template = string.Template(value)
    if not template.is_valid():
        raise ValueError(N_("a `$` not followed by a placeholder name (write `$$` for a dollar sign)"))
    unknown = sorted(set(template.get_identifiers()) - set(WEBHOOK_PLACEHOLDERS))
    if unknown:
        known = ", ".join("$" + name for name in WEBHOOK_PLACEHOLDERS)
        raise ValueError(f"unknown placeholder ${unknown[0]} (known: {known})")
    return value


def _webhook_url(value: str) -> str:
    url = value.strip()
    if not url:
        return ""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(N_("use an http:// or https:// URL (e.g. https://ntfy.sh/my-topic)"))
    return url


def _content_type(value: str) -> str:
    text = value.strip()
    if not re.fullmatch(r"[\w.+-]+/[\w.+-]+(\s*;\s*[\w-]+=[\w.\-\"]+)*", text):
        raise ValueError(N_("not a media type (e.g. application/json or text/plain; charset=utf-8)"))
    return text


def _headers(value: str) -> str:
    for item in re.split(r"[;\n]", value):
        if not item.strip():
            continue
        name, colon, header = item.partition(":")
        if not colon or not re.fullmatch(r"[A-Za-z0-9-]+", name.strip()):
            raise ValueError(f"{item.strip()[:40]!r} is not `Name: value` (headers separated by `;` or new lines)")
        _template(header)
    return value.strip()


def _smtp_port(value: str) -> int:
    return 0 if value.strip() == "0" else _port(value)


def _smtp_security(value: str) -> str:
    text = value.strip().lower()
    if text not in ("starttls", "tls", "none"):
        raise ValueError(N_("use starttls, tls or none"))
    return text


def _addresses(value: str) -> str:
    addresses = [item.strip() for item in value.split(",") if item.strip()]
    for address in addresses:
        if not re.fullmatch(r"[^@\s<>,]+@[^@\s<>,]+", address):
            raise ValueError(f"{address!r} is not an e-mail address")
    return ",".join(addresses)


def _address(value: str) -> str:
    address = _addresses(value)
    if "," in address:
        raise ValueError(N_("one address"))
    return address


def _retry_max(value: str) -> float:
    try:
        seconds = float(value.strip())
    except ValueError:
        raise ValueError(N_("not a number of seconds")) from None
    if not 1 <= seconds <= 86_400:
        raise ValueError(N_("a number of seconds between 1 and 86400"))
    return seconds


def _mqtt_url(value: str) -> str:
    text = value.strip()
    if not text:
        return ""
    match = re.fullmatch(r"mqtt://([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.%\w]+\])(?::(\d{1,5}))?/?", text)
    if match is None or (match[2] is not None and not 1 <= int(match[2]) <= 65535):
        raise ValueError(N_("use mqtt://host:port (e.g. mqtt://homeassistant.local:1883)"))
    return text


def _flag(value: str) -> bool:
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(N_("use 1 or 0"))


def setting(default: str, help: str, parse: Callable[[str], Any]) -> Any:
    """Declare one setting: its default (as text, as in the environment), help text and parser."""
    return field(default=parse(default), metadata={"default": default, "help": help, "parse": parse})


@dataclass(frozen=True)
class Settings:
    """Every setting of sensorhub. The field list below *is* the settings table."""

    home: str = setting(
        "",
        "Directory the other settings' relative paths start from (the database file, the state directory, the "
        "broker log, ...). Empty: the sensorhub checkout this program runs from, else the current directory; "
        "so the command line finds the project's database and accounts from any directory.",
        _optional_path,
    )
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
        "20", "Broker connection limit on each listener (the specification's value; -1 = unlimited). Each connection "
        "is an open file: the broker checks its open-file limit (`ulimit -n`) against it at start.", _max_connections
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
    cli_language: str = setting(
        "auto",
        "Language of the command line's messages: `fr`, `en`, or `auto` (the locale's: LANGUAGE, LC_ALL, "
        "LC_MESSAGES, LANG; English when it is C, unset or neither French nor English). Log lines stay in English.",
        parse_choice,
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
    silent_seconds: int = setting(
        "300",
        "Seconds without a message after which an online device counts as silent on the overview (`/accueil`, "
        "`/api/overview`).",
        _silent,
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

    notify_webhook_url: str = setting(
        "",
        "Alert notifications: the URL each one is POSTed to (http:// or https://; empty: no webhook). docs/alerts.md "
        "has ntfy, Gotify and Slack examples.",
        _webhook_url,
    )
    notify_webhook_template: str = setting(
        "$json",
        "The webhook's body, with placeholders $text, $title, $severity, $priority, $event, $rule, $device, $mac, "
        "$value, $alert, $id and $json (the whole notification); values are JSON-escaped when the content type is "
        "JSON.",
        _template,
    )
    notify_webhook_content_type: str = setting(
        "application/json", "The webhook's Content-Type (e.g. text/plain for ntfy).", _content_type
    )
    notify_webhook_headers: str = setting(
        "",
        "More webhook headers, `Name: value` separated by `;` or new lines, with the body's placeholders (e.g. "
        "`Title: $title; Priority: $priority`).",
        _headers,
    )
    notify_smtp_host: str = setting(
        "", "Alert notifications by e-mail: the SMTP server (empty: no e-mail).", _optional_host
    )
    notify_smtp_port: int = setting(
        "0", "The SMTP server's port (0: 587 with starttls, 465 with tls, 25 with none).", _smtp_port
    )
    notify_smtp_security: str = setting(
        "starttls", "`starttls` (STARTTLS on a plain connection), `tls` (TLS from the start) or `none`.",
        _smtp_security,
    )
    notify_smtp_user: str = setting("", "SMTP login (empty: none).", _text)
    notify_smtp_password: str = setting("", "SMTP password of SENSORHUB_NOTIFY_SMTP_USER.", _text)
    notify_smtp_from: str = setting("", "The notifications' From address (needed with an SMTP server).", _address)
    notify_smtp_to: str = setting(
        "", "Where notifications are sent, comma-separated (needed with an SMTP server).", _addresses
    )
    notify_ca_file: str = setting(
        "",
        "PEM file of the certificate authorities trusted for the webhook's https:// and the SMTP server's TLS "
        "(empty: the system's).",
        _optional_path,
    )
    notify_mqtt: bool = setting(
        "1",
        "1: each alert notification is also published on `sensorhub/alerts/<device name>` (QoS 1, not retained), "
        "for automations; 0: not.",
        _flag,
    )
    notify_retry_max: float = setting(
        "60",
        "Longest wait (s) between two attempts at a notification its channel refused (the wait doubles from 1 s); "
        "a notification is kept until delivered.",
        _retry_max,
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
                raise ConfigError(N_("{source}={value} is invalid: {reason}"), source=source, value=shown,
                                  reason=Msg(str(err))) from None
        settings = cls(**values)
        settings = settings.anchored(project_home(settings.home))
        if bool(settings.tls_cert) != bool(settings.tls_key):
            raise ConfigError(N_("SENSORHUB_TLS_CERT and SENSORHUB_TLS_KEY go together: set both or neither"))
        if settings.web_state_url and settings.web_state_url == settings.database_url:
            raise ConfigError(N_("SENSORHUB_WEB_STATE_URL must not be the sensor database (SENSORHUB_DATABASE_URL): "
                                 "the web servers only read that one; give them a database of their own"))
        _check_smtp(settings)
        return settings

    def anchored(self, base: Path) -> Settings:
        """These settings with every relative path (and SQLite file of a URL) made absolute from `base`."""
        changes: dict[str, str] = {}
        for name in _PATH_FIELDS:
            value = getattr(self, name)
            if value and not Path(value).expanduser().is_absolute():
                changes[name] = str(base / value)
        for name in _URL_FIELDS:
            found = _RELATIVE_SQLITE.match(getattr(self, name))
            if found is not None:
                path, query = found["path"].partition("?")[::2]
                changes[name] = f"{found['scheme']}:///{base / path}" + (f"?{query}" if query else "")
        return self.replace(**changes) if changes else self

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
    def smtp_port(self) -> int:
        """SENSORHUB_NOTIFY_SMTP_PORT, or the usual port of its security."""
        return self.notify_smtp_port or {"starttls": 587, "tls": 465, "none": 25}[self.notify_smtp_security]

    @property
    def log_level_number(self) -> int:
        """The logging module's number for log_level."""
        return int(logging.getLevelName(self.log_level))


def _check_smtp(settings: Settings) -> None:
    """The SMTP settings that only make sense together."""
    if not settings.notify_smtp_host:
        return
    for name in ("notify_smtp_from", "notify_smtp_to"):
        if not getattr(settings, name):
            raise ConfigError(N_("SENSORHUB_NOTIFY_SMTP_HOST is set: {setting} must be set too"),
                              setting=f"{ENV_PREFIX}{name.upper()}")
    if bool(settings.notify_smtp_user) != bool(settings.notify_smtp_password):
        raise ConfigError(N_("SENSORHUB_NOTIFY_SMTP_USER and SENSORHUB_NOTIFY_SMTP_PASSWORD go together: set both "
                             "or neither"))
    if settings.notify_smtp_password and settings.notify_smtp_security == "none":
        raise ConfigError(N_("SENSORHUB_NOTIFY_SMTP_SECURITY=none would send SENSORHUB_NOTIFY_SMTP_PASSWORD in "
                             "clear: use starttls or tls"))


def configured(settings: Settings) -> tuple[str, ...]:
    """The notification channels the settings enable, in the outbox's order ('webhook', 'email', 'mqtt')."""
    enabled = {"webhook": bool(settings.notify_webhook_url), "email": bool(settings.notify_smtp_host),
               "mqtt": settings.notify_mqtt}
    return tuple(channel for channel, on in enabled.items() if on)


@dataclass(frozen=True)
class SettingSpec:
    """One row of the settings table, as shown by --help and docs/settings.md."""

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
#: Settings that are file paths, and database URLs that may name a SQLite file: relative ones start from the
#: project's home (SENSORHUB_HOME).
_PATH_FIELDS = ("state_dir", "runtime_dir", "broker_log", "fifo", "tls_cert", "tls_key", "notify_ca_file")
_URL_FIELDS = ("database_url", "web_state_url")
#: `sqlite:///relative/path` (three slashes: relative; four: absolute), not `:memory:`.
_RELATIVE_SQLITE = re.compile(r"(?P<scheme>sqlite(?:\+\w+)?):///(?P<path>(?!/)(?!:memory:)[^/].*)$")
#: This module's checkout, when sensorhub runs from one (an editable install: `make install`).
_CHECKOUT = Path(__file__).resolve().parents[2]


def project_home(home: str = "") -> Path:
    """Where relative paths start: SENSORHUB_HOME, else the checkout sensorhub runs from, else the current
    directory (an installed package away from its project)."""
    if home:
        return Path(home).expanduser().resolve()
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "src" / "sensorhub").is_dir():
        return _CHECKOUT
    return Path.cwd()


SECRET_SETTINGS = frozenset({"secret_key", "device_password", "metrics_token", "notify_smtp_password",
                             "notify_webhook_url", "notify_webhook_headers",
                             "homeassistant_password"})

SETTINGS: tuple[SettingSpec, ...] = tuple(
    SettingSpec(f.name, f.metadata["default"], f.metadata["help"], f.metadata["parse"])
    for f in dataclasses.fields(Settings)
)


def settings_table_markdown() -> str:
    """The settings table in Markdown, as embedded in docs/settings.md (a test keeps them equal)."""
    lines = ["| Environment variable | CLI flag | Default | Meaning |", "|---|---|---|---|"]
    for spec in SETTINGS:
        default = f"`{spec.default}`" if spec.default else "(empty)"
        lines.append(f"| `{spec.env}` | `{spec.flag}` | {default} | {spec.help} |")
    return "\n".join(lines)
