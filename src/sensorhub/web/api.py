"""The JSON API: devices, their history and counts; LED and rename commands relayed to the ingest workers
(through the pipe, or through the broker, where the worker that takes a command answers with its outcome).

Every route is described in docs/api.md (tests/test_docs.py fails when one is missing) and listed by GET /api.
"""

from __future__ import annotations

import inspect
import logging
import re
import time
from typing import Any

import orjson
from flask import Blueprint, Flask, Response, current_app, jsonify, request, url_for
from flask_babel import gettext as _

from sensorhub import livetoken
from sensorhub.commands import LedRequest, Outcome, RenameRequest
from sensorhub.db import history, listing, queries
from sensorhub.db.space import database_space
from sensorhub.errors import ClientNotRunning, CommandError, NoReply
from sensorhub.i18n import N_
from sensorhub.protocol import Kind
from sensorhub.rules import NAME_RULE
from sensorhub.web import overview
from sensorhub.web.auth import control_required, template_visitor, visitor
from sensorhub.web.conditional import conditional
from sensorhub.web.i18n import cursor_problem, pick
from sensorhub.web.present import device_history_json, device_json, device_records_json, iso
from sensorhub.web.relay import REPLY_WAIT
from sensorhub.web.state import web_state

logger = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/api")

#: How long a rename waits for the ingest client to record the new name before answering 202.
RENAME_WAIT = 2.0
_RENAME_POLL = 0.05

CLIENT_NOT_RUNNING = N_("le client d'ingestion ne tourne pas : commande non transmise (lancez `make client`)")
NO_REPLY = N_("aucun client d'ingestion n'a pris la commande dans les %(wait)s s (tous arrêtés, ou débordés) : "
              "elle est abandonnée et ne sera pas exécutée")

Answer = tuple[Response, int]


