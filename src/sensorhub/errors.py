"""Exceptions: one base class, one subclass per kind of failure a user can act on."""

from __future__ import annotations


class SensorhubError(Exception):
    """Base class; the CLI prints the message as one line and exits with status 2.

    The message may be a template with `str.format` placeholders and their values as keywords
    (`AccountError(N_("no account is called {name!r}"), name=name)`): `str(err)` is the English text, and
    `translated()` the text in the command line's language (sensorhub.i18n), the template being a msgid.
    """

    def __init__(self, message: str = "", /, *args: object, **params: object) -> None:
        self._english = message.format(**params) if params and isinstance(message, str) else message
        super().__init__(self._english, *args)
        self.template = message
        self.params = params

    def translated(self) -> str:
        """The message in the current language of sensorhub.i18n (English when the catalog lacks it)."""
        from sensorhub.i18n import tr

        if not isinstance(self.template, str) or not self.template or not self.args \
                or self.args[0] is not self._english:
            return str(self)  # not a template, or its args were rewritten since it was made
        return tr(self.template, **self.params)


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

    def __init__(self, message: str, reason: str = "invalid", **params: object) -> None:
        super().__init__(message, **params)
        self.reason = reason


def reason(err: BaseException) -> str:
    """The first line of what went wrong: the database driver's own message when SQLAlchemy wraps one."""
    orig = getattr(err, "orig", None)
    return (str(orig if orig is not None else err) or type(err).__name__).splitlines()[0]


class AlertError(SensorhubError):
    """An alert rule or an alert cannot be changed as asked (a refused rule, an unknown id, a resolved alert)."""
