"""The command line in the chosen language: our messages, click's own (usage, errors) and the help texts."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Mapping
from typing import Any

import click

from sensorhub import i18n
from sensorhub.config import SettingSpec
from sensorhub.i18n import N_, gettext, tr

logger = logging.getLogger(__name__)

#: click's modules that translate their messages with gettext's `_` and `ngettext` (bound when imported).
_CLICK_MODULES = ("core", "decorators", "exceptions", "formatting", "parser", "termui", "types", "utils",
                  "shell_completion", "_termui_impl")
#: The English help texts, by command or parameter, so that a second `apply` translates from them again.
_ENGLISH: dict[int, str] = {}


#: A setting's flag's help: its help text from the settings table, then where else it comes from.
SETTING_HELP = N_("{help} [env {env}; default {default}]")
EMPTY = N_("(empty)")


def setting_help(spec: SettingSpec) -> str:
    """The help of a setting's flag, in the command line's language."""
    return tr(SETTING_HELP, help=gettext(spec.help), env=spec.env, default=spec.default or tr(EMPTY))


class SettingOption(click.Option):
    """The flag of one setting; knows its row of the table, for its help in another language."""

    def __init__(self, *args: Any, spec: SettingSpec, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spec = spec


def language(setting: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The language to speak: `setting`, else SENSORHUB_CLI_LANGUAGE, else the locale (an invalid variable is
    left to the settings' check, which says so)."""
    environ = os.environ if environ is None else environ
    if setting is None:
        try:
            setting = i18n.parse_choice(environ.get("SENSORHUB_CLI_LANGUAGE", "auto"))
        except ValueError:
            setting = "auto"
    return i18n.choose(setting, environ)


def apply(setting: str | None = None, command: click.Command | None = None) -> str:
    """Speak the chosen language from now on: sensorhub's messages, click's, and `command`'s help texts."""
    chosen = language(setting)
    i18n.use(chosen)
    _hook_click()
    if command is not None:
        _translate_help(command)
    return chosen


def _hook_click() -> None:
    """Make click's own messages ("Usage:", "Missing argument", ...) come from our `cli` catalog."""
    import importlib

    for name in _CLICK_MODULES:
        try:
            module = importlib.import_module(f"click.{name}")
        except ImportError:  # pragma: no cover (click moved a module: its messages stay in English)
            continue
        for attribute, function in (("_", i18n.gettext), ("ngettext", i18n.ngettext)):
            if hasattr(module, attribute):
                setattr(module, attribute, function)


def _translated(key: object, english: str | None) -> str | None:
    """The help text `english` (kept by key, for later calls) in the current language."""
    if english is None:
        return None
    original = _ENGLISH.setdefault(id(key), english)
    text = inspect.cleandoc(original)
    found = i18n.gettext(text)
    return original if found == text else found


def _translate_help(command: click.Command) -> None:
    """Translate the help of `command`, its parameters and its sub-commands (the msgids: cleaned docstrings and
    `help=` texts, extracted by sensorhub.cli.catalog)."""
    command.help = _translated(command, command.help)
    for param in command.params:
        if isinstance(param, SettingOption):
            param.help = setting_help(param.spec)
        elif isinstance(param, click.Option):
            param.help = _translated(param, param.help)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _translate_help(sub)
