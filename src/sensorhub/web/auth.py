"""Logins for the controls: who may switch LEDs and rename devices once accounts exist.

With no account, the controls stay open to everyone (as the specification has it) and the pages say so.
With at least one, the LED and rename POSTs need a login, anonymous visitors see no MAC address nor
session id, and SENSORHUB_WEB_PRIVATE=1 closes every page and API as well.

A script sends `Authorization: Bearer <token>` instead (sensorhub/tokens.py): it counts as logged in (a
read-only token reads only), needs no cookie nor CSRF token, and a token that is not one is refused (401)
rather than taken for an anonymous visitor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from flask import Blueprint, abort, g, jsonify, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from werkzeug.wrappers import Response

from sensorhub import accounts, tokens
from sensorhub.errors import DatabaseError
from sensorhub.i18n import N_
from sensorhub.web.state import web_state
from sensorhub.webstate import LoginSessions, LoginThrottle

logger = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)

#: Reachable without a login even when the site is private.
#: /healthz and /metrics too: monitoring logs in nowhere, and they show no device, name nor address.
PUBLIC_ENDPOINTS = frozenset({"auth.login", "auth.login_post", "auth.logout", "static", "monitoring.healthz",
                              "monitoring.metrics", "i18n.switch"})
#: Their bearer token is SENSORHUB_METRICS_TOKEN (web/monitoring.py), not an API token.
MONITORING_ENDPOINTS = frozenset({"monitoring.healthz", "monitoring.metrics"})
LOGIN_REQUIRED = N_("connectez-vous pour piloter les appareils (/login)")
READ_ONLY_TOKEN = N_("jeton d'API en lecture seule : il ne peut pas piloter les appareils")
BAD_TOKEN = N_("jeton d'API inconnu ou révoqué (sensorhub token list)")
BEARER = "Bearer "

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Visitor:
    """Who is asking: whether accounts exist, and the logged-in account's name if any."""

    accounts: bool
    user: str | None
    #: The API token the request carries (its name), and whether it reads only.
    token: str | None = None
    read_only: bool = False

    @property
    def may_control(self) -> bool:
        """Whether the LED and rename controls are open to this visitor."""
        if self.token is not None:
            return not self.read_only
        return not self.accounts or self.user is not None

    @property
    def sees_private(self) -> bool:
        """Whether MAC addresses and session ids are shown (not to anonymous visitors once accounts exist)."""
        return self.token is not None or not self.accounts or self.user is not None

    @property
    def signed_in(self) -> bool:
        """A logged-in account or an API token: what a private site lets in."""
        return self.user is not None or self.token is not None

    @property
    def label(self) -> str:
        """Who made a command, for the logs."""
        if self.token is not None:
            return f"token {self.token}"
        return self.user if self.user else "anyone (no accounts)"


def bearer() -> str | None:
    """The token of the request's `Authorization: Bearer` header, if it has one."""
    header = request.headers.get("Authorization", "")
    return header[len(BEARER):].strip() if header.startswith(BEARER) else None


def visitor() -> Visitor:
    """The current request's visitor (looked up once per request)."""
    found: Visitor | None = g.get("sensorhub_visitor")
    if found is None:
        found = g.sensorhub_visitor = _lookup()
    return found


def template_visitor() -> Visitor:
    """`visitor()` for templates: an error page rendered because the database is missing still renders."""
    try:
        return visitor()
    except (SQLAlchemyError, DatabaseError):
        return Visitor(False, None)


def _lookup() -> Visitor:
    secret = bearer()
    if secret is not None and request.endpoint not in MONITORING_ENDPOINTS:
        with web_state().database.connect() as conn:
            found = tokens.verify(conn, secret)
            if found is None:
                abort(401)  # check_bearer has answered already; a safety net for other callers
            return Visitor(accounts.any_account(conn), None, found.name, found.read_only)
    try:
        with web_state().database.connect() as conn:
            if not accounts.any_account(conn):
                return Visitor(False, None)
            name, token = session.get("user"), session.get("sid")
            # The password it was opened with (ends it on the sensor database's word, wherever `user passwd` ran)
            # and its row in the web state (ends it at logout, password change and expiry, for every cookie copy).
            if (isinstance(name, str) and isinstance(token, str)
                    and session.get("stamp") == accounts.current_stamp(conn, name)
                    and _sessions().account(token) == name):
                return Visitor(True, name)
    except OperationalError as err:
        if "no such table: web_user" not in str(err):
            raise
        return Visitor(False, None)  # a database made before accounts existed: `make db` adds the table
    return Visitor(True, None)


