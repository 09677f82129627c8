"""The HTML pages (Accueil, Aide, Capteurs, Historique, Alertes) and the card fragments /capteurs fetches."""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, current_app, render_template, request
from flask_babel import gettext as _
from flask_babel import ngettext
from sqlalchemy.exc import SQLAlchemyError

from sensorhub import buckets, livetoken
from sensorhub.alertedit import rule_fields
from sensorhub.alerting import OPERATORS, Metric, Rule, Severity
from sensorhub.db import alerts, alertviews, history, listing, queries
from sensorhub.errors import DatabaseError
from sensorhub.protocol import MAX_NAME, QOS, Kind, Topic, browser_data
from sensorhub.rules import NAME_RULE
from sensorhub.timestamps import format_micros
from sensorhub.web import overview, vendor
from sensorhub.web.auth import template_visitor, visitor
from sensorhub.web.conditional import conditional
from sensorhub.web.i18n import cursor_problem, format_number, pick
from sensorhub.web.present import stored_iso
from sensorhub.web.state import web_state

logger = logging.getLogger(__name__)

bp = Blueprint("pages", __name__)

MAX_QUERY = 64
_PROTOCOL_DATA = browser_data()


@bp.app_context_processor
def _protocol() -> dict[str, object]:
    """Every page carries the protocol's channels, QoS and name rule for its scripts (see base.html), the rule's
    messages in the page's language."""
    name_rule = dict(_PROTOCOL_DATA["name"])  # type: ignore[call-overload]
    name_rule["messages"] = {code: pick(message) for code, message in NAME_RULE.messages.items()}
    return {"protocol_data": {**_PROTOCOL_DATA, "name": name_rule}}


def _page_host() -> str:
    """The host name the browser used to reach this page (the broker runs on the same machine)."""
    return urlsplit(request.host_url).hostname or "127.0.0.1"


@bp.get("/")
@bp.get("/accueil")
def accueil() -> str:
    """How the fleet is doing: presence, traffic, database, health, joins and leaves, alerts (works without a
    database)."""
    found = overview.gather(template_visitor().sees_private)  # no database: no accounts
    database = found["database"]
    return render_template("accueil.html", page="accueil", overview=found, database=database,
                           chart=_traffic_chart(database["readings_per_minute"]) if database else None,
                           size_text=_size_text(database["db_bytes"]) if database else "")


#: The traffic chart's drawing box (an inline SVG: no script, the CSP allows no inline style).
CHART_WIDTH, CHART_HEIGHT = 600, 80


def _traffic_chart(minutes: list[dict[str, Any]]) -> dict[str, Any]:
    """One bar per minute, scaled to the busiest minute: x, y, width, height in the chart's box."""
    peak = max((m["count"] for m in minutes), default=0)
    width = CHART_WIDTH / max(len(minutes), 1)
    bars = []
    for i, minute in enumerate(minutes):
        height = round(minute["count"] / peak * CHART_HEIGHT, 1) if peak else 0.0
        bars.append({"x": round(i * width, 1), "y": round(CHART_HEIGHT - height, 1), "width": round(width * 0.8, 1),
                     "height": height, "count": minute["count"], "start": minute["start"]})
    return {"bars": bars, "peak": peak, "width": CHART_WIDTH, "height": CHART_HEIGHT}


@bp.get("/aide")
def aide() -> str:
    """What the system does and how to connect an ESP32 (works without a database)."""
    settings = web_state().settings
    return render_template(
        "aide.html", page="aide", broker_host=_page_host(), mqtt_port=settings.mqtt_port,
        mqtt_ws_port=settings.mqtt_ws_port, qos=QOS, Topic=Topic, max_name=MAX_NAME, database=_database_facts(),
    )


def _size_text(size: int) -> str:
    """`12,3 Mo` / `12.3 MB`: in the page's language, powers of 1,000 as disks count."""
    for unit, scale in ((_("Go"), 1e9), (_("Mo"), 1e6), (_("ko"), 1e3)):
        if size >= scale:
            return f"{format_number(size / scale)} {unit}"
    return str(ngettext("%(num)d octet", "%(num)d octets", size))


