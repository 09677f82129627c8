"""`sensorhub tls ...`, `status` and `service ...`: this machine's certificate, health and systemd units."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sensorhub.cli.base import cli, pass_settings
from sensorhub.config import Settings
from sensorhub.i18n import N_, tr


@cli.group()
def tls() -> None:
    """TLS for MQTT, WebSockets and the web pages."""


@tls.command("self-signed")
@click.option("--cert", type=click.Path(dir_okay=False), default=None,
              help="Certificate file [default: tls/cert.pem in the state directory].")
@click.option("--key", type=click.Path(dir_okay=False), default=None,
              help="Private key file [default: tls/key.pem in the state directory].")
@click.option("--name", "names", multiple=True, help="Another DNS name or address to include (repeatable).")
@click.option("--force", is_flag=True, help="Replace the certificate and key if they exist.")
@pass_settings
def tls_self_signed(settings: Settings, cert: str | None, key: str | None, names: tuple[str, ...],
                    force: bool) -> None:
    """Make a self-signed certificate for this machine's names and LAN addresses, to try TLS out."""
    import ipaddress
    from pathlib import Path

    from sensorhub.credentials import state_dir
    from sensorhub.errors import ConfigError
    from sensorhub.tls import machine_names, make_self_signed

    directory = state_dir(settings) / "tls"
    cert_path = Path(cert) if cert else directory / "cert.pem"
    key_path = Path(key) if key else directory / "key.pem"
    existing = [str(path) for path in (cert_path, key_path) if path.exists()]
    if existing and not force:
        # As `db backup`: boards and browsers may trust this certificate already; replacing it is a choice.
        if len(existing) == 2:
            raise ConfigError(N_("{cert} and {key} already exist: pass --force to replace them, or choose other "
                                 "files with --cert and --key"), cert=existing[0], key=existing[1])
        raise ConfigError(N_("{file} already exists: pass --force to replace it, or choose other files with --cert "
                             "and --key"), file=existing[0])
    dns, addresses = machine_names()
    for extra in names:
        try:
            addresses.append(str(ipaddress.ip_address(extra)))
        except ValueError:
            dns.append(extra)
    make_self_signed(cert_path, key_path, dns, addresses)
    click.echo(tr("certificate {cert} (for {names}), key {key} (mode 0600)", cert=cert_path,
                  names=", ".join(dns + addresses), key=key_path))
    click.echo(tr("use them with:"))
    click.echo(f"  export SENSORHUB_TLS_CERT={cert_path.resolve()} SENSORHUB_TLS_KEY={key_path.resolve()}")
    click.echo(tr("browsers will warn that it is self-signed; boards and scripts must be given the certificate "
                  "to trust it"))


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
            verdict = tr("ok") if check.ok else tr("FAILED")
            click.echo(f"{check.name:<9} {verdict:<7} {check.translated()}")
        problems = "; ".join(f"{check.name}: {check.translated()}" for check in found.checks if not check.ok)
        click.echo(tr("healthy") if found.ok else tr("unhealthy: {problems}", problems=problems))
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
        click.echo(tr("start them with: {command}", command="sudo systemctl enable --now " + " ".join(systemd.UNITS)))


@service.command("uninstall")
@_root_option
@_dry_run_option
def service_uninstall(root: Path, dry_run: bool) -> None:
    """Stop and remove the units; the settings, the data in /var/lib/sensorhub and the user stay."""
    from sensorhub import systemd

    systemd.uninstall(root, dry_run=dry_run, echo=click.echo)
    click.echo(tr("kept {env_file} and {state} (remove them yourself if you want)",
                  env_file=systemd.ENV_FILE.as_posix(), state=systemd.STATE))
