"""The `sensorhub` command: run, broker, client, web, db, simulate."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from sensorhub.config import SETTINGS, Settings
from sensorhub.errors import SensorhubError
from sensorhub.process import die_with_parent, notify

logger = logging.getLogger(__name__)


def _settings_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add one CLI flag per row of the settings table."""
    for spec in reversed(SETTINGS):
        command = click.option(
            spec.flag, spec.name, default=None, metavar="VALUE",
            help=f"{spec.help} [env {spec.env}; default {spec.default or '(empty)'}]",
        )(command)
    return command


def configure_logging(settings: Settings) -> None:
    """Send log records to stderr at the configured level (only the CLI configures handlers)."""
    from sensorhub.logs import formatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(settings.log_format))
    logging.basicConfig(level=settings.log_level_number, handlers=[handler], force=True)
    # Alembic announces each of its plugins at INFO; its "Running upgrade" lines stay.
    logging.getLogger("alembic.runtime.plugins").setLevel(max(logging.WARNING, settings.log_level_number))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@_settings_options
@click.version_option(package_name="sensorhub")
@click.pass_context
def cli(ctx: click.Context, /, **overrides: str | None) -> None:
    """sensorhub: the server side of a network of ESP32 sensor boards.

    Every setting comes from its SENSORHUB_* environment variable or the flag of the same name.
    """
    settings = Settings.load(overrides=overrides)
    configure_logging(settings)
    ctx.obj = settings


pass_settings = click.make_pass_decorator(Settings)


@cli.command()
@pass_settings
def broker(settings: Settings) -> None:
    """Run the Mosquitto broker with the project's configuration (foreground)."""
    from sensorhub.broker import Broker

    broker = Broker(settings)
    # This process stays beside mosquitto: it runs the guard of the WebSockets port (sensorhub.wsguard), which
    # applies max_packet_size there, and says READY=1 once both are up.
    # SIGTERM (from `sensorhub run`, systemd, kill) stops mosquitto too, as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with broker as running:
        notify("READY=1")
        click.echo(f"broker running (config {running.config_path}); Ctrl-C stops it", err=True)
        try:
            status = running.wait()
        except KeyboardInterrupt:
            status = 0
    sys.exit(status)


@cli.command()
@pass_settings
def client(settings: Settings) -> None:
    """Run the ingest client: records readings, assigns names and sessions, relays LED commands."""
    from sensorhub.ingest.service import run_client

    run_client(settings)


@cli.command()
@click.option("--devices", "-n", type=click.IntRange(1, 100_000), default=3, show_default=True)
@click.option("--interval", "-i", type=click.FloatRange(0.001, 3600), default=2.0, show_default=True,
              help="Seconds between light readings.")
@click.option("--mqtt-version", type=click.Choice(["5", "3.1.1"]), default="5", show_default=True)
@click.option("--seed", type=int, default=None, help="Random seed (MAC addresses are stable per seed).")
@pass_settings
def simulate(settings: Settings, devices: int, interval: float, mqtt_version: str, seed: int | None) -> None:
    """Run virtual ESP32s that speak the device side of the protocol."""
    from sensorhub.simulator import run_simulator

    run_simulator(settings, devices=devices, interval=interval, mqtt_version=mqtt_version, seed=seed)


@cli.command()
@click.option("--debug", is_flag=True, help="Flask's debug server on localhost:5000 instead of gunicorn.")
@click.option("--workers", type=click.IntRange(1, 32), default=None, help="gunicorn worker processes.")
@pass_settings
def web(settings: Settings, debug: bool, workers: int | None) -> None:
    """Run the web server (gunicorn on SENSORHUB_WEB_HOST:SENSORHUB_WEB_PORT, restarted if it dies)."""
    if debug:
        from sensorhub.web.serve import serve

        serve(settings, debug=True)
        return
    from sensorhub.webserver import run_web

    sys.exit(run_web(settings, workers))


@cli.command()
@click.option("--demo", type=click.IntRange(0, 1000), default=0, metavar="N",
              help="Also start N virtual devices.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, metavar="N",
              help="Ingest workers (client1..N) sharing the readings through MQTT 5 shared subscriptions.")
@pass_settings
def run(settings: Settings, demo: int, workers: int) -> None:
    """Run everything: broker, ingest client and web server, in order; Ctrl-C stops all."""
    from sensorhub.supervisor import run_all

    sys.exit(run_all(settings, demo=demo, workers=workers))


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
    click.echo(f"database ready: {display_url(settings.database_url)}")


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
    click.echo(f"added {added} demo devices with a day of readings")


@db.command("upgrade")
@pass_settings
def db_upgrade(settings: Settings) -> None:
    """Bring the database's schema to this version of sensorhub (migrations; keeps every row)."""
    from sensorhub.db.schema import upgrade

    before, after = upgrade(settings.database_url)
    click.echo(f"database at schema {after}" + (f" (was {before or 'empty'})" if before != after else ""))


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
    click.echo(f"backup written to {result.path} ({result.size:,} bytes in {result.seconds:.1f} s, integrity ok)")


