"""How values look on the pages (labels in the request's language, UTC text) and in the JSON API."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from flask import Flask
from flask_babel import gettext as _

from sensorhub.db.queries import DeviceHistory, DeviceRow, Value
from sensorhub.protocol import Kind
from sensorhub.web.i18n import language


def utc_text(moment: datetime) -> str:
    """`2025-04-06 13:39:37 UTC`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def utc_pair(moment: datetime) -> tuple[str, str]:
    """ISO-8601 and `2025-04-06 13:39:37.603 UTC` from one formatting (/historique shows thousands)."""
    text = iso(moment)
    return text, f"{text[:10]} {text[11:23]} UTC"


#: The label of every possible value of each kind, by language: looked up rather than computed for each value
#: shown (/historique shows thousands), made from the catalog once per language.
_VALUE_LABELS: dict[str, dict[Kind, list[str]]] = {}
_KIND_TITLES: dict[str, dict[Kind, str]] = {}


def value_labels() -> dict[Kind, list[str]]:
    """The label of every possible value of each kind, in the current request's language."""
    found = _VALUE_LABELS.get(language())
    if found is None:
        found = _VALUE_LABELS[language()] = {
            Kind.LED: [_("éteinte"), _("allumée")],
            Kind.BUTTON: [_("relâché"), _("appuyé")],
            Kind.LIGHT: [_("%(value)s %%", value=percent) for percent in range(101)],
        }
    return found


_CARD_LABELS: dict[str, dict[str, Any]] = {}


def card_labels() -> dict[str, Any]:
    """What every card says, in the current request's language, made once per language: a /capteurs fragment
    holds up to thousands of cards (`…_named`: `%(name)s` left for the template's `%`)."""
    found = _CARD_LABELS.get(language())
    if found is None:
        values = value_labels()
        found = _CARD_LABELS[language()] = {
            "rename": _("Renommer"), "rename_named": _("Renommer %(name)s"),
            "curves": _("Courbes, export et sessions"), "led_named": _("Allumer ou éteindre la LED de %(name)s"),
            "sending": _("envoi…"), "login": _("Se connecter"), "button": _("Bouton"), "light": _("Lumière"),
            "light_named": _("Lumière de %(name)s : 10 dernières mesures (%%)"),
            "led_values": values[Kind.LED], "led_unknown": _("inconnue"), "button_values": values[Kind.BUTTON],
            "light_values": values[Kind.LIGHT],
        }
    return found


def kind_titles() -> dict[Kind, str]:
    """Each kind's title on the pages, in the current request's language."""
    found = _KIND_TITLES.get(language())
    if found is None:
        found = _KIND_TITLES[language()] = {Kind.LED: _("LED"), Kind.BUTTON: _("Bouton poussoir"),
                                            Kind.LIGHT: _("Photorésistance")}
    return found


def iso(moment: datetime) -> str:
    """ISO-8601 in UTC with its offset, as the API gives every timestamp."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def led_label(value: int | None) -> str:
    """allumée / éteinte / inconnue."""
    return _("inconnue") if value is None else value_labels()[Kind.LED][value]


def button_label(value: int | None) -> str:
    """appuyé / relâché (a button nobody pressed yet is released)."""
    return value_labels()[Kind.BUTTON][value or 0]


def light_label(value: int | None) -> str:
    """`58 %`, or a dash when nothing was measured yet."""
    return "—" if value is None else value_labels()[Kind.LIGHT][value]


#: What anonymous visitors do not see once accounts exist: enough to hijack a board's name and session.
PRIVATE_FIELDS = ("mac", "session_id")


def device_json(device: DeviceRow, private: bool = True) -> dict[str, Any]:
    """A device as the API gives it; without `private`, no MAC address nor session id."""
    body = {
        "id": device.id,
        "name": device.name,
        "session_name": device.session_name,
        "mac": device.mac,
        "online": device.online,
        "session_id": device.session_id,
        "joined_at": iso(device.joined_at),
        "last_seen": iso(device.last_seen),
        "led": device.led,
        "button": device.button,
        "light": device.light,
    }
    if not private:
        for key in PRIVATE_FIELDS:
            del body[key]
    return body


def stored_iso(stored: str) -> str:
    """`iso` of a stored UTC time text (`2025-04-06 13:39:37.603000` -> `2025-04-06T13:39:37.603000+00:00`),
    without parsing it: the stored form is fixed-width UTC (checked by the database); `device_records_json`
    writes the same inline."""
    return f"{stored[:10]}T{stored[11:26]}+00:00"


def device_records_json(rows: Sequence[Sequence[Any]], private: bool = True) -> list[dict[str, Any]]:
    """Rows of `queries.device_records` as `device_json` gives each device (the same keys, order and text)."""
    if private:
        return [{"id": id_, "name": name, "session_name": session_name, "mac": mac, "online": bool(online),
                 "session_id": session_id, "joined_at": f"{joined[:10]}T{joined[11:26]}+00:00",
                 "last_seen": f"{seen[:10]}T{seen[11:26]}+00:00", "led": led, "button": button, "light": light}
                for id_, name, session_name, mac, online, session_id, joined, seen, led, button, light in rows]
    return [{"id": id_, "name": name, "session_name": session_name, "online": bool(online),
             "joined_at": f"{joined[:10]}T{joined[11:26]}+00:00", "last_seen": f"{seen[:10]}T{seen[11:26]}+00:00",
             "led": led, "button": button, "light": light}
            for id_, name, session_name, _mac, online, _session, joined, seen, led, button, light in rows]


def values_json(values: list[Value]) -> list[dict[str, Any]]:
    """Readings as `{"at": ISO-8601, "value": n}`, in the given order."""
    return [{"at": iso(v.at), "value": v.value} for v in values]


def device_history_json(found: DeviceHistory, private: bool = True) -> dict[str, Any]:
    """A device with `history`: the last values of each kind, newest first."""
    body = device_json(found.device, private)
    body["history"] = {kind.value: values_json(found.history.get(kind, [])) for kind in Kind}
    return body


def chart_points(values: list[Value]) -> list[dict[str, Any]]:
    """Light readings oldest first, for the chart's initial data."""
    return values_json(list(reversed(values)))


def register_filters(app: Flask) -> None:
    """Make the helpers above available in the templates."""
    app.jinja_env.filters.update(
        utc=utc_text, utc_pair=utc_pair, iso=iso, led_label=led_label, button_label=button_label,
        light_label=light_label, chart_points=chart_points,
    )
    app.jinja_env.globals.update(Kind=Kind, kind_titles=kind_titles, value_labels=value_labels,
                                 card_labels=card_labels)
