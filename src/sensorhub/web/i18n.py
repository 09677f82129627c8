"""The web server's two languages: French (the specification's, the default and the catalog's source) and English.

The language of a request: the `lang` cookie set by the switch in every page (`/langue?to=en&next=/capteurs`),
else the browser's `Accept-Language`, else French. Pages, error pages, the API's `{"error": …}` and the
scripts' strings (rendered into each page as JSON for common.js) all come from the catalogs of
`src/sensorhub/translations/<lang>/LC_MESSAGES/messages.po` (Flask-Babel, domain `messages`); dates and numbers
are formatted by Babel here and by `Intl` with the page's language in the scripts. docs/development.md says how
to add a string.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, redirect, request, url_for
from flask_babel import Babel, get_locale
from flask_babel import format_decimal as babel_format_decimal
from flask_babel import gettext as _
from werkzeug.wrappers import Response as BaseResponse

from sensorhub.db.listing import BadCursor
from sensorhub.i18n import LOCALE_DIR
from sensorhub.rules import Message
from sensorhub.web.scriptstrings import script_strings

logger = logging.getLogger(__name__)

#: The languages the web server speaks, the default first (the specification's pages are in French).
LANGUAGES = ("fr", "en")
DEFAULT = LANGUAGES[0]
#: Where the switch keeps the visitor's choice (not HttpOnly-bound to anything secret: a preference).
COOKIE = "lang"
COOKIE_DAYS = 365
#: src/sensorhub/translations: this domain (`messages`) and the command line's (`cli`) side by side.
TRANSLATIONS = LOCALE_DIR
DOMAIN = "messages"
#: Names of the languages in the switch, each in its own language.
LANGUAGE_NAMES = {"fr": "Français", "en": "English"}

bp = Blueprint("i18n", __name__)


def select_language() -> str:
    """The current request's language: the switch's cookie, else `Accept-Language`, else French."""
    chosen = request.cookies.get(COOKIE, "")
    if chosen in LANGUAGES:
        return chosen
    return request.accept_languages.best_match(LANGUAGES, default=DEFAULT) or DEFAULT


def language() -> str:
    """The language of the current request (`fr` or `en`), French outside a request."""
    try:
        locale = get_locale()
    except RuntimeError:  # outside an application context
        return DEFAULT
    return locale.language if locale is not None and locale.language in LANGUAGES else DEFAULT


def pick(message: Message) -> str:
    """A message of `rules` (which holds both languages) in the current request's language."""
    return message.en if language() == "en" else message.fr


def cursor_problem(err: BadCursor, sort: str) -> str:
    """What is wrong with a page cursor, in the request's language."""
    if err.given_for is None:
        return str(_("curseur de page invalide"))
    return str(_("ce curseur est celui du tri « %(given)s », pas « %(sort)s »", given=err.given_for, sort=sort))


def format_number(value: float, digits: int = 1) -> str:
    """`1 234,5` / `1,234.5`: a number with `digits` decimals in the current language."""
    return str(babel_format_decimal(value, format="#,##0." + "0" * digits if digits else "#,##0"))


def _safe_next(target: str | None) -> str:
    """Only a path on this site, never another site (open redirect); the home page otherwise."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target \
            and not urlsplit(target).netloc:
        return target
    return url_for("pages.accueil")


@bp.get("/langue")
def switch() -> BaseResponse:
    """The switch in every page's navigation: keep `to` in the cookie and go back to `next` (works without
    JavaScript: a plain link)."""
    target = request.args.get("to", "")
    response = redirect(_safe_next(request.args.get("next")), code=303)
    if target in LANGUAGES:
        response.set_cookie(COOKIE, target, max_age=COOKIE_DAYS * 86400, samesite="Lax", httponly=True,
                            secure=request.is_secure)
    return response


def _switch_url(to: str) -> str:
    """The switch's link to language `to`, back to this very page."""
    here = request.full_path.rstrip("?") if request.query_string else request.path
    return url_for("i18n.switch", to=to, next=here)


def _template_data() -> dict[str, Any]:
    """What every template gets: the page's language, the switch's links and the scripts' strings."""
    return {"lang": language(), "LANGUAGE_NAMES": LANGUAGE_NAMES, "switch_url": _switch_url,
            "script_strings": script_strings, "format_number": format_number}


def _vary(response: Response) -> Response:
    """Caches keep one answer per language: it depends on these headers (static files do not)."""
    if request.endpoint != "static":
        response.vary.update(("Accept-Language", "Cookie"))
    return response


def init_app(app: Flask) -> None:
    """Install Flask-Babel (the catalogs of TRANSLATIONS, the language of `select_language`) and the switch."""
    Babel(app, locale_selector=select_language, default_locale=DEFAULT,
          default_translation_directories=str(TRANSLATIONS), default_domain=DOMAIN)
    # `{% trans %}` blocks spread over lines are one message each, their white space collapsed.
    app.jinja_env.policies["ext.i18n.trimmed"] = True
    app.context_processor(_template_data)
    app.register_blueprint(bp)
    app.after_request(_vary)
