"""The HTML pages (Accueil, Capteurs, Historique) and the card fragments /capteurs fetches."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, current_app, render_template, request
from sqlalchemy.exc import SQLAlchemyError

from sensorhub import buckets, livetoken
from sensorhub.db import history, queries
from sensorhub.errors import DatabaseError
from sensorhub.protocol import MAX_NAME, QOS, Kind, Topic, browser_data
from sensorhub.web import vendor
from sensorhub.web.auth import visitor
from sensorhub.web.conditional import conditional
from sensorhub.web.state import web_state

logger = logging.getLogger(__name__)

bp = Blueprint("pages", __name__)

MAX_QUERY = 64
_PROTOCOL_DATA = browser_data()


@bp.app_context_processor
def _protocol() -> dict[str, object]:
    """Every page carries the protocol's channels, QoS and name rule for its scripts (see base.html)."""
    return {"protocol_data": _PROTOCOL_DATA}


def _page_host() -> str:
    """The host name the browser used to reach this page (the broker runs on the same machine)."""
    return urlsplit(request.host_url).hostname or "127.0.0.1"


@bp.get("/")
@bp.get("/accueil")
def accueil() -> str:
    """What the system does and how to connect an ESP32 (works without a database)."""
    settings = web_state().settings
    return render_template(
        "accueil.html", page="accueil", broker_host=_page_host(), mqtt_port=settings.mqtt_port,
        mqtt_ws_port=settings.mqtt_ws_port, qos=QOS, Topic=Topic, max_name=MAX_NAME, database=_database_facts(),
    )


def _size_text(size: int) -> str:
    """`12,3 Mo`: French decimal comma, powers of 1,000 as disks count."""
    for unit, scale in (("Go", 1e9), ("Mo", 1e6), ("ko", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}".replace(".", ",")
    return f"{size} octets"


def _database_facts() -> dict[str, Any] | None:
    """The database's size, oldest reading and retention, or None without a database (the page still answers)."""
    state = web_state()
    try:
        with state.database.connect() as conn:
            size = history.database_bytes(state.database.engine(), conn)
            oldest = history.oldest(conn)
    except (DatabaseError, SQLAlchemyError) as err:
        logger.debug("no database facts on /accueil: %s", err)
        return None
    days = state.settings.retention_days
    return {"bytes": size, "size_text": _size_text(size), "oldest": oldest,
            "retention": f"{days} jour{'s' if days > 1 else ''}" if days else "illimitée"}


#: What a live card shows of the past: its light chart (LED and button show their latest value only).
CARD_HISTORY = (Kind.LIGHT,)


def _online_cards() -> list[queries.DeviceHistory]:
    """Online devices in name order (the page inserts newcomers at their place in that order)."""
    with web_state().database.connect() as conn:
        devices = sorted(queries.list_devices(conn, online=True), key=lambda d: (d.name.lower(), d.id))
        return queries.with_histories(conn, devices, kinds=CARD_HISTORY)


@bp.get("/capteurs")
def capteurs() -> str:
    """The devices online now; the page's script keeps it live through MQTT over WebSockets."""
    settings = web_state().settings
    return render_template(
        "capteurs.html", page="capteurs", cards=_online_cards(), mqtt_ws_port=settings.mqtt_ws_port,
        mqtt_wss_port=settings.mqtt_wss_port,
        # Private mode: the broker's WebSockets guard lets a page in only with a token it got from us.
        live_token=livetoken.issue(current_app.config["SECRET_KEY"]) if settings.web_private else "",
        keepalive=settings.keepalive, vendor_missing=vendor.missing(), max_name=MAX_NAME,
    )


@bp.get("/historique")
def historique() -> str:
    """Every device, most recently seen first, with its last 10 values of each kind; keyset-paginated."""
    query = request.args.get("q", "").strip()[:MAX_QUERY]
    before_text = request.args.get("avant", "")
    before = None
    if before_text:
        try:
            before = queries.Cursor.decode(before_text)
        except ValueError:
            abort(400)
    with web_state().database.connect() as conn:
        page = queries.history_page(conn, before=before, query=query, by_mac=visitor().sees_private)
    return render_template(
        "historique.html", page="historique", result=page, query=query, first_page=before is None,
        max_name=MAX_NAME,
    )


class Range(NamedTuple):
    """A range the device page offers: its button's label and how far back from now it reaches."""

    label: str
    seconds: int


#: The ranges the device page offers, by the name in its `?periode=` (a custom range is `?du=…&au=…`). Its
#: script reads them from the buttons (data-range, data-span-ms): they are written here only.
RANGES = {"1h": Range("1 h", 3600), "24h": Range("24 h", 86400), "7j": Range("7 j", 7 * 86400),
          "30j": Range("30 j", 30 * 86400)}
DEFAULT_RANGE = "24h"
#: The width of each aggregated bucket the readings API may answer with, for the device page's step series.
BUCKET_MS = {name: micros // 1000 for name, micros in buckets.SIZES.items()}


@bp.get("/appareil/<id:device_id>")
def appareil(device_id: int) -> str:
    """One device over time: charts of its light, LED and button over a chosen range, CSV, its sessions."""
    with web_state().database.connect() as conn:
        device = queries.get_device(conn, device_id)
        if device is None:
            abort(404)
        sessions = history.sessions(conn, device_id)
    period = request.args.get("periode", DEFAULT_RANGE)
    return render_template(
        "appareil.html", page="appareil", device=device, sessions=sessions, ranges=RANGES,
        period=period if period in RANGES else DEFAULT_RANGE, bucket_ms=BUCKET_MS, vendor_missing=vendor.missing(),
        max_name=MAX_NAME,
    )


@bp.get("/sensor/online")
def online_fragment() -> Response:
    """The cards of every online device (the /capteurs script reconciles its page with them); `?brief=1`: only
    what identifies each card (a large fleet's page fetches the few whole cards it lacks)."""
    if request.args.get("brief"):
        with web_state().database.connect() as conn:
            devices = queries.device_records(conn, online=True, latest=False)
        return conditional(render_template("_sensor_stubs.html", devices=devices))
    return conditional(render_template("_sensor_cards.html", cards=_online_cards(), max_name=MAX_NAME))


@bp.get("/sensor/<id:device_id>")
def sensor_fragment(device_id: int) -> Response:
    """The card of one device, online or not (its `data-online` says which)."""
    with web_state().database.connect() as conn:
        found = queries.device_history(conn, device_id)
    if found is None:
        abort(404)
    return conditional(render_template("_sensor_card.html", card=found, max_name=MAX_NAME))


@bp.get("/sensor/by-session")
def sensor_by_session() -> Response:
    """The card of the device online as `name` in `session`; 404 until the ingest client has recorded the join."""
    name = request.args.get("name", "")
    session = request.args.get("session", "")
    if not name or not session:
        abort(400)
    with web_state().database.connect() as conn:
        device = queries.online_device_by_session(conn, name, session)
        if device is None:
            abort(404)
        found = queries.with_histories(conn, [device], kinds=CARD_HISTORY)[0]
    return conditional(render_template("_sensor_card.html", card=found, max_name=MAX_NAME))
