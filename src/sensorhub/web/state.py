"""What every request of the web app shares: the settings, the read-only database and the writable web state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import current_app

from sensorhub.config import Settings
from sensorhub.web.database import ReadOnlyDatabase

if TYPE_CHECKING:
    from sensorhub.web.relay import Relay
    from sensorhub.webstate import LoginSessions, LoginThrottle

EXTENSION = "sensorhub"


@dataclass(frozen=True)
class WebState:
    """The settings the app was built with, its lazily opened database, how it hands commands over, and logins."""

    settings: Settings
    database: ReadOnlyDatabase
    relay: Relay
    throttle: LoginThrottle | None = None
    sessions: LoginSessions | None = None


def web_state() -> WebState:
    """The state of the current app."""
    state: WebState = current_app.extensions[EXTENSION]
    return state
