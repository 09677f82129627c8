"""Readings over time in the JSON API: a device's readings in a range (raw or aggregated) and the CSV exports.

The routes hang on the API blueprint (so `GET /api` lists them); the query parameters are parsed here, every
refusal is a 400 naming the parameter. Times are ISO 8601 in UTC on output; any offset is accepted on input.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Response, jsonify, request
from flask_babel import gettext as _

from sensorhub.db import history, queries
from sensorhub.protocol import Kind
from sensorhub.web.api import ApiError, bp
from sensorhub.web.present import iso
from sensorhub.web.state import web_state

logger = logging.getLogger(__name__)

DEFAULT_SPAN = timedelta(hours=24)
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9999, 1, 1, tzinfo=UTC)
# A "+01:00" offset sent unencoded in a query string arrives as " 01:00".
_SPACE_OFFSET = re.compile(r" (\d\d(?::?\d\d)?)$")
_KINDS = ", ".join(kind.value for kind in Kind)


def parse_time(name: str, text: str) -> datetime:
    """An aware datetime from ISO 8601 text (no offset: UTC); ApiError naming `name` otherwise."""
    cleaned = _SPACE_OFFSET.sub(r"+\1", text.strip())
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        raise ApiError(_("paramètre %(name)s : date et heure ISO 8601 attendues, par exemple "
                         "2026-11-29T08:00:00+01:00 ou 2026-11-29T07:00:00Z", name=name), parameter=name) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    if not _EARLIEST <= moment < _LATEST:
        raise ApiError(_("paramètre %(name)s : date hors de la plage 1970–9998", name=name), parameter=name)
    return moment


def time_range() -> tuple[datetime, datetime]:
    """`from` and `to` of the request: by default the last 24 hours; `from` must come before `to`."""
    to_text, from_text = request.args.get("to"), request.args.get("from")
    end = parse_time("to", to_text) if to_text else datetime.now(UTC)
    start = parse_time("from", from_text) if from_text else end - DEFAULT_SPAN
    if start >= end:
        raise ApiError(_("paramètre from : le début doit précéder la fin (to)"), parameter="from")
    return start, end


def kind_arg(default: Kind | None = Kind.LIGHT) -> Kind | None:
    """`kind` of the request (light, led or button)."""
    text = request.args.get("kind")
    if text is None or text == "":
        return default
    try:
        return Kind(text)
    except ValueError:
        raise ApiError(_("paramètre kind : %(kinds)s", kinds=_KINDS), parameter="kind") from None


def bucket_arg() -> str:
    """`bucket` of the request: raw, 1m, 1h or auto (the default)."""
    text = request.args.get("bucket") or "auto"
    if text not in (*history.BUCKETS, "auto"):
        raise ApiError(_("paramètre bucket : raw, 1m, 1h ou auto"), parameter="bucket")
    return text


def device_arg() -> int | None:
    """`device` of the request: a device id."""
    text = request.args.get("device")
    if text is None or text == "":
        return None
    if not text.isdigit() or not 1 <= int(text) < 2**63:
        raise ApiError(_("paramètre device : identifiant d'appareil (nombre entier positif)"), parameter="device")
    return int(text)


def _existing(device_id: int) -> None:
    with web_state().database.connect() as conn:
        if queries.device_name(conn, device_id) is None:
            raise ApiError(_("aucun appareil n'a l'identifiant %(id)s", id=device_id), 404)


def series_json(found: history.Series) -> dict[str, Any]:
    """A series as the API answers it."""
    stateful = found.kind is not Kind.LIGHT
    points: list[dict[str, Any]] = []
    for point in found.points:
        if isinstance(point, history.RawPoint):
            points.append({"at": iso(point.at), "value": point.value})
        else:
            avg = point.avg
            item: dict[str, Any] = {"at": iso(point.at), "count": point.count, "min": point.low,
                                    "avg": None if avg is None else round(avg, 3), "max": point.high}
            if stateful:
                item["on_seconds"] = point.on_us / 1e6  # exact to the microsecond
            points.append(item)
    before = found.before
    return {
        "device": found.device_id, "kind": found.kind.value, "from": iso(found.start), "to": iso(found.end),
        "bucket": found.bucket, "points": points,
        "previous": None if before is None else {"at": iso(before.at), "value": before.value},
    }


@bp.get("/devices/<id:device_id>/readings")
def readings(device_id: int) -> Response:
    """A device's readings of one kind over a range (`kind`, `from`, `to`, `bucket=raw|1m|1h|auto`)."""
    kind = kind_arg()
    assert kind is not None
    start, end = time_range()
    bucket = bucket_arg()
    _existing(device_id)
    with web_state().database.connect() as conn:
        try:
            found = history.series(conn, device_id, kind, start, end, bucket)
        except history.TooManyPoints:
            raise ApiError(_("paramètre bucket : plus de %(limit)s mesures brutes sur cette période ; "
                             "choisissez bucket=1m, 1h ou auto, ou le CSV", limit=history.RAW_LIMIT),
                           parameter="bucket") from None
    return jsonify(series_json(found))


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _csv_answer(filename: str, start: datetime, end: datetime, kinds: Sequence[Kind],
                device_ids: Sequence[int] | None) -> Response:
    database = web_state().database

    def generate() -> Iterator[str]:
        # One read transaction for the whole file: a consistent snapshot, however long the download.
        with database.connect() as conn:
            yield from history.export_csv(conn, start, end, kinds, device_ids)

    response = Response(generate(), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/devices/<id:device_id>/readings.csv")
def readings_csv(device_id: int) -> Response:
    """The same readings as raw CSV rows (`kind`, `from`, `to`), streamed as a download."""
    kind = kind_arg()
    assert kind is not None
    start, end = time_range()
    bucket_arg()  # accepted for symmetry with the JSON route; the CSV always holds raw rows
    _existing(device_id)
    name = f"sensorhub-appareil{device_id}-{kind.value}-{_stamp(start)}-{_stamp(end)}.csv"
    return _csv_answer(name, start, end, [kind], [device_id])


@bp.get("/export.csv")
def export_csv() -> Response:
    """Every raw reading of the fleet in a range as CSV (`from`, `to`, optional `kind`, `device`), streamed."""
    kind = kind_arg(default=None)
    start, end = time_range()
    device_id = device_arg()
    bucket_arg()  # as for the device's CSV: accepted, always raw rows
    if device_id is not None:
        _existing(device_id)
    kinds = list(Kind) if kind is None else [kind]
    parts = ["sensorhub", *([f"appareil{device_id}"] if device_id else []), *([kind.value] if kind else []),
             _stamp(start), _stamp(end)]
    logger.info("CSV export %s to %s (kind %s, device %s) for %s", iso(start), iso(end),
                kind.value if kind else "all", device_id or "all", request.remote_addr)
    return _csv_answer("-".join(parts) + ".csv", start, end, kinds, None if device_id is None else [device_id])
