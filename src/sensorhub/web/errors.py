"""Error answers: JSON `{"error": …}` under /api, an HTML page elsewhere, in the request's language."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, render_template, request
from flask_babel import gettext as _
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from sensorhub.i18n import N_
from sensorhub.web.database import MISSING_MESSAGE, DatabaseMissing

logger = logging.getLogger(__name__)

ResponseTuple = tuple[Response | str, int]

_CSRF_REASONS = {
    "The CSRF token is missing.": N_("jeton CSRF absent (en-tête X-CSRFToken)"),
    "The CSRF session token is missing.": N_("session sans jeton CSRF (cookie absent ou expiré)"),
    "The CSRF token is invalid.": N_("jeton CSRF invalide"),
    "The CSRF tokens do not match.": N_("jeton CSRF qui ne correspond pas à la session"),
    "The CSRF token has expired.": N_("jeton CSRF expiré"),
}

_HTTP_MESSAGES = {
    400: N_("requête invalide"),
    401: N_("connexion requise"),
    403: N_("accès refusé"),
    404: N_("introuvable"),
    405: N_("méthode non autorisée"),
    413: N_("corps de requête trop grand"),
    415: N_("type de contenu non pris en charge"),
    429: N_("trop de requêtes"),
    500: N_("erreur interne du serveur"),
    503: N_("service indisponible"),
}


def wants_json() -> bool:
    """Whether the current request gets JSON errors (the API)."""
    return request.path == "/api" or request.path.startswith("/api/")


def json_error(message: str, status: int) -> ResponseTuple:
    """`{"error": message}` with `status`."""
    return jsonify(error=message), status


def _page_error(title: str, message: str, status: int) -> ResponseTuple:
    return render_template("error.html", title=title, message=message, status=status), status


def _csrf(err: CSRFError) -> ResponseTuple:
    reason = _CSRF_REASONS.get(str(err.description))
    message = _("requête refusée : %(reason)s ; rechargez la page",
                reason=_(reason) if reason is not None else str(err.description))
    if wants_json():
        return json_error(message, 400)
    return _page_error(_("Requête refusée"), message, 400)


def _is_fragment() -> bool:
    return request.path.startswith("/sensor/")


def _database_missing(err: DatabaseMissing) -> ResponseTuple:
    if wants_json():
        return json_error(str(err), 503)
    if _is_fragment():
        return str(err), 503
    return _page_error(_("Base de données absente"), str(err), 503)


def _database_error(err: SQLAlchemyError) -> ResponseTuple:
    detail = str(getattr(err, "orig", None) or err).splitlines()[0]
    logger.warning("database error on %s: %s", request.path, detail)
    if "no such table" in detail:
        message = _("%(missing)s (la base n'a pas encore de tables)", missing=_(MISSING_MESSAGE))
    else:
        message = _("base de données indisponible : %(detail)s", detail=detail)
    if wants_json():
        return json_error(message, 503)
    if _is_fragment():
        return message, 503
    return _page_error(_("Base de données indisponible"), message, 503)


def _http(err: HTTPException) -> ResponseTuple | HTTPException:
    status = err.code or 500
    known = _HTTP_MESSAGES.get(status)
    message = _(known) if known is not None else err.name.lower()
    if err.description and err.description != type(err).description:  # a view's own reason: `abort(400, why)`
        message = _("%(message)s : %(reason)s", message=message, reason=err.description)
    if wants_json():
        return json_error(message, status)
    if _is_fragment():
        return message, status
    return _page_error(_("Erreur %(status)s", status=status), message[:1].upper() + message[1:], status)


def register_error_handlers(app: Flask) -> None:
    """Install the handlers above on `app`."""
    app.register_error_handler(CSRFError, _csrf)
    app.register_error_handler(DatabaseMissing, _database_missing)
    app.register_error_handler(SQLAlchemyError, _database_error)
    app.register_error_handler(HTTPException, _http)
