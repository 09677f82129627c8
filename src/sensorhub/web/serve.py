"""Run the web app: gunicorn in production, Flask's debug server for development."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from flask import Flask
from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from gunicorn.http import wsgi as gunicorn_wsgi
from sqlalchemy.exc import SQLAlchemyError

from sensorhub import accounts
from sensorhub.config import Settings
from sensorhub.db.engine import sqlite_path
from sensorhub.logs import formatter
from sensorhub.ports import ensure_free
from sensorhub.process import notify
from sensorhub.tls import check_tls_files
from sensorhub.web import create_app, plainhttp, vendor
from sensorhub.web.database import ReadOnlyDatabase

logger = logging.getLogger(__name__)

DEBUG_HOST = "127.0.0.1"
DEBUG_PORT = 5000
MIB = 2**20
#: Memory per worker process when the count is chosen automatically (a worker takes about 20 MiB of its own).
MEMORY_PER_WORKER = 512 * MIB
MAX_AUTO_WORKERS = 4


def _memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 1024 * MIB


def web_sizing(settings: Settings, workers: int | None = None, cpus: int | None = None,
               memory: int | None = None) -> int:
    """gunicorn's worker count: the --workers flag, else the settings, else from the CPU count and memory.

    A Raspberry Pi 3 or 4 (4 cores, 1 GiB or more) gets 2 workers, a Pi Zero 2 (512 MiB) or a 2-core machine 1:
    one process per two cores, since the broker, the ingest client and the devices' traffic need the others.
    Each worker serves its connections concurrently in greenlets (gevent), a few KiB each.
    """
    cpus = cpus or os.cpu_count() or 1
    memory = memory or _memory_bytes()
    return workers or settings.web_workers or max(1, min(MAX_AUTO_WORKERS, cpus // 2, memory // MEMORY_PER_WORKER))


def _url(host: str, port: int, secure: bool = False) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"{'https' if secure else 'http'}://{shown}:{port}"


def _warn_about_setup(settings: Settings) -> None:
    path = sqlite_path(settings.database_url)
    if path is not None and not path.exists():
        logger.warning("no database at %s yet: pages say so until `make db` creates it", path)
    missing = vendor.missing()
    if missing:
        logger.warning("browser libraries missing (%s): run `make install`; /capteurs cannot be live",
                       ", ".join(missing))
    if path is None or path.exists():
        _say_who_controls(settings)


def _say_who_controls(settings: Settings) -> None:
    """One line: whether anyone who opens the pages can switch LEDs and rename devices."""
    database = ReadOnlyDatabase(settings.database_url)
    try:
        with database.connect() as conn:
            closed = accounts.any_account(conn)
    except SQLAlchemyError:
        closed = False  # a database made before accounts existed has none
    finally:
        database.dispose()
    if closed:
        logger.info("the LED and rename controls need a login%s",
                    "; every page too (SENSORHUB_WEB_PRIVATE=1)" if settings.web_private else "")
    else:
        logger.warning("no web account: anyone who opens the pages can switch LEDs and rename devices; "
                       "`sensorhub user add NAME` reserves the controls to accounts")


def _without_server_header() -> None:
    """gunicorn names itself in a `Server:` header of every answer (no setting turns it off): leave it out.

    Nothing needs it, and it tells a scanner which software (and which advisories) to try.
    """
    default_headers = gunicorn_wsgi.Response.default_headers
    if getattr(default_headers, "sensorhub", False):
        return

    def headers(self: Any) -> list[str]:
        return [line for line in default_headers(self) if not line.lower().startswith("server:")]

    headers.sensorhub = True  # type: ignore[attr-defined]
    gunicorn_wsgi.Response.default_headers = headers


class _StderrAccessLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger, with the access log on stderr beside everything else."""

    def setup(self, cfg: Any) -> None:
        """Set up as gunicorn does, then move the access log handler to stderr."""
        super().setup(cfg)
        if cfg.accesslog is not None:
            self._set_handler(self.access_log, cfg.accesslog, logging.Formatter(self.access_fmt), stream=sys.stderr)


