"""The Flask web server: pages, card fragments and JSON API, read-only on the database."""

from __future__ import annotations

import logging
import secrets

from flask import Flask, Response
from flask_wtf.csrf import CSRFProtect

from sensorhub.config import Settings
from sensorhub.web.database import ReadOnlyDatabase
from sensorhub.web.errors import register_error_handlers
from sensorhub.web.present import register_filters
from sensorhub.web.state import EXTENSION, WebState

logger = logging.getLogger(__name__)

#: Everything comes from this server, except the broker's WebSocket (another port of the same host).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; "
    # MQTT.js runs its keepalive timer in a worker made from a blob.
    "worker-src 'self' blob:; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app for `settings` (default: Settings.load()); the database is opened on first use."""
    from sensorhub.web import api, pages

    settings = settings if settings is not None else Settings.load()
    app = Flask(__name__)
    app.config.update(
        # A random key signs the CSRF tokens when none is set; gunicorn preloads the app so that every
        # worker shares it.
        SECRET_KEY=settings.secret_key or secrets.token_hex(32),
        # Tokens live as long as the session cookie: a page left open all day still switches LEDs.
        WTF_CSRF_TIME_LIMIT=None,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_HTTPONLY=True,
        MAX_CONTENT_LENGTH=16 * 1024,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = WebState(settings, ReadOnlyDatabase(settings.database_url))
    CSRFProtect(app)
    register_filters(app)
    register_error_handlers(app)
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.after_request(_security_headers)
    return app
