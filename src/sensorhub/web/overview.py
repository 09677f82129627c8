"""How the fleet is doing, for `/accueil` and `GET /api/overview`: one gathering, two renderings; and the health
checks `/healthz` shares with them."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from sensorhub import health
from sensorhub.config import Settings
from sensorhub.db import alertviews, history, overview
from sensorhub.errors import DatabaseError
from sensorhub.web.database import DatabaseMissing
from sensorhub.web.present import iso, stored_iso
from sensorhub.web.state import web_state

logger = logging.getLogger(__name__)

#: How many active alerts the overview lists (the rest are on /alertes).
ALERT_LIST_LENGTH = 10
#: The worst devices first: by their most severe alarming alert.
SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}


def current_health(settings: Settings) -> health.Health:
    """The checks of sensorhub.health, with the web server's read-only database."""

    def ping() -> None:
        try:
            with web_state().database.connect() as conn:
                conn.exec_driver_sql("SELECT 1 FROM device LIMIT 1").all()
        except DatabaseMissing:  # its message is for the pages, in their language
            raise DatabaseError("no database yet: create it with `make db` (sensorhub db init)") from None

    return health.check(settings, ping)


def _database_part(now: datetime, silent_seconds: int, private: bool) -> dict[str, Any] | None:
    """Everything read from the database, or None without one (or with an unreadable one)."""
    state = web_state()
    try:
        with state.database.connect() as conn:
            counts = overview.presence(conn, now, silent_seconds)
            minutes = overview.traffic(conn, now)
            events = overview.joins_and_leaves(conn) if private else []
            silent = overview.silent_devices(conn, now, silent_seconds)
            size = history.database_bytes(state.database.engine(), conn)
            first = state.database.oldest(conn)
            try:
                alarming = alertviews.active_count(conn)
                active = alertviews.active(conn)
                by_device = alertviews.active_by_device(conn)
            except SQLAlchemyError as err:  # a database older than the alert tables
                logger.debug("no alerts on the overview: %s", err)
                alarming, active, by_device = 0, [], {}
    except (DatabaseError, SQLAlchemyError) as err:
        logger.debug("no database on the overview: %s", err)
        return None
    complete = minutes[-2].count if len(minutes) > 1 else 0  # the last whole minute
    worst = sorted(by_device.items(), key=lambda item: (SEVERITY_RANK.get(item[1].severity, len(SEVERITY_RANK)),
                                                        -item[1].count, item[0]))[:overview.LIST_LENGTH]
    names = {row.device_id: row.device_name for row in active}

    def device(device_id: int, name: str, mac: str) -> dict[str, Any]:
        found: dict[str, Any] = {"id": device_id, "name": name}
        if private:
            found["mac"] = mac
        return found

    return {
        "devices": {"online": counts.online, "offline": counts.offline, "silent": counts.silent,
                    "total": counts.online + counts.offline},
        "readings_per_second": round(complete / 60, 2),
        "readings_per_minute": [{"start": iso(m.start), "count": m.count} for m in minutes],
        "db_bytes": size,
        "oldest": None if first is None else iso(first),
        # Session times are private like MACs (docs/security.md: an old session id was the time it started).
        "events": [{"event": e.kind, "at": iso(e.at), "device": device(e.device_id, e.name, e.mac)}
                   for e in events] if private else None,
        "silent_devices": [{**device(s.device_id, s.name, s.mac), "last_seen": iso(s.last_seen)} for s in silent],
        "alerts": {
            "active": alarming,
            "list": [{"id": a.id, "state": a.state, "severity": a.severity, "rule": a.rule_name,
                      "device": {"id": a.device_id, "name": a.device_name}, "since": stored_iso(a.since)}
                     for a in active[:ALERT_LIST_LENGTH]],
            "devices": [{"id": device_id, "name": names.get(device_id, str(device_id)), "count": found.count,
                         "severity": found.severity} for device_id, found in worst],
        },
    }


def gather(private: bool, now: datetime | None = None) -> dict[str, Any]:
    """The overview: the database's part (None without one), the silence setting and the health checks (which
    fail, never their details: they name hosts and ports)."""
    settings = web_state().settings
    now = datetime.now(UTC) if now is None else now
    found = current_health(settings).as_json(details=False)
    return {"at": iso(now), "silent_seconds": settings.silent_seconds,
            "health": {"status": found["status"], "checks": {name: check["ok"] for name, check in
                                                              found["checks"].items()}},
            "database": _database_part(now, settings.silent_seconds, private)}
