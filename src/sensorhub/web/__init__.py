"""The Flask web server: pages, card fragments and JSON API, read-only on the database but for people's alert
decisions (rules, acknowledgements, snoozes: `database.DecisionDatabase`)."""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from importlib import import_module
from typing import Any

from flask import Flask, Response, request
from flask_wtf.csrf import CSRFProtect
from werkzeug.routing import IntegerConverter

from sensorhub.config import Settings
from sensorhub.credentials import state_dir, web_secret_key
from sensorhub.web import i18n
from sensorhub.web.database import DecisionDatabase, ReadOnlyDatabase
from sensorhub.web.errors import register_error_handlers
from sensorhub.web.present import register_filters
from sensorhub.web.relay import make_relay
from sensorhub.web.state import EXTENSION, WebState
from sensorhub.webstate import LoginSessions, LoginThrottle, WebStateStore, drop_old_throttle_file, web_state_url

logger = logging.getLogger(__name__)

#: Everything comes from this server, except the broker's WebSocket (another port of the same host).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; "
    # MQTT.js runs its keepalive timer in a worker made from a blob.
    "worker-src 'self' blob:; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)


#: Browsers that saw it over HTTPS use only HTTPS for this host for a year (not its subdomains: other devices).
HSTS = "max-age=31536000"


class IdConverter(IntegerConverter):
    """`<id:device_id>`: a database id, so at most 2**63 - 1; anything larger is a plain 404, not a crash."""

    def __init__(self, map: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(map, min=1, max=2**63 - 1)


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.is_secure:  # HTTPS served by gunicorn (SENSORHUB_TLS_CERT); never over plain HTTP (RFC 6797 §7.2)
        response.headers.setdefault("Strict-Transport-Security", HSTS)
    return response


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app for `settings` (default: Settings.load()); the database is opened on first use."""
    from sensorhub.web import api, auth, monitoring, pages

    import_module("sensorhub.web.series")  # adds the readings and CSV routes to the API blueprint
    import_module("sensorhub.web.alerts")  # adds the alerts' routes to the API blueprint

    settings = settings if settings is not None else Settings.load()
    app = Flask(__name__)
    app.url_map.converters["id"] = IdConverter
    app.config.update(
        # Kept in the state directory (0600) unless SENSORHUB_SECRET_KEY is set: logins survive restarts.
        SECRET_KEY=web_secret_key(settings),
        # Tokens live as long as the session cookie: a page left open all day still switches LEDs.
        WTF_CSRF_TIME_LIMIT=None,
        SESSION_COOKIE_NAME="sensorhub_session",
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SECURE=settings.tls,
        # A logged-in cookie lasts as long as its login (the web state's expires_at, checked on every request).
        PERMANENT_SESSION_LIFETIME=timedelta(days=settings.web_session_days),
        MAX_CONTENT_LENGTH=16 * 1024,
        # CSRF is checked by _check_csrf: not for a request carrying an API token (no cookie, no forgery).
        WTF_CSRF_CHECK_DEFAULT=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    store = WebStateStore(web_state_url(settings))
    store.setup()
    store.dispose()  # gunicorn forks after this: each worker opens its own connections
    if store.path is not None:
        os.chmod(store.path, 0o600)  # it holds client addresses and session hashes
    drop_old_throttle_file(state_dir(settings))
    app.extensions[EXTENSION] = WebState(
        settings, ReadOnlyDatabase(settings.database_url), make_relay(settings), LoginThrottle(store),
        LoginSessions(store, timedelta(days=settings.web_session_days).total_seconds()),
        DecisionDatabase(settings.database_url))
    csrf = CSRFProtect(app)

    def check_csrf() -> None:
        if app.config.get("WTF_CSRF_ENABLED", True) and auth.bearer() is None:
            csrf.protect(apply_exemptions=True)

    app.before_request(auth.check_bearer)
    app.before_request(check_csrf)
    i18n.init_app(app)
    register_filters(app)
    register_error_handlers(app)
    monitoring.init_app(app)
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(auth.bp)
    app.before_request(auth.guard_private_site)
    app.jinja_env.globals["visitor"] = auth.template_visitor
    app.jinja_env.globals["active_alert_count"] = pages.active_alert_count
    app.after_request(_security_headers)
    return app
