"""`sensorhub user ...`: the web accounts."""

from __future__ import annotations

import sys
from typing import Any

import click

from sensorhub.cli.base import cli, pass_settings
from sensorhub.config import Settings
from sensorhub.errors import SensorhubError
from sensorhub.i18n import N_, tr


@cli.group()
def user() -> None:
    """Web accounts: with at least one, the LED and rename controls need a login."""


def accounts_engine(settings: Settings) -> Any:
    """The sensor database's engine, once its schema is checked (accounts and tokens live there)."""
    from sensorhub.db.engine import make_engine
    from sensorhub.db.schema import check_schema

    check_schema(settings.database_url)
    return make_engine(settings.database_url)


def _new_password(name: str, from_stdin: bool) -> str:
    """The new password: one line of standard input (`--password-stdin`), or asked twice without echo."""
    from sensorhub.accounts import check_password

    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise click.UsageError(tr("--password-stdin: nothing on standard input (give the password on one line)"))
        return check_password(line.rstrip("\r\n"))
    password: str = click.prompt(tr("Password for {name}", name=name), hide_input=True, confirmation_prompt=True,
                                 err=True)
    return check_password(password)


_PASSWORD_STDIN = click.option("--password-stdin", "password_stdin", is_flag=True,
                               help="Read the password from the first line of standard input (scripts; no prompt).")


@user.command("add")
@click.argument("name")
@_PASSWORD_STDIN
@pass_settings
def user_add(settings: Settings, name: str, password_stdin: bool) -> None:
    """Create the account NAME (asks for its password twice, or reads it with --password-stdin)."""
    from sensorhub import accounts

    accounts.check_name(name)
    engine = accounts_engine(settings)
    if name in {account.name for account in accounts.list_accounts(engine)}:
        raise accounts.AccountError(N_("account {name!r} already exists (change its password with "
                                       "`sensorhub user passwd {name}`)"), name=name)
    accounts.add(engine, name, _new_password(name, password_stdin))
    click.echo(tr("account {name} added: the LED and rename controls now need a login", name=name))


@user.command("passwd")
@click.argument("name")
@_PASSWORD_STDIN
@pass_settings
def user_passwd(settings: Settings, name: str, password_stdin: bool) -> None:
    """Change the password of NAME (its open sessions end); --password-stdin reads it from standard input."""
    from sensorhub import accounts

    engine = accounts_engine(settings)
    if name not in {account.name for account in accounts.list_accounts(engine)}:
        raise accounts.AccountError(N_("no account is called {name!r} (`sensorhub user list`)"), name=name)
    accounts.set_password(engine, name, _new_password(name, password_stdin))
    click.echo(tr("password of {name} changed; {sessions}", name=name, sessions=_end_sessions(settings, name)))


@user.command("remove")
@click.argument("name")
@pass_settings
def user_remove(settings: Settings, name: str) -> None:
    """Delete the account NAME (its open sessions end)."""
    from sensorhub import accounts

    engine = accounts_engine(settings)
    accounts.remove(engine, name)
    left = len(accounts.list_accounts(engine))
    sessions = _end_sessions(settings, name)
    if left:
        click.echo(tr("account {name} removed; {sessions}", name=name, sessions=sessions))
    else:
        click.echo(tr("account {name} removed; {sessions}; no account left: the controls are open to everyone",
                      name=name, sessions=sessions))


def _end_sessions(settings: Settings, name: str) -> str:
    """Delete the account's login sessions from the web state: what happened, for the user."""
    from sqlalchemy.exc import SQLAlchemyError

    from sensorhub.webstate import end_account_sessions

    try:
        ended = end_account_sessions(settings, name)
    except (SQLAlchemyError, SensorhubError, OSError) as err:
        # The sessions still end: each one remembers the password it was opened with (the sensor database's word).
        click.echo(tr("sensorhub: warning: cannot reach the web state to delete the login sessions of {name} "
                      "({reason}); they are refused anyway", name=name, reason=str(err).splitlines()[0]), err=True)
        return tr("its login sessions are refused")
    return tr("{count} login session(s) ended", count=ended)


@user.command("list")
@pass_settings
def user_list(settings: Settings) -> None:
    """List the accounts."""
    from sensorhub import accounts

    found = accounts.list_accounts(accounts_engine(settings))
    if not found:
        click.echo(tr("no account: the LED and rename controls are open to everyone (`sensorhub user add NAME`)"))
    for account in found:
        click.echo(tr("{name}\tcreated {created:%Y-%m-%d %H:%M} UTC\tpassword changed {changed:%Y-%m-%d %H:%M} UTC",
                      name=account.name, created=account.created_at, changed=account.changed_at))
