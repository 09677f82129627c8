"""The `sensorhub` command: run, broker, client, web, db, simulate, user, token, alert, tls, status, service, export.

Each module of this package adds its commands to the group of `base.py`; the logic they call lives in the
modules of sensorhub (docs/code.md), not here.
"""

from __future__ import annotations

import sys

import click

from sensorhub.cli import accounts, alerts, database, lang, machine, programs, tokens
from sensorhub.cli.base import cli
from sensorhub.errors import SensorhubError
from sensorhub.i18n import tr
from sensorhub.process import die_with_parent

__all__ = ["accounts", "alerts", "cli", "database", "lang", "machine", "main", "programs", "tokens"]


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning sensorhub errors into one line and exit status 2."""
    die_with_parent()
    # The help texts and click's messages are translated before the arguments are parsed: from
    # SENSORHUB_CLI_LANGUAGE or the locale (the --cli-language flag only takes effect once parsed).
    lang.apply(command=cli)
    try:
        cli.main(args=argv, prog_name="sensorhub", standalone_mode=False)
    except SensorhubError as err:
        click.echo(tr("sensorhub: error: {message}", message=err.translated()), err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo(tr("Aborted."), err=True)
        sys.exit(1)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