def control_required(view: F) -> F:
    """Answer 401 to a command from a visitor who is not logged in while accounts exist."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        current = visitor()
        if not current.may_control:
            if current.token is not None:
                return jsonify(error=_(READ_ONLY_TOKEN)), 403
            return jsonify(error=_(LOGIN_REQUIRED)), 401
        return view(*args, **kwargs)

    return cast(F, wrapper)


def check_bearer() -> tuple[Response, int] | None:
    """Refuse a request whose bearer token is not one (before CSRF and the private site's redirect)."""
    secret = bearer()
    if secret is None or request.endpoint in MONITORING_ENDPOINTS:
        return None  # /healthz and /metrics check their own token (SENSORHUB_METRICS_TOKEN)
    try:
        with web_state().database.connect() as conn:
            known = tokens.verify(conn, secret) is not None
    except OperationalError as err:
        if "no such table: api_token" not in str(err):
            raise
        known = False  # a database made before tokens existed: `make db` adds the table
    if not known:
        logger.warning("request with an unknown API token from %s", request.remote_addr or "?")
        response = jsonify(error=_(BAD_TOKEN))
        response.headers["WWW-Authenticate"] = 'Bearer realm="sensorhub", error="invalid_token"'
        return response, 401
    return None


def guard_private_site() -> Response | tuple[Response, int] | None:
    """With SENSORHUB_WEB_PRIVATE=1 and accounts, send visitors who are not logged in to the login page."""
    if not web_state().settings.web_private or request.endpoint in PUBLIC_ENDPOINTS:
        return None
    current = visitor()
    if not current.accounts or current.signed_in:
        return None
    if request.path.startswith("/api/") or request.path.startswith("/sensor/"):
        return jsonify(error=_("connectez-vous pour consulter ce site (/login)")), 401
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def _safe_next(target: str | None) -> str:
    """Only a path on this site, never another site (open redirect)."""
    if target and target.startswith("/") and not target.startswith("//") and not urlsplit(target).netloc:
        return target
    return url_for("pages.capteurs")


@bp.get("/login")
def login() -> str:
    """The login form."""
    return render_template("login.html", page="login", next=_safe_next(request.args.get("next")), error=None)


@bp.post("/login")
def login_post() -> Response | tuple[str, int]:
    """Check the name and password; too many failures from one address in a minute answer 429."""
    target = _safe_next(request.form.get("next"))
    throttle = _throttle()
    address = request.remote_addr or "?"
    attempt = throttle.attempt(address)  # counted before the password is checked: parallel attempts cannot race
    if attempt is None:
        waited = throttle.blocked_for(address)
        logger.warning("login refused for %s: too many failed attempts", address)
        page = render_template("login.html", page="login", next=target,
                               error=_("Trop d'essais : réessayez dans %(seconds)s s.", seconds=int(waited) + 1))
        response = Response(page, 429)
        response.headers["Retry-After"] = str(int(waited) + 1)
        return response
    name = request.form.get("name", "")[:64]
    password = request.form.get("password", "")[: accounts.MAX_PASSWORD]
    with web_state().database.connect() as conn:
        stamp = accounts.verify(conn, name, password) if name and password else None
    if stamp is None:
        logger.warning("failed login for %r from %s", name, address)
        return render_template("login.html", page="login", next=target,
                               error=_("Nom ou mot de passe incorrect.")), 401
    throttle.succeeded(attempt)
    token = _sessions().open(name)
    session.clear()  # a fresh session: no fixation
    session.permanent = True  # the cookie expires with the login (PERMANENT_SESSION_LIFETIME)
    session["user"] = name
    session["stamp"] = stamp
    session["sid"] = token
    logger.info("%s logged in from %s", name, address)
    return redirect(target)


@bp.post("/logout")
def logout() -> Response:
    """End the session, in the web state too: a copy of its cookie is anonymous from now on."""
    name, token = session.get("user"), session.get("sid")
    session.clear()
    if isinstance(token, str):
        _sessions().end(token)
    if name:
        logger.info("%s logged out", name)
    return redirect(url_for("pages.capteurs"))


def _throttle() -> LoginThrottle:
    state = web_state()
    if state.throttle is None:
        raise RuntimeError("the login throttle was not set up")
    return state.throttle


def _sessions() -> LoginSessions:
    state = web_state()
    if state.sessions is None:
        raise RuntimeError("the login sessions were not set up")
    return state.sessions