class _JsonAccessLogger(_StderrAccessLogger):
    """The same, with every line a JSON object (SENSORHUB_LOG_FORMAT=json)."""

    def setup(self, cfg: Any) -> None:
        """Set up as above, then give both of gunicorn's handlers the JSON formatter."""
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(formatter("json"))


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    """gunicorn running our app object, configured from code rather than files or argv."""

    def __init__(self, app: Flask, options: dict[str, Any]) -> None:
        self._app = app
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        """Apply our options (gunicorn reads no configuration file nor command line)."""
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        """The WSGI app."""
        return self._app


def gunicorn_options(settings: Settings, workers: int, fd: int | None = None) -> dict[str, Any]:
    """gunicorn's settings for `settings`; with `fd`, it serves on that already listening socket."""
    host = settings.web_host
    bind_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    url = _url(host, settings.web_port, settings.tls)

    def when_ready(_server: Any) -> None:
        logger.info("web server ready on %s (listening on %s:%d, %d worker%s of up to %d connections)", url, host,
                    settings.web_port, workers, "s" if workers > 1 else "", settings.web_connections)
        notify("READY=1")

    options: dict[str, Any] = {
        "bind": [f"fd://{fd}" if fd is not None else f"{bind_host}:{settings.web_port}"],
        "workers": workers,
        # Greenlets, not threads: a client that sends half a request (or half a TLS handshake) holds a few KiB,
        # not one of a handful of threads (docs/security.md). The master monkey-patches first (sensorhub.webserver).
        "worker_class": "gevent",
        "worker_connections": settings.web_connections,
        # One app object, built before the fork: every worker signs CSRF tokens with the same key.
        "preload_app": True,
        "accesslog": "-",
        "errorlog": "-",
        "logger_class": _JsonAccessLogger if settings.log_format == "json" else _StderrAccessLogger,
        "loglevel": settings.log_level.lower(),
        "graceful_timeout": 5,
        "timeout": 30,
        "proc_name": "sensorhub-web",
        # gunicorn's control socket lives in ~/.gunicorn: several servers (tests, a second instance) would share it.
        "control_socket_disable": True,
        "when_ready": when_ready,
    }
    if settings.tls:
        # Our context answers a plain-HTTP request on this port with a redirect to https:// (web/plainhttp.py).
        options.update(certfile=settings.tls_cert, keyfile=settings.tls_key,
                       ssl_context=plainhttp.ssl_context_hook(settings.web_host))
    return options


def serve(settings: Settings, debug: bool = False, workers: int | None = None, fd: int | None = None) -> None:
    """Serve the app: gunicorn on web_host:web_port (or the listening socket `fd`, see sensorhub.webserver), or with
    `debug` Flask's server on localhost:5000."""
    if debug:
        _serve_debug(settings)
        return
    if fd is None:
        ensure_free(settings.web_port, "SENSORHUB_WEB_PORT", "web server", host=settings.web_host)
    if settings.tls:
        check_tls_files(settings)
    _warn_about_setup(settings)
    _without_server_header()
    app = create_app(settings)
    _Gunicorn(app, gunicorn_options(settings, web_sizing(settings, workers), fd)).run()


def _serve_debug(settings: Settings) -> None:
    # With the reloader, a watching parent starts the serving child again at each code change.
    child = os.environ.get("WERKZEUG_RUN_MAIN") == "true"
    if not child:
        ensure_free(DEBUG_PORT, "SENSORHUB_WEB_PORT", "Flask debug server", host=DEBUG_HOST,
                    remedy="stop the other program (the debug server always uses port 5000)")
        _warn_about_setup(settings)
    app = create_app(settings)
    if child:
        logger.info("web server ready on %s (Flask debug server)", _url(DEBUG_HOST, DEBUG_PORT))
    app.run(host=DEBUG_HOST, port=DEBUG_PORT, debug=True, use_reloader=True)