@db.command("reset")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_settings
def db_reset(settings: Settings, yes: bool) -> None:
    """Delete every device and reading, then recreate an empty schema (web accounts are kept)."""
    from sqlalchemy import MetaData, insert, select

    from sensorhub.db.engine import make_engine
    from sensorhub.db.models import WebUser
    from sensorhub.db.schema import check_schema, display_url, init_db

    if not yes:
        click.confirm(f"Delete ALL devices and readings in {display_url(settings.database_url)}?", abort=True)
    check_schema(settings.database_url)  # never drop the tables of something that is not ours
    engine = make_engine(settings.database_url)
    with engine.begin() as conn:
        # Web accounts are kept: they are configuration, not recorded data.
        accounts = [dict(row) for row in conn.execute(select(WebUser.__table__)).mappings()]
        tables = MetaData()
        tables.reflect(conn)
        tables.drop_all(conn)
    init_db(engine)
    if accounts:
        with engine.begin() as conn:
            conn.execute(insert(WebUser), accounts)
    click.echo(f"database reset ({len(accounts)} web account(s) kept)")


def _moment(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 date and time (2026-11-29T08:00:00+01:00)",
                                 param_hint=option) from None
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
    from sensorhub.protocol import Kind

    end = _moment(end_text, "--to") or datetime.now(UTC)
    start = _moment(start_text, "--from") or end - timedelta(hours=24)
    if start >= end:
        raise click.BadParameter("must come before --to", param_hint="--from")
    check_schema(settings.database_url)
    engine = make_engine(settings.database_url, read_only=True)
    kinds = list(Kind) if kind is None else [Kind(kind)]
    rows = 0
    try:
        with engine.connect() as conn:
            if device is not None and device not in history.device_names(conn, [device]):
                raise click.BadParameter(f"no device has the id {device}", param_hint="--device")
            names = history.device_names(conn, None if device is None else [device])
            chunks = history.csv_chunks(history.export_rows(conn, start, end, kinds, None if device is None
                                                            else [device]), names)
            out = sys.stdout if output is None else output.open("w", newline="", encoding="utf-8")
            try:
                for chunk in chunks:
                    out.write(chunk)
                    rows += chunk.count("\n")
            finally:
                if output is not None:
                    out.close()
    finally:
        engine.dispose()
    if output is not None:
        click.echo(f"{rows - 1:,} readings written to {output}", err=True)


@cli.group()
def user() -> None:
    """Web accounts: with at least one, the LED and rename controls need a login."""


def _accounts_engine(settings: Settings) -> Any:
    from sensorhub.db.engine import make_engine
    from sensorhub.db.schema import check_schema

    check_schema(settings.database_url)
    return make_engine(settings.database_url)


def _new_password(name: str) -> str:
    from sensorhub.accounts import check_password

    password: str = click.prompt(f"Password for {name}", hide_input=True, confirmation_prompt=True,
                                 err=True)
    return check_password(password)


@user.command("add")
@click.argument("name")
@pass_settings
def user_add(settings: Settings, name: str) -> None:
    """Create the account NAME (asks for its password twice)."""
    from sensorhub import accounts

    accounts.check_name(name)
    accounts.add(_accounts_engine(settings), name, _new_password(name))
    click.echo(f"account {name} added: the LED and rename controls now need a login")


@user.command("passwd")
@click.argument("name")
@pass_settings
def user_passwd(settings: Settings, name: str) -> None:
    """Change the password of NAME (its open sessions end)."""
    from sensorhub import accounts

    engine = _accounts_engine(settings)
    if name not in {account.name for account in accounts.list_accounts(engine)}:
        raise accounts.AccountError(f"no account is called {name!r} (`sensorhub user list`)")
    accounts.set_password(engine, name, _new_password(name))
    click.echo(f"password of {name} changed; {_end_sessions(settings, name)}")


@user.command("remove")
@click.argument("name")
@pass_settings
def user_remove(settings: Settings, name: str) -> None:
    """Delete the account NAME (its open sessions end)."""
    from sensorhub import accounts

    engine = _accounts_engine(settings)
    accounts.remove(engine, name)
    left = len(accounts.list_accounts(engine))
    click.echo(f"account {name} removed; {_end_sessions(settings, name)}"
               + ("" if left else "; no account left: the controls are open to everyone"))


def _end_sessions(settings: Settings, name: str) -> str:
    """Delete the account's login sessions from the web state: what happened, for the user."""
    from sqlalchemy.exc import SQLAlchemyError

    from sensorhub.errors import SensorhubError
    from sensorhub.webstate import end_account_sessions

    try:
        ended = end_account_sessions(settings, name)
    except (SQLAlchemyError, SensorhubError, OSError) as err:
        # The sessions still end: each one remembers the password it was opened with (the sensor database's word).
        click.echo(f"sensorhub: warning: cannot reach the web state to delete the login sessions of {name} "
                   f"({str(err).splitlines()[0]}); they are refused anyway", err=True)
        return "its login sessions are refused"
    return f"{ended} login session(s) ended"


