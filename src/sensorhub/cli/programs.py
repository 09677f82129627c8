"""The programs: `sensorhub broker`, `client`, `web`, `run` (all of them) and `simulate`."""

from __future__ import annotations

import logging
import signal
import sys

import click

from sensorhub.cli.base import cli, pass_settings
from sensorhub.config import Settings
from sensorhub.i18n import tr
from sensorhub.process import notify

logger = logging.getLogger(__name__)


@cli.command()
@pass_settings
def broker(settings: Settings) -> None:
    """Run the Mosquitto broker with the project's configuration (foreground)."""
    from sensorhub.broker import Broker

    broker = Broker(settings)
    # This process stays beside mosquitto: it runs the guard of the WebSockets port (sensorhub.wsguard), which
    # applies max_packet_size there, and says READY=1 once both are up.
    # SIGTERM (from `sensorhub run`, systemd, kill) stops mosquitto too, as Ctrl-C does. SIGINT is set as well:
    # Python leaves it ignored when the parent ignored it (a shell's background job, a test runner's worker), and
    # Ctrl-C or `kill -INT` then did nothing; mosquitto itself handles SIGINT whatever it inherited.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with broker as running:
            notify("READY=1")
            click.echo(tr("broker running (config {path}); Ctrl-C stops it", path=running.config_path), err=True)
            status = running.wait()
    except KeyboardInterrupt:  # stopped as asked, also while it was starting (Broker.start stops what it started)
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
