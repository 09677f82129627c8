"""`sensorhub db ...` and `sensorhub export`: the database's schema, backups, reset and CSV export."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from sensorhub.cli.base import cli, pass_settings
from sensorhub.config import Settings
from sensorhub.i18n import tr


@cli.group()
def db() -> None:
    """Create, fill or reset the database."""


@db.command("init")
@pass_settings
def db_init(settings: Settings) -> None:
    """Create the database and its schema (idempotent)."""
    from sensorhub.db.engine import make_engine
    from sensorhub.db.schema import display_url, init_db

    engine = make_engine(settings.database_url, create_dir=True)
    init_db(engine)
    click.echo(tr("database ready: {url}", url=display_url(settings.database_url)))


@db.command("seed")
@click.option("--devices", type=click.IntRange(1, 1000), default=4, show_default=True)
@pass_settings
def db_seed(settings: Settings, devices: int) -> None:
    """Add plausible dummy devices and readings."""
    from sensorhub.db.engine import make_engine
    from sensorhub.db.schema import check_schema
    from sensorhub.db.seed import seed

    engine = make_engine(settings.database_url)
    check_schema(engine)
    added = seed(engine, devices=devices)
    click.echo(tr("added {count} demo devices with a day of readings", count=added))


@db.command("upgrade")
@pass_settings
def db_upgrade(settings: Settings) -> None:
    """Bring the database's schema to this version of sensorhub (migrations; keeps every row)."""
    from sensorhub.db.schema import upgrade

    before, after = upgrade(settings.database_url)
    if before == after:
        click.echo(tr("database at schema {after}", after=after))
    elif before:
        click.echo(tr("database at schema {after} (was {before})", after=after, before=before))
    else:
        click.echo(tr("database at schema {after} (was empty)", after=after))


@db.command("backup")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@pass_settings
def db_backup(settings: Settings, file: Path, force: bool) -> None:
    """Copy the database to FILE, consistently, even while the ingest client writes (SQLite's online backup)."""
    from sensorhub.db.backup import backup
    from sensorhub.db.schema import check_schema

    check_schema(settings.database_url)
    result = backup(settings.database_url, file, overwrite=force)
    click.echo(tr("backup written to {path} ({size:,} bytes in {seconds:.1f} s, integrity ok)", path=result.path,
                  size=result.size, seconds=result.seconds))


@db.command("reset")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_settings
def db_reset(settings: Settings, yes: bool) -> None:
    """Delete every device and reading, then recreate an empty schema (web accounts are kept)."""
    from sensorhub.db.schema import display_url, reset

    if not yes:
        click.confirm(tr("Delete ALL devices and readings in {url}?", url=display_url(settings.database_url)),
                      abort=True)
    kept = reset(settings.database_url)
    click.echo(tr("database reset ({count} web account(s) kept)", count=kept))


def _moment(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(tr("{value!r} is not an ISO 8601 date and time (2026-11-29T08:00:00+01:00)",
                                    value=value), param_hint=option) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@cli.command()
@click.option("--from", "start_text", metavar="TIME", help="ISO 8601, any offset (no offset: UTC) [default: 24 h "
              "before --to].")
@click.option("--to", "end_text", metavar="TIME", help="ISO 8601, excluded [default: now].")
@click.option("--device", type=click.IntRange(1), default=None, help="Only this device id.")
@click.option("--kind", type=click.Choice(["light", "led", "button"]), default=None, help="Only this kind.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to FILE [default: standard output].")
@pass_settings
def export(settings: Settings, start_text: str | None, end_text: str | None, device: int | None, kind: str | None,
           output: Path | None) -> None:
    """Export raw readings as CSV (at,device_id,device_name,kind,value), as GET /api/export.csv does."""
    from sensorhub.db import history
    from sensorhub.db.engine import make_engine
    from sensorhub.db.schema import check_schema
    from sensorhub.errors import UnknownDevice
    from sensorhub.protocol import Kind

    end = _moment(end_text, "--to") or datetime.now(UTC)
    start = _moment(start_text, "--from") or end - timedelta(hours=24)
    if start >= end:
        raise click.BadParameter(tr("must come before --to"), param_hint="--from")
    check_schema(settings.database_url)
    engine = make_engine(settings.database_url, read_only=True)
    kinds = list(Kind) if kind is None else [Kind(kind)]
    out = sys.stdout if output is None else output.open("w", newline="", encoding="utf-8")
    try:
        with engine.connect() as conn:
            rows = history.write_export(conn, out, start, end, kinds, device)
    except UnknownDevice as err:
        raise click.BadParameter(err.translated(), param_hint="--device") from None
    finally:
        if output is not None:
            out.close()
        engine.dispose()
    if output is not None:
        click.echo(tr("{count:,} readings written to {path}", count=rows, path=output), err=True)