@user.command("list")
@pass_settings
def user_list(settings: Settings) -> None:
    """List the accounts."""
    from sensorhub import accounts

    found = accounts.list_accounts(_accounts_engine(settings))
    if not found:
        click.echo("no account: the LED and rename controls are open to everyone (`sensorhub user add NAME`)")
    for account in found:
        click.echo(f"{account.name}\tcreated {account.created_at:%Y-%m-%d %H:%M} UTC"
                   f"\tpassword changed {account.changed_at:%Y-%m-%d %H:%M} UTC")


@cli.group()
def tls() -> None:
    """TLS for MQTT, WebSockets and the web pages."""


@tls.command("self-signed")
@click.option("--cert", type=click.Path(dir_okay=False), default=None,
              help="Certificate file [default: tls/cert.pem in the state directory].")
@click.option("--key", type=click.Path(dir_okay=False), default=None,
              help="Private key file [default: tls/key.pem in the state directory].")
@click.option("--name", "names", multiple=True, help="Another DNS name or address to include (repeatable).")
@pass_settings
def tls_self_signed(settings: Settings, cert: str | None, key: str | None, names: tuple[str, ...]) -> None:
    """Make a self-signed certificate for this machine's names and LAN addresses, to try TLS out."""
    import ipaddress
    from pathlib import Path

    from sensorhub.credentials import state_dir
    from sensorhub.tls import machine_names, make_self_signed

    directory = state_dir(settings) / "tls"
    cert_path = Path(cert) if cert else directory / "cert.pem"
    key_path = Path(key) if key else directory / "key.pem"
    dns, addresses = machine_names()
    for extra in names:
        try:
            addresses.append(str(ipaddress.ip_address(extra)))
        except ValueError:
            dns.append(extra)
    make_self_signed(cert_path, key_path, dns, addresses)
    click.echo(f"certificate {cert_path} (for {', '.join(dns + addresses)}), key {key_path} (mode 0600)")
    click.echo("use them with:")
    click.echo(f"  export SENSORHUB_TLS_CERT={cert_path.resolve()} SENSORHUB_TLS_KEY={key_path.resolve()}")
    click.echo("browsers will warn that it is self-signed; boards and scripts must be given the certificate to "
               "trust it")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the answer of /healthz (JSON) instead.")
@pass_settings
def status(settings: Settings, as_json: bool) -> None:
    """Is everything running? Database, broker and ingest client, as /healthz says; exit status 0 if healthy, 1 if
    not."""
    import json

    from sensorhub import health
    from sensorhub.db.engine import make_engine

    def ping() -> None:
        engine = make_engine(settings.database_url, read_only=True)
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1 FROM device LIMIT 1").all()
        finally:
            engine.dispose()

    found = health.check(settings, ping)
    if as_json:
        click.echo(json.dumps(found.as_json(), indent=2, ensure_ascii=False))
    else:
        for check in found.checks:
            click.echo(f"{check.name:<9} {'ok' if check.ok else 'FAILED':<7} {check.detail}")
        click.echo(found.summary())
    sys.exit(0 if found.ok else 1)


@cli.group()
def service() -> None:
    """systemd units for the broker, the ingest client and the web server (docs/deploy.md)."""


_root_option = click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("/"),
                            show_default=True, help="Write under this directory instead (systemd is not told).")
_dry_run_option = click.option("--dry-run", is_flag=True, help="Print what would be written and run; change "
                               "nothing.")


@service.command("install")
@_root_option
@_dry_run_option
@click.option("--now", "start", is_flag=True, help="Also enable and start the three services.")
def service_install(root: Path, dry_run: bool, start: bool) -> None:
    """Write the units, the `sensorhub` user's sysusers.d file and /etc/sensorhub/sensorhub.env (kept if present)."""
    from sensorhub import systemd

    systemd.install(systemd.default_executable(), root, dry_run=dry_run, start=start, echo=click.echo)
    if not start and not dry_run:
        click.echo("start them with: sudo systemctl enable --now " + " ".join(systemd.UNITS))


@service.command("uninstall")
@_root_option
@_dry_run_option
def service_uninstall(root: Path, dry_run: bool) -> None:
    """Stop and remove the units; the settings, the data in /var/lib/sensorhub and the user stay."""
    from sensorhub import systemd

    systemd.uninstall(root, dry_run=dry_run, echo=click.echo)
    click.echo(f"kept {systemd.ENV_FILE.as_posix()} and {systemd.STATE} (remove them yourself if you want)")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning sensorhub errors into one line and exit status 2."""
    die_with_parent()
    try:
        cli.main(args=argv, prog_name="sensorhub", standalone_mode=False)
    except SensorhubError as err:
        click.echo(f"sensorhub: error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