def _database_facts() -> dict[str, Any] | None:
    """The database's size, oldest reading and retention, or None without a database (the page still answers)."""
    state = web_state()
    try:
        with state.database.connect() as conn:
            size = history.database_bytes(state.database.engine(), conn)
            oldest = state.database.oldest(conn)
    except (DatabaseError, SQLAlchemyError) as err:
        logger.debug("no database facts on /aide: %s", err)
        return None
    days = state.settings.retention_days
    return {"bytes": size, "size_text": _size_text(size), "oldest": oldest,
            "retention": ngettext("%(num)d jour", "%(num)d jours", days) if days else _("illimitée")}


#: What a live card shows of the past: its light chart (LED and button show their latest value only).
CARD_HISTORY = (Kind.LIGHT,)


def _online_cards() -> tuple[list[queries.DeviceHistory], dict[int, alertviews.DeviceAlerts]]:
    """Online devices in name order (the page inserts newcomers at their place in that order), and their firing
    or clearing alerts."""
    with web_state().database.connect() as conn:
        devices = sorted(queries.list_devices(conn, online=True), key=lambda d: (d.name.lower(), d.id))
        return queries.with_histories(conn, devices, kinds=CARD_HISTORY), alertviews.active_by_device(conn)


def active_alert_count() -> int | None:
    """The navigation's badge: firing and clearing alerts; None without a database (or its alert tables)."""
    try:
        with web_state().database.connect() as conn:
            return alertviews.active_count(conn)
    except (DatabaseError, SQLAlchemyError) as err:
        logger.debug("no alert count for the navigation: %s", err)
        return None


#: Above this many online devices, /capteurs shows a page of them at a time, filtered, sorted and cut in the
#: database (`?q=`, `?presence=`, `?etat=`, `?tri=`, `?limit=`, `?cursor=`); up to it, every card, as always.
PAGED_FLEET = 2_000
#: Cards per page of a paged /capteurs (`?limit=` 1 to MAX_CARDS_PAGE).
CARDS_PAGE = 100
MAX_CARDS_PAGE = 500
#: /capteurs's orders (`?tri=`) and presence filters (`?presence=`) in the database.
CARD_SORTS = {"name": "name", "seen": "seen"}
PRESENCE = {"en-ligne": True, "hors-ligne": False, "tous": None}


class CardPage(NamedTuple):
    """A paged /capteurs: its cards, what it was asked (the form's values), the next page's arguments, the total."""

    cards: list[queries.DeviceHistory]
    alerts: dict[int, alertviews.DeviceAlerts]
    asked: dict[str, str]
    first_args: dict[str, str]
    next_args: dict[str, str] | None
    total: int


def _card_page(online_count: int | None = None) -> CardPage | None:
    """The page of cards the request asks for when /capteurs is paged (more than PAGED_FLEET online devices, or a
    `?limit=`), else None; a BadRequest (400) for a bad limit, order, filter or cursor."""
    args = request.args
    limit_text = args.get("limit")
    if online_count is not None and online_count <= PAGED_FLEET and limit_text is None:
        return None
    limit = CARDS_PAGE if limit_text is None else int(limit_text) if limit_text.isdigit() else 0
    sort = args.get("tri", "name")
    presence = args.get("presence", "en-ligne")
    state = args.get("etat", "")
    problem = ("limit" if not 1 <= limit <= MAX_CARDS_PAGE else "tri" if sort not in CARD_SORTS
               else "presence" if presence not in PRESENCE else "etat" if state and state not in listing.STATES
               else None)
    if problem is not None:
        abort(400, _("paramètre %(name)s invalide", name=problem))
    query = args.get("q", "").strip()[:MAX_QUERY]
    cursor = None
    if args.get("cursor"):
        try:
            cursor = listing.PageCursor.decode(args["cursor"], CARD_SORTS[sort])
        except listing.BadCursor as err:
            abort(400, cursor_problem(err, CARD_SORTS[sort]))
    where = listing.Filter(online=PRESENCE[presence], query=query, by_mac=visitor().sees_private, state=state)
    with web_state().database.connect() as conn:
        devices, found = queries.device_page(conn, sort=CARD_SORTS[sort], where=where, cursor=cursor, limit=limit)
        cards = queries.with_histories(conn, devices, kinds=CARD_HISTORY)
        device_alerts = alertviews.active_by_device(conn, [d.id for d in devices])
    asked = {"q": query, "tri": sort, "presence": presence, "etat": state, "limit": str(limit)}
    if limit_text is None:
        del asked["limit"]
    if cursor is not None:
        asked["cursor"] = args["cursor"]
    first_args = {key: value for key, value in asked.items() if value and key != "cursor"}
    next_args = None if found.next is None else {**first_args, "cursor": found.next.encode()}
    return CardPage(cards, device_alerts, asked, first_args, next_args, found.total or 0)


