"""What every request of the web app shares: the settings and the read-only database."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import current_app

from sensorhub.config import Settings
from sensorhub.web.database import ReadOnlyDatabase

if TYPE_CHECKING:
    from sensorhub.web.auth import LoginThrottle
    from sensorhub.web.relay import Relay

EXTENSION = "sensorhub"


@dataclass(frozen=True)
class WebState:
    """The settings the app was built with, its lazily opened database and how it hands commands over."""

    settings: Settings
    database: ReadOnlyDatabase
    relay: Relay
    throttle: LoginThrottle | None = None


def web_state() -> WebState:
    """The state of the current app."""
    state: WebState = current_app.extensions[EXTENSION]
    return state
