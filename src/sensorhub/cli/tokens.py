"""`sensorhub token ...`: bearer tokens for scripts using the API."""

from __future__ import annotations

import click

from sensorhub.cli.accounts import accounts_engine
from sensorhub.cli.base import cli, pass_settings
from sensorhub.config import Settings
from sensorhub.i18n import tr


@cli.group()
def token() -> None:
    """API tokens: `Authorization: Bearer <token>` on every API route, without cookie nor CSRF token."""


@token.command("add")
@click.argument("name")
@click.option("--read-only", is_flag=True, help="Reads only: no LED switch, rename nor alert change.")
@pass_settings
def token_add(settings: Settings, name: str, read_only: bool) -> None:
    """Make the token NAME and print it, once (only its digest is kept)."""
    from sensorhub import tokens

    secret = tokens.add(accounts_engine(settings), name, read_only)
    if read_only:
        click.echo(tr("token {name} added (read-only); it is shown this once, keep it now:", name=name), err=True)
    else:
        click.echo(tr("token {name} added; it is shown this once, keep it now:", name=name), err=True)
    click.echo(secret)


@token.command("list")
@pass_settings
def token_list(settings: Settings) -> None:
    """List the tokens (their first characters, never the whole token)."""
    from sensorhub import tokens

    found = tokens.list_tokens(accounts_engine(settings))
    if not found:
        click.echo(tr("no token (`sensorhub token add NAME`)"))
    for item in found:
        access = tr("read-only") if item.read_only else tr("read-write")
        click.echo(tr("{name}\t{prefix}…\t{access}\tcreated {created:%Y-%m-%d %H:%M} UTC", name=item.name,
                      prefix=item.prefix, access=access, created=item.created_at))


@token.command("revoke")
@click.argument("name")
@pass_settings
def token_revoke(settings: Settings, name: str) -> None:
    """Delete the token NAME: requests carrying it are refused from now on."""
    from sensorhub import tokens

    tokens.revoke(accounts_engine(settings), name)
    click.echo(tr("token {name} revoked", name=name))