def _online_count() -> int:
    with web_state().database.connect() as conn:
        return queries.online_count(conn)


@bp.get("/capteurs")
def capteurs() -> str:
    """The devices online now; the page's script keeps it live through MQTT over WebSockets. Above PAGED_FLEET
    online devices, a page of them at a time (filtered, sorted and cut in the database), the cards in view live."""
    settings = web_state().settings
    paged = _card_page(_online_count())
    if paged is None:
        cards, device_alerts = _online_cards()
    else:
        cards, device_alerts = paged.cards, paged.alerts
    return render_template(
        "capteurs.html", page="capteurs", cards=cards, alerts=device_alerts, mqtt_ws_port=settings.mqtt_ws_port,
        mqtt_wss_port=settings.mqtt_wss_port, paged=paged, paged_fleet=PAGED_FLEET,
        # Private mode: the broker's WebSockets guard lets a page in only with a token it got from us.
        live_token=livetoken.issue(current_app.config["SECRET_KEY"]) if settings.web_private else "",
        keepalive=settings.keepalive, vendor_missing=vendor.missing(), max_name=MAX_NAME,
    )


#: Devices per /historique page at most (`?limit=`; 50 by default).
MAX_HISTORY_LIMIT = 200


@bp.get("/historique")
def historique() -> str:
    """Every device, most recently seen first, with its last 10 values of each kind; keyset-paginated (`?limit=`,
    `?cursor=`)."""
    query = request.args.get("q", "").strip()[:MAX_QUERY]
    limit_text = request.args.get("limit", str(queries.PAGE_SIZE))
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_HISTORY_LIMIT:
        abort(400, _("le paramètre limit est un entier de 1 à %(maximum)s", maximum=MAX_HISTORY_LIMIT))
    cursor_text = request.args.get("cursor", "")
    before = None
    try:
        if cursor_text:
            before = listing.PageCursor.decode(cursor_text, "recent")
        elif request.args.get("avant"):  # a link of the page before its opaque cursor
            before = queries.Cursor.decode(request.args["avant"]).page_cursor()
    except ValueError as err:
        abort(400, _("lien de page invalide (%(reason)s) : reprenez à la première page",
                      reason=cursor_problem(err, "recent") if isinstance(err, listing.BadCursor) else err))
    with web_state().database.connect() as conn:
        page = queries.history_page(conn, before=before, query=query, by_mac=visitor().sees_private,
                                    size=int(limit_text))
    return render_template(
        "historique.html", page="historique", result=page, query=query, first_page=before is None,
        max_name=MAX_NAME, limit=None if int(limit_text) == queries.PAGE_SIZE else int(limit_text),
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
        device_alerts = alertviews.active(conn, device_id)
    period = request.args.get("periode", DEFAULT_RANGE)
    return render_template(
        "appareil.html", page="appareil", device=device, sessions=sessions, alerts=device_alerts, ranges=RANGES,
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
    cards, device_alerts = _online_cards()
    return conditional(render_template("_sensor_cards.html", cards=cards, alerts=device_alerts, max_name=MAX_NAME))


@bp.get("/sensor/page")
def page_fragment() -> Response:
    """The cards of one page of a paged /capteurs (the same arguments): its script reconciles its cards with them."""
    paged = _card_page()
    assert paged is not None
    return conditional(render_template("_sensor_cards.html", cards=paged.cards, alerts=paged.alerts,
                                       max_name=MAX_NAME))


@bp.get("/sensor/<id:device_id>")
def sensor_fragment(device_id: int) -> Response:
    """The card of one device, online or not (its `data-online` says which)."""
    with web_state().database.connect() as conn:
        found = queries.device_history(conn, device_id)
        device_alerts = alertviews.active_by_device(conn, [device_id])
    if found is None:
        abort(404)
    return conditional(render_template("_sensor_card.html", card=found, alerts=device_alerts, max_name=MAX_NAME))


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
        device_alerts = alertviews.active_by_device(conn, [device.id])
    return conditional(render_template("_sensor_card.html", card=found, alerts=device_alerts, max_name=MAX_NAME))


def state_labels() -> dict[str, str]:
    """The /alertes page's labels for the states the database stores, in the page's language."""
    return {"firing": _("déclenchée"), "clearing": _("en voie de retour"), "pending": _("en attente"),
            "resolved": _("résolue")}


def severity_labels() -> dict[str, str]:
    """The severities' labels, in the page's language."""
    return {Severity.INFO.value: _("info"), Severity.WARNING.value: _("avertissement"),
            Severity.CRITICAL.value: _("critique")}


def metric_labels() -> dict[str, str]:
    """The metrics' labels in the rule form, in the page's language."""
    return {Metric.LIGHT.value: _("lumière (%)"), Metric.LED.value: _("LED (0 / 1)"),
            Metric.BUTTON.value: _("bouton (0 / 1)"), Metric.PRESENCE.value: _("présence (1 en ligne, 0 hors ligne)"),
            Metric.SILENCE.value: _("silence (secondes sans mesure)")}


def rule_line(rule: Rule) -> str:
    """The rule in one line, as `Rule.describe` writes it (the API's and the command line's), in the page's language."""
    if rule.metric is Metric.SILENCE:
        text = _("silence ≥ %(seconds)s s", seconds=alert_number(rule.trigger))
    else:
        words = {Metric.LIGHT: _("lumière"), Metric.LED: _("LED"), Metric.BUTTON: _("bouton"),
                 Metric.PRESENCE: _("présence")}
        text = f"{words.get(rule.metric, rule.metric.value)} {rule.operator} {alert_number(rule.trigger)}"
        if rule.clear is not None and rule.clear != rule.trigger:
            text += _(", repasse à %(value)s", value=alert_number(rule.clear))
    if rule.for_seconds:
        text += _(", pendant %(seconds)s s", seconds=alert_number(rule.for_seconds))
    if rule.clear_for_seconds:
        text += _(", fin après %(seconds)s s", seconds=alert_number(rule.clear_for_seconds))
    return str(text)


def selector_labels() -> dict[str, str]:
    """Which devices a rule watches, in the rule form, in the page's language."""
    return {"all": _("tous les appareils"), "list": _("liste d'identifiants"), "pattern": _("motif sur le nom")}


@bp.app_context_processor
def _alert_labels() -> dict[str, object]:
    """The alerts' labels, for /alertes and the device page."""
    return {"STATE_LABELS": state_labels(), "SEVERITY_LABELS": severity_labels()}


@bp.app_template_filter("stored_iso")
def _stored_iso(stored: str | None) -> str:
    """A stored UTC time text as ISO 8601 (for <time datetime>), or an empty string."""
    return "" if stored is None else stored_iso(stored)


@bp.app_template_filter("alert_number")
def alert_number(value: float | None) -> str:
    """`12`, `12.5` (a value or threshold as the rules write it), or a dash."""
    if value is None:
        return "—"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


#: The history's pages go this far back (50 alerts each); older ones are in the database (`alert`).
MAX_HISTORY_PAGE = 1000


@bp.get("/alertes")
def alertes() -> str:
    """Active alerts first (acknowledge, snooze), the notification channels' health, the history (`?page=`, 50
    resolved alerts each, the newest first) and the rules."""
    number = request.args.get("page", "1")
    if not number.isdigit() or not 1 <= int(number) <= MAX_HISTORY_PAGE:
        abort(400)
    size = alertviews.HISTORY_LENGTH
    with web_state().database.connect() as conn:
        active = alertviews.active(conn)
        resolved = alertviews.history(conn, size + 1, (int(number) - 1) * size)  # one more: is there a next page?
        channels = alerts.channel_states(conn)
        rules = alerts.load_rules(conn)
    return render_template(
        "alertes.html", page="alertes", active=active, resolved=resolved[:size], history_page=int(number),
        more_history=len(resolved) > size, channels=channels,
        rules=[{**rule_fields(rule), "description": rule_line(rule)} for rule in rules],
        now=format_micros(time.time_ns() // 1000),
        operators=OPERATORS, metrics=metric_labels(), severities=severity_labels(), selectors=selector_labels(),
    )