class ApiError(Exception):
    """A request the API refuses: `status` and a message for `{"error": …}` in the request's language."""

    def __init__(self, message: str, status: int = 400, parameter: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.parameter = parameter


@bp.errorhandler(ApiError)
def _api_error(err: ApiError) -> Answer:
    if err.parameter is not None:
        return jsonify(error=err.message, parameter=err.parameter), err.status
    return jsonify(error=err.message), err.status


def json_body() -> dict[str, Any]:
    """The request's JSON object (any fields: the caller checks them); ApiError (400) if it is not one."""
    if not request.is_json:
        raise ApiError(_("envoyez un objet JSON avec l'en-tête Content-Type: application/json"))
    body = request.get_json(silent=True)
    if body is None:
        raise ApiError(_("le corps de la requête n'est pas du JSON valide"))
    if not isinstance(body, dict):
        raise ApiError(_("le corps de la requête doit être un objet JSON"))
    return body


def _json_object(fields: set[str]) -> dict[str, Any]:
    """The request's JSON object, which must have exactly `fields`."""
    body = json_body()
    unknown = sorted(set(body) - fields)
    if unknown:
        raise ApiError(_("champ inconnu : %(field)s", field=repr(unknown[0][:30])))
    missing = sorted(fields - set(body))
    if missing:
        raise ApiError(_("champ manquant : %(field)s", field=repr(missing[0])))
    return body


def _online_flag() -> bool | None:
    text = request.args.get("online")
    if text is None:
        return None
    if text.lower() in ("1", "true", "oui"):
        return True
    if text.lower() in ("0", "false", "non"):
        return False
    raise ApiError(_("le paramètre online vaut 1 ou 0"))


def _unknown(device_id: int) -> ApiError:
    return ApiError(_("aucun appareil n'a l'identifiant %(id)s", id=device_id), 404)


def _relay(command: LedRequest | RenameRequest) -> Outcome | None:
    """Hand `command` to the ingest workers: the outcome a worker answered (broker), None through the pipe."""
    try:
        return web_state().relay.send(command)
    except ClientNotRunning as err:
        logger.warning("command not relayed: %s", err)
        raise ApiError(_(CLIENT_NOT_RUNNING), 503) from err
    except NoReply as err:
        logger.warning("command not carried out: %s", err)
        raise ApiError(_(NO_REPLY, wait=f"{REPLY_WAIT:.0f}"), 503) from err
    except CommandError as err:
        logger.warning("command not relayed: %s", err)
        raise ApiError(_("commande non transmise au client d'ingestion : %(error)s", error=err), 503) from err


def _refused(outcome: Outcome, name: str, new_name: str = "") -> ApiError:
    """The API's answer to a worker that did not carry a command out."""
    if outcome is Outcome.OFFLINE:
        return ApiError(_("l'appareil « %(name)s » n'est plus en ligne pour le client d'ingestion (parti, ou revenu "
                          "dans une nouvelle session) : commande non envoyée", name=name), 409)
    if outcome is Outcome.UNKNOWN:
        return ApiError(_("le client d'ingestion ne connaît pas l'appareil « %(name)s » : commande non envoyée",
                          name=name), 409)
    if outcome is Outcome.TAKEN:
        return ApiError(_("le nom « %(name)s » est déjà utilisé par un autre appareil", name=new_name), 409)
    return ApiError(_("réponse inattendue du client d'ingestion (%(outcome)s) : commande non exécutée",
                      outcome=outcome.value), 503)


_PLACEHOLDER = re.compile(r"<(?:[^<>:]+:)?([^<>:]+)>")
_IMPLICIT_METHODS = frozenset({"HEAD", "OPTIONS"})
DOCUMENTATION = "docs/api.md"


def doc_path(rule: str) -> str:
    """A route as the documentation writes it: `/api/devices/<int:device_id>` -> `/api/devices/<device_id>`."""
    return _PLACEHOLDER.sub(r"<\1>", rule)


def routes(app: Flask, blueprint: str | None = None) -> list[dict[str, str]]:
    """Every route of `app` (or of one blueprint) but static files: method, path and its view's docstring line."""
    listed = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or (blueprint is not None and rule.endpoint.split(".")[0] != blueprint):
            continue
        view = app.view_functions[rule.endpoint]
        # The docstring's first paragraph, whole: its first line alone may stop mid-sentence.
        description = " ".join(inspect.cleandoc(view.__doc__ or "").split("\n\n")[0].split())
        for method in sorted((rule.methods or set()) - _IMPLICIT_METHODS):
            listed.append({"method": method, "path": doc_path(rule.rule), "description": description})
    return listed


@bp.get("", strict_slashes=False)
def index() -> Response:
    """This list of the API's routes, with where they are documented."""
    return jsonify(name="sensorhub", documentation=DOCUMENTATION, routes=routes(current_app, bp.name))


#: /api/devices's page size when the client gives no `limit`, and the largest it may ask for.
DEFAULT_LIMIT = 1000
MAX_LIMIT = 5000


def page_limit(default: int, maximum: int, parameter: str = "limit") -> int:
    """The request's page size (`?limit=`): `default` without one, ApiError (400) unless 1 to `maximum`."""
    text = request.args.get(parameter)
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= maximum:
        raise ApiError(_("le paramètre %(name)s est un entier de 1 à %(maximum)s", name=parameter, maximum=maximum),
                       parameter=parameter)
    return int(text)


def page_request(default_sort: str = "recent") -> tuple[str, listing.PageCursor | None]:
    """The request's order (`?sort=`) and cursor (`?cursor=`, from a previous page of the same order)."""
    sort = request.args.get("sort", default_sort)
    if sort not in listing.SORTS:
        raise ApiError(_("le paramètre sort vaut %(values)s", values=", ".join(listing.SORTS)), parameter="sort")
    text = request.args.get("cursor")
    if text is None:
        return sort, None
    try:
        return sort, listing.PageCursor.decode(text, sort)
    except listing.BadCursor as err:
        raise ApiError(_("%(problem)s : reprenez à la première page (sans cursor) ou au lien « next » de la "
                         "réponse précédente", problem=cursor_problem(err, sort)), parameter="cursor") from err


@bp.get("/devices")
def devices() -> Response:
    """A page of devices with their latest values, newest first (`?online=`, `?q=`, `?sort=`, `?limit=`, `?cursor=`)."""
    online = _online_flag()
    query = request.args.get("q", "").strip()[:64]
    limit = page_limit(DEFAULT_LIMIT, MAX_LIMIT)
    sort, cursor = page_request()
    # Once accounts exist, `?q=` matches names only for visitors who are not logged in: a MAC they cannot see
    # must not come back prefix by prefix either (docs/security.md).
    private = visitor().sees_private
    with web_state().database.connect() as conn:
        found = listing.page(conn, queries.record_columns(), sort=sort, cursor=cursor, limit=limit,
                             where=listing.Filter(online=online, query=query, by_mac=private))
    # orjson: the same bytes as jsonify (compact, UTF-8, a final newline), in a tenth of the time for a fleet.
    body = orjson.dumps(device_records_json([row[:11] for row in found.rows], private)) + b"\n"
    response = Response(body, mimetype="application/json")
    response.headers["X-Total-Count"] = str(found.total)
    if found.next is not None:
        following: dict[str, Any] = {**request.args.to_dict(), "limit": str(limit), "cursor": found.next.encode()}
        response.headers["X-Next-Cursor"] = following["cursor"]
        response.headers["Link"] = f'<{url_for("api.devices", **following)}>; rel="next"'
    return conditional(response)


@bp.get("/devices/<id:device_id>")
def device(device_id: int) -> Response:
    """One device with `history`: its last 10 values of each kind, newest first."""
    with web_state().database.connect() as conn:
        found = queries.device_history(conn, device_id)
    if found is None:
        raise _unknown(device_id)
    return jsonify(device_history_json(found, visitor().sees_private))


@bp.get("/stats")
def stats() -> Response:
    """How many devices, online devices and readings of each kind; the database's size and oldest reading; the
    free space on its disk and whether that is low."""
    database = web_state().database
    with database.connect() as conn:
        counts = queries.stats(conn)
        size = history.database_bytes(database.engine(), conn)
        first = history.oldest(conn)
    settings = web_state().settings
    space = database_space(settings.database_url, settings.low_space_mib)
    return jsonify(
        devices=counts.devices, online=counts.online,
        readings={kind.value: counts.readings[kind] for kind in Kind},
        db_bytes=size, oldest=None if first is None else iso(first),
        disk_free_bytes=None if space is None else space.free, disk_low=space is not None and space.low,
    )


@bp.get("/overview")
def overview_() -> Response:
    """How the fleet is doing: devices online, offline and silent, readings per second and per minute over the last
    hour, the database's size and oldest reading, the health checks, the latest joins and leaves, active alerts and
    the devices to look at (`database` is null without a database)."""
    return jsonify(overview.gather(template_visitor().sees_private))  # no database: no accounts


@bp.get("/live-token")
def live_token() -> Response:
    """A token for the live stream's WebSocket URL (`?token=`), valid 5 minutes; needed in private mode."""
    settings = web_state().settings
    token = livetoken.issue(current_app.config["SECRET_KEY"])
    response = jsonify(token=token, parameter=livetoken.PARAMETER, seconds=livetoken.TOKEN_SECONDS,
                       required=settings.web_private)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/devices/<id:device_id>/led")
@control_required
def led(device_id: int) -> Answer:
    """Switch an online device's LED (`{"on": true|false}`): 202 once the ingest client has the command.

    On one machine the command goes through the ingest client's pipe (503 if no ingest client reads it); through
    the broker (SENSORHUB_COMMANDS=broker), 202 comes once a worker sent it to the board.

    Through the broker, the worker that took the command answers: 409 if it finds the device offline in the
    command's session (or unknown), 503 if no worker answers within REPLY_WAIT (the command then expires).
    """
    on = _json_object({"on"})["on"]
    if not isinstance(on, bool):
        raise ApiError(_("le champ 'on' vaut true ou false"))
    with web_state().database.connect() as conn:
        found = queries.get_device(conn, device_id)
    if found is None:
        raise _unknown(device_id)
    if not found.online:
        raise ApiError(_("l'appareil « %(name)s » est hors ligne", name=found.name), 409)
    outcome = _relay(LedRequest(found.id, found.session_id, on))
    if outcome is not None and outcome is not Outcome.SENT:
        logger.info("LED %s for %s (device %d, session %s) not sent: %s (for %s from %s)", "on" if on else "off",
                    found.name, found.id, found.session_id, outcome.value, visitor().label, request.remote_addr)
        raise _refused(outcome, found.name)
    logger.info("LED %s %s to %s (device %d, session %s) for %s from %s", "on" if on else "off",
                "relayed" if outcome is None else "sent", found.name, found.id, found.session_id, visitor().label,
                request.remote_addr)
    return jsonify(status="relayed" if outcome is None else "sent"), 202


@bp.post("/devices/<id:device_id>/name")
@control_required
def rename(device_id: int) -> Answer:
    """Rename a device: 200 with the device once the ingest client recorded it, 202 if still pending.

    Through the broker, the worker that took it answers: 409 if it finds the name taken (or the device unknown),
    503 if no worker answers within REPLY_WAIT (the rename then expires, not recorded).
    """
    name = _json_object({"name"})["name"]
    if not isinstance(name, str):
        raise ApiError(_("le champ 'name' est une chaîne de caractères"))
    problem = NAME_RULE.problem(name)
    if problem is not None:
        raise ApiError(pick(NAME_RULE.messages[problem]))
    database = web_state().database
    with database.connect() as conn:
        current = queries.device_name(conn, device_id)
        if current is None:
            raise _unknown(device_id)
        taken = current != name and queries.name_taken(conn, name, device_id)
    if taken:
        raise ApiError(_("le nom « %(name)s » est déjà utilisé par un autre appareil", name=name), 409)
    if current != name:
        outcome = _relay(RenameRequest(device_id, name))
        if outcome is not None and outcome is not Outcome.RENAMED:
            logger.info("rename of %s (device %d) to %r refused by the ingest client: %s (for %s from %s)", current,
                        device_id, name, outcome.value, visitor().label, request.remote_addr)
            raise _refused(outcome, current, name)
        logger.info("rename of %s (device %d) to %r relayed for %s from %s", current, device_id, name,
                    visitor().label, request.remote_addr)
        if not _wait_for_name(device_id, name):
            return jsonify(status="pending"), 202
    with database.connect() as conn:
        found = queries.get_device(conn, device_id)
    if found is None:  # deleted meanwhile (db reset)
        raise _unknown(device_id)
    return jsonify(device_json(found, visitor().sees_private)), 200


def _wait_for_name(device_id: int, name: str) -> bool:
    """Poll (read-only) until the device is called `name`; False after the wait."""
    wait = float(current_app.config.get("SENSORHUB_RENAME_WAIT", RENAME_WAIT))
    deadline = time.monotonic() + wait
    database = web_state().database
    while True:
        with database.connect() as conn:
            if queries.device_name(conn, device_id) == name:
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_RENAME_POLL)
