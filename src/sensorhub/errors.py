"""Exceptions: one base class, one subclass per kind of failure a user can act on."""

from __future__ import annotations


class SensorhubError(Exception):
    """Base class; the CLI prints the message as one line and exits with status 2."""


class ConfigError(SensorhubError):
    """A setting has an invalid value."""


class DatabaseError(SensorhubError):
    """The database cannot be created, opened or written."""


class BrokerError(SensorhubError):
    """Mosquitto is missing, or cannot start (busy port, unreadable configuration...)."""


class CommandError(SensorhubError):
    """A command of the web server (LED, rename) cannot be handed to the ingest workers."""


class PipeError(CommandError):
    """The LED command pipe cannot be created or used."""


class ClientNotRunning(PipeError):
    """No ingest client takes the commands: nobody reads the pipe, or nobody subscribes to the command topic."""


class BrokerRelayError(CommandError):
    """The broker cannot take a command of the web server (out of reach, refused its password)."""


class NoReply(CommandError):
    """The broker took a command of the web server, and no ingest worker answered in time (it expires unexecuted)."""


class IngestError(SensorhubError):
    """The ingest client cannot go on (refused by the broker, a component of it stopped)."""


class UnknownDevice(SensorhubError, LookupError):
    """No device has the id asked for."""


class PayloadError(SensorhubError, ValueError):
    """An MQTT payload or pipe command does not follow the protocol; `reason` is a short counter key."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


def reason(err: BaseException) -> str:
    """The first line of what went wrong: the database driver's own message when SQLAlchemy wraps one."""
    orig = getattr(err, "orig", None)
    return (str(orig if orig is not None else err) or type(err).__name__).splitlines()[0]


class AlertError(SensorhubError):
    """An alert rule or an alert cannot be changed as asked (a refused rule, an unknown id, a resolved alert)."""
