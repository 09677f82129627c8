"""The `sensorhub` group: one flag per setting, logging, and the settings handed to every command."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from sensorhub.cli import lang
from sensorhub.config import SETTINGS, Settings

logger = logging.getLogger(__name__)


def _settings_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add one CLI flag per row of the settings table."""
    for spec in reversed(SETTINGS):
        command = click.option(
            spec.flag, spec.name, default=None, metavar="VALUE", cls=lang.SettingOption, spec=spec,
            help=lang.setting_help(spec),
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
    lang.apply(settings.cli_language)
    configure_logging(settings)
    ctx.obj = settings


pass_settings = click.make_pass_decorator(Settings)
