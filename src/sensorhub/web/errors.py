"""Error answers: JSON `{"error": …}` under /api, a French HTML page elsewhere."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from sensorhub.web.database import MISSING_MESSAGE, DatabaseMissing

logger = logging.getLogger(__name__)

ResponseTuple = tuple[Response | str, int]

_CSRF_REASONS = {
    "The CSRF token is missing.": "jeton CSRF absent (en-tête X-CSRFToken)",
    "The CSRF session token is missing.": "session sans jeton CSRF (cookie absent ou expiré)",
    "The CSRF token is invalid.": "jeton CSRF invalide",
    "The CSRF tokens do not match.": "jeton CSRF qui ne correspond pas à la session",
    "The CSRF token has expired.": "jeton CSRF expiré",
}

_HTTP_MESSAGES = {
    400: "requête invalide",
    404: "introuvable",
    405: "méthode non autorisée",
    413: "corps de requête trop grand",
    415: "type de contenu non pris en charge",
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
    reason = _CSRF_REASONS.get(str(err.description), str(err.description))
    message = f"requête refusée : {reason} ; rechargez la page"
    if wants_json():
        return json_error(message, 400)
    return _page_error("Requête refusée", message, 400)


def _is_fragment() -> bool:
    return request.path.startswith("/sensor/")


def _database_missing(err: DatabaseMissing) -> ResponseTuple:
    if wants_json():
        return json_error(str(err), 503)
    if _is_fragment():
        return str(err), 503
    return _page_error("Base de données absente", str(err), 503)


def _database_error(err: SQLAlchemyError) -> ResponseTuple:
    detail = str(getattr(err, "orig", None) or err).splitlines()[0]
    logger.warning("database error on %s: %s", request.path, detail)
    if "no such table" in detail:
        message = f"{MISSING_MESSAGE} (la base n'a pas encore de tables)"
    else:
        message = f"base de données indisponible : {detail}"
    if wants_json():
        return json_error(message, 503)
    if _is_fragment():
        return message, 503
    return _page_error("Base de données indisponible", message, 503)


def _http(err: HTTPException) -> ResponseTuple | HTTPException:
    status = err.code or 500
    message = _HTTP_MESSAGES.get(status, err.name.lower())
    if err.description and err.description != type(err).description:  # a view's own reason: `abort(400, why)`
        message = f"{message} : {err.description}"
    if wants_json():
        return json_error(message, status)
    if _is_fragment():
        return message, status
    return _page_error(f"Erreur {status}", message[:1].upper() + message[1:], status)


def register_error_handlers(app: Flask) -> None:
    """Install the handlers above on `app`."""
    app.register_error_handler(CSRFError, _csrf)
    app.register_error_handler(DatabaseMissing, _database_missing)
    app.register_error_handler(SQLAlchemyError, _database_error)
    app.register_error_handler(HTTPException, _http)
