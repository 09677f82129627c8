"""What every request of the web app shares: the settings, the read-only database, the engine for alert decisions
and the writable web state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import current_app

from sensorhub.config import Settings
from sensorhub.web.database import DecisionDatabase, ReadOnlyDatabase

if TYPE_CHECKING:
    from sensorhub.web.relay import Relay
    from sensorhub.webstate import LoginSessions, LoginThrottle

EXTENSION = "sensorhub"


@dataclass(frozen=True)
class WebState:
    """The settings the app was built with, its lazily opened database, how it hands commands over, logins, and
    the engine that writes people's alert decisions (None: the app was built without one)."""

    settings: Settings
    database: ReadOnlyDatabase
    relay: Relay
    throttle: LoginThrottle | None = None
    sessions: LoginSessions | None = None
    decisions: DecisionDatabase | None = None


def web_state() -> WebState:
    """The state of the current app."""
    state: WebState = current_app.extensions[EXTENSION]
    return state
