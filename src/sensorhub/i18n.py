"""The command line's language: chosen from the locale and SENSORHUB_CLI_LANGUAGE, messages from the `cli` catalogs.

The messages are written in English in the code (the msgids); `translations/<lang>/LC_MESSAGES/cli.po` holds
their French (and an English catalog for completeness), compiled to `.mo` by `make install`. Log lines are not
translated. docs/development.md says how to add a message.
"""

from __future__ import annotations

import gettext as _gettext
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: The message catalogs' directory (`<lang>/LC_MESSAGES/<domain>.mo`), shared with the web pages' domain.
LOCALE_DIR = Path(__file__).resolve().parent / "translations"
DOMAIN = "cli"
#: The languages there is a catalog for; the first is the code's own and the fallback.
LANGUAGES = ("en", "fr")
#: SENSORHUB_CLI_LANGUAGE's values: `auto` follows the locale.
CHOICES = ("auto", *LANGUAGES)
#: The locale variables, in the order gettext reads them (the first one set decides).
LOCALE_VARIABLES = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")

_current: _gettext.NullTranslations = _gettext.NullTranslations()
_language = LANGUAGES[0]


def N_(message: str) -> str:
    """Mark `message` for extraction without translating it now (error templates, translated when shown)."""
    return message


class Msg(str):
    """A value of an error's template that is itself a msgid (marked with N_): translated when the error is shown."""


def locale_language(environ: Mapping[str, str] | None = None) -> str:
    """The language the locale asks for, as gettext reads it: `fr_FR.UTF-8` is `fr`; C, POSIX, unset or a
    language without a catalog is English."""
    environ = os.environ if environ is None else environ
    value = next((environ[name] for name in LOCALE_VARIABLES if environ.get(name)), "")
    # A list by preference (`de:fr`, LANGUAGE's form): the first with a catalog wins, as with gettext.
    for item in value.split(":"):
        code = item.split(".")[0].split("@")[0].split("_")[0].split("-")[0].lower()
        if code in LANGUAGES:
            return code
        if code in ("c", "posix"):
            break
    return LANGUAGES[0]


def parse_choice(value: str) -> str:
    """SENSORHUB_CLI_LANGUAGE checked: auto, fr or en (ValueError otherwise)."""
    choice = value.strip().lower()
    if choice not in CHOICES:
        raise ValueError(N_("use auto (from the locale: LANGUAGE, LC_ALL, LC_MESSAGES, LANG), fr or en"))
    return choice


def choose(setting: str = "auto", environ: Mapping[str, str] | None = None) -> str:
    """The language to speak: the setting when it names one, else the locale's."""
    return setting if setting in LANGUAGES else locale_language(environ)


def use(language: str) -> None:
    """Translate the messages into `language` from now on (a missing catalog leaves them in English)."""
    global _current, _language
    if language not in LANGUAGES:
        raise ValueError(f"no catalog for the language {language!r}")
    try:
        _current = _gettext.translation(DOMAIN, LOCALE_DIR, [language])
    except OSError:
        if language != LANGUAGES[0]:
            logger.warning("no compiled catalog %s for %s in %s (make install compiles them): messages stay in "
                           "English", DOMAIN, language, LOCALE_DIR)
        _current = _gettext.NullTranslations()
    _language = language


def current() -> str:
    """The language messages are translated into now."""
    return _language


def gettext(message: str) -> str:
    """`message` in the current language (unchanged when the catalog lacks it)."""
    return _current.gettext(message)


def ngettext(singular: str, plural: str, count: int) -> str:
    """The singular or plural of a message for `count`, in the current language."""
    return _current.ngettext(singular, plural, count)


def tr(message: str, /, **params: Any) -> str:
    """`message` translated, then formatted with `params` (str.format: the placeholders stay in the catalog);
    a value that is a `Msg` is translated too."""
    text = gettext(message)
    return text.format(**_translated(params)) if params else text


def _translated(params: Mapping[str, Any]) -> dict[str, Any]:
    return {key: gettext(value) if isinstance(value, Msg) else value for key, value in params.items()}


def trn(singular: str, plural: str, count: int, /, **params: Any) -> str:
    """The singular or plural of a message translated, formatted with `count` and `params`."""
    return ngettext(singular, plural, count).format(count=count, **_translated(params))
