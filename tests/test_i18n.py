"""The web server in French and English: which language a request gets (the switch's cookie, Accept-Language,
French by default), every page and the API's errors in both, the catalog complete, and dates written in the
page's language by a real browser (Debian's Chromium against gunicorn)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from babel.messages.pofile import read_po
from flask.testing import FlaskClient
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import Engine

from sensorhub.alerting import Metric, Rule
from sensorhub.config import Settings
from sensorhub.db import alerts
from sensorhub.web.i18n import COOKIE
from tests.factories import add_device
from tests.stack import ROOT, web_server, web_url

NOW_US = 1_764_000_000_000_000
TRANSLATIONS = ROOT / "src" / "sensorhub" / "translations"
#: The catalog of the language that is not the source (the code and templates are written in French).
ENGLISH = TRANSLATIONS / "en" / "LC_MESSAGES" / "messages.po"
#: What only French writes: a page or a script string in English showing one of these was not translated.
FRENCH_ONLY = re.compile(r"[éèêàâçùûîôœ«»]")

#: Every page, with a few of its strings in French and in English.
PAGES = {
    "/accueil": (["Vue d'ensemble", "Santé du système", "Arrivées et départs", "(déclenchée, depuis",
                  "(avertissement)"],
                 ["Overview", "System health", "Joins and leaves", "(firing, since", "(warning)"]),
    "/capteurs": (["Capteurs connectés", "Connexion au broker MQTT…", "Renommer"],
                  ["Connected sensors", "Connecting to the MQTT broker…", "Rename"]),
    "/historique": (["Rechercher dans toute la base", "Vu pour la dernière fois", "Photorésistance"],
                    ["Search the whole database", "Last seen", "Photoresistor"]),
    "/appareil/1": (["Télécharger ces mesures (CSV)", "Personnalisée", "Alertes actives", "7 j"],
                    ["Download these readings (CSV)", "Custom", "Active alerts", "7 d"]),
    "/alertes": (["Canaux de notification", "Ajouter une règle", "déclenchée", "Acquitter"],
                 ["Notification channels", "Add a rule", "firing", "Acknowledge"]),
    "/aide": (["Comment ça marche", "Canaux et messages", "Publié par"],
              ["How it works", "Channels and messages", "Published by"]),
    "/login": (["Nom du compte", "Mot de passe", "Se connecter"], ["Account name", "Password", "Log in"]),
    "/nulle-part": (["Erreur 404", "Introuvable", "Retour à l'accueil"],
                    ["Error 404", "Not found", "Back to the home page"]),
}


@pytest.fixture
def scene(engine: Engine) -> int:
    """A device with a firing alert (the alert pieces of /alertes, /accueil and the device page show)."""
    device = add_device(engine, "capteur01", 1)
    with engine.begin() as conn:
        rule = Rule(id=0, name="sombre", metric=Metric.LIGHT, operator="<", trigger=10)
        rule = replace(rule, id=alerts.add_rule(conn, rule, NOW_US))
        assert alerts.open_alert(conn, rule, device, NOW_US, 5.0, channels=()) is not None
    return device


def _visible(html: str) -> tuple[str, list[str]]:
    """A page's text and its attributes people read (labels, placeholders, tooltips), without its scripts' data
    and the language switch (which names French in French on purpose)."""
    html = re.sub(r"<script\b.*?</script>", " ", html, flags=re.S)
    html = re.sub(r'<span class="lang-switch".*?</nav>', "</nav>", html, flags=re.S)
    attributes = re.findall(r'(?:aria-label|placeholder|title|data-label)="([^"]*)"', html)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)), attributes


def _strings(html: str) -> dict[str, str]:
    found = re.search(r'<script type="application/json" id="sensorhub-strings">(.*?)</script>', html, re.S)
    assert found
    return dict(json.loads(found[1]))


@pytest.mark.parametrize("path", list(PAGES))
def test_every_page_is_french_by_default_and_english_for_an_english_browser(client: FlaskClient, scene: int,
                                                                            path: str) -> None:
    french, english = PAGES[path]
    html = client.get(path).get_data(as_text=True)
    assert '<html lang="fr">' in html
    text, _ = _visible(html)
    for expected in [*french, "Accueil", "Historique"]:
        assert expected in text, f"{expected!r} not on {path} in French"
    html = client.get(path, headers={"Accept-Language": "en-US,en;q=0.9"}).get_data(as_text=True)
    assert '<html lang="en">' in html
    text, attributes = _visible(html)
    for expected in [*english, "Home", "History"]:
        assert expected in text, f"{expected!r} not on {path} in English"
    left = FRENCH_ONLY.findall(text) + [value for value in attributes if FRENCH_ONLY.search(value)]
    assert left == [], f"French left on {path} in English: {[m for m in FRENCH_ONLY.finditer(text)][:3]} " + \
        " | ".join(text[max(0, m.start() - 40):m.end() + 40] for m in FRENCH_ONLY.finditer(text))
    strings = _strings(html)
    assert [key for key, value in strings.items() if FRENCH_ONLY.search(value)] == []
    assert strings["live.on"] == "Live" and _strings(client.get(path).get_data(as_text=True))["live.on"] == "En direct"


def test_a_browser_preferring_another_language_gets_french(client: FlaskClient) -> None:
    for accepted in ("de-DE,de;q=0.9", "", "*", "es, it;q=0.5"):
        html = client.get("/aide", headers={"Accept-Language": accepted}).get_data(as_text=True)
        assert '<html lang="fr">' in html and "Comment ça marche" in html, accepted
    html = client.get("/aide", headers={"Accept-Language": "de, en;q=0.5, fr;q=0.3"}).get_data(as_text=True)
    assert '<html lang="en">' in html  # the browser's order among the two


def test_the_switch_keeps_the_choice_in_a_cookie_that_wins_over_accept_language(client: FlaskClient) -> None:
    html = client.get("/historique?q=salle", headers={"Accept-Language": "fr"}).get_data(as_text=True)
    link = re.search(r'<a href="([^"]+)" hreflang="en"', html)
    assert link, "no link to English in the navigation"
    href = link[1].replace("&amp;", "&")
    assert href == "/langue?to=en&next=/historique?q%3Dsalle"
    response = client.get(href, headers={"Accept-Language": "fr"})
    assert response.status_code == 303 and response.headers["Location"] == "/historique?q=salle"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=en;") and "SameSite=Lax" in cookie and "Max-Age=31536000" in cookie
    page = client.get("/historique?q=salle", headers={"Accept-Language": "fr"})
    assert '<html lang="en">' in page.get_data(as_text=True)
    assert "Accept-Language" in page.headers["Vary"] and "Cookie" in page.headers["Vary"]
    # The API follows the same choice.
    assert client.get("/api/devices/9").get_json() == {"error": "no device has the id 9"}
    client.get("/langue?to=fr&next=/aide", headers={"Accept-Language": "en"})
    html = client.get("/aide", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert '<html lang="fr">' in html and "Comment ça marche" in html


@pytest.mark.parametrize("target", ["//ailleurs.example/x", "https://ailleurs.example/", "/\\ailleurs.example",
                                    "ailleurs", ""])
def test_the_switch_goes_back_only_to_a_page_of_this_site(client: FlaskClient, target: str) -> None:
    response = client.get("/langue", query_string={"to": "en", "next": target})
    assert response.status_code == 303 and response.headers["Location"] == "/accueil"


def test_the_switch_ignores_a_language_it_does_not_speak(client: FlaskClient) -> None:
    response = client.get("/langue?to=de&next=/aide")
    assert response.status_code == 303 and "Set-Cookie" not in response.headers
    assert '<html lang="fr">' in client.get("/aide").get_data(as_text=True)


def test_api_errors_speak_the_clients_language(client: FlaskClient, scene: int) -> None:
    english = {"Accept-Language": "en"}
    cases = [("/api/devices/999", 404, "aucun appareil n'a l'identifiant 999", "no device has the id 999"),
             ("/api/devices?online=peut-etre", 400, "le paramètre online vaut 1 ou 0",
              "the parameter online is 1 or 0"),
             ("/api/devices/1/readings?from=hier", 400,
              "paramètre from : date et heure ISO 8601 attendues, par exemple 2026-11-29T08:00:00+01:00 ou "
              "2026-11-29T07:00:00Z",
              "parameter from: an ISO 8601 date and time is expected, for example 2026-11-29T08:00:00+01:00 or "
              "2026-11-29T07:00:00Z"),
             ("/api/alerts?limit=x", 400, "le paramètre limit est un nombre de 0 à 50",
              "the parameter limit is a number from 0 to 50"),
             ("/api/nulle-part", 404, "introuvable", "not found")]
    for path, status, french, in_english in cases:
        response = client.get(path)
        assert (response.status_code, response.get_json()["error"]) == (status, french), path
        response = client.get(path, headers=english)
        assert (response.status_code, response.get_json()["error"]) == (status, in_english), path
    response = client.get("/api/devices", headers={**english, "Authorization": "Bearer nope"})
    assert response.status_code == 401
    assert response.get_json() == {"error": "unknown or revoked API token (sensorhub token list)"}
    response = client.post("/api/devices/1/name", json={"name": "a;b"}, headers=english)
    assert response.status_code == 400 and response.get_json()["error"].startswith("request refused: CSRF token")


def test_the_name_rule_reaches_the_scripts_in_the_pages_language(client: FlaskClient) -> None:
    for accepted, expected in (("fr", "le nom ne peut pas être vide"), ("en", "a name cannot be empty")):
        html = client.get("/capteurs", headers={"Accept-Language": accepted}).get_data(as_text=True)
        found = re.search(r'<script type="application/json" id="sensorhub-protocol">(.*?)</script>', html, re.S)
        assert found and json.loads(found[1])["name"]["messages"]["empty"] == expected


def test_numbers_are_written_in_the_pages_language(client: FlaskClient, engine: Engine) -> None:
    fr = client.get("/aide").get_data(as_text=True)
    en = client.get("/aide", headers={"Accept-Language": "en"}).get_data(as_text=True)
    size_fr = re.search(r'data-db-bytes="\d+">([^<]+)<', fr)
    size_en = re.search(r'data-db-bytes="\d+">([^<]+)<', en)
    assert size_fr and size_en
    assert re.fullmatch(r"\d+,\d (ko|Mo)", size_fr[1]), size_fr[1]
    assert re.fullmatch(r"\d+\.\d (kB|MB)", size_en[1]), size_en[1]
    assert "illimitée" in fr and "unlimited" in en


# -- the catalog -------------------------------------------------------------------------------------------------


def test_the_english_catalog_translates_every_string_of_the_code_and_templates(tmp_path: Path) -> None:
    """pybabel extract, as `make translations` runs it, into a temporary template: every message has its English
    translation, not fuzzy, with the same placeholders; a string added without one fails here."""
    template = tmp_path / "messages.pot"
    pybabel = Path(sys.executable).parent / "pybabel"
    ran = subprocess.run([str(pybabel), "extract", "-F", "babel.cfg", "-k", "N_", "--no-location", "-o",
                          str(template), "src/sensorhub/web"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    with template.open("rb") as file:
        extracted = read_po(file)
    with ENGLISH.open("rb") as file:
        catalog = read_po(file, locale="en")
    assert len(extracted) > 300  # the extraction found the templates and the code
    problems = []
    for message in extracted:
        if not message.id:
            continue
        translated = catalog.get(message.id)
        if translated is None:
            problems.append(f"missing: {message.id!r}")
            continue
        forms = translated.string if isinstance(translated.string, tuple) else (translated.string,)
        if translated.fuzzy or not all(forms):
            problems.append(f"{'fuzzy' if translated.fuzzy else 'empty'}: {message.id!r}")
    for message, errors in catalog.check():
        problems.extend(f"{message.id!r}: {error}" for error in errors)
    assert problems == [], "run `make translations`, translate in " + str(ENGLISH.relative_to(ROOT)) + ":\n" + \
        "\n".join(problems)
    compiled = ENGLISH.with_suffix(".mo")
    assert compiled.exists() and compiled.stat().st_mtime >= ENGLISH.stat().st_mtime, "run `make install`"


# -- in a real browser -------------------------------------------------------------------------------------------


@pytest.fixture
def site(settings: Settings, engine: Engine) -> Iterator[Callable[[str], str]]:
    """gunicorn alone (no broker: /capteurs says so) on the test's database: a function giving a path's URL."""
    add_device(engine, "capteur01", 1)
    with web_server(settings, workers=1):
        yield lambda path: web_url(settings, path)


def open_page(browser: Browser, locale: str | None, url: str) -> tuple[Page, list[str]]:
    """A page in a new context of `locale` (None: the tests' French Chromium) in UTC, at `url`."""
    context = browser.new_context(locale=locale, timezone_id="UTC") if locale else \
        browser.new_context(timezone_id="UTC")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url)
    return page, errors


#: A custom range on the device page, in UTC.
CUSTOM = "/appareil/1?du=2026-11-04T05:27:04Z&au=2026-11-05T17:27:04Z"


@pytest.mark.browser
@pytest.mark.parametrize(("locale", "summary", "seen"), [
    (None, "Du 04/11/2026 05:27:04 au 05/11/2026 17:27:04 (heure de votre navigateur).", r"\d\d/\d\d/\d{4} \d\d:"),
    ("en-US", "From 11/04/2026, 05:27:04 AM to 11/05/2026, 05:27:04 PM (your browser's time).",
     r"\d\d/\d\d/\d{4}, \d\d:\d\d:\d\d [AP]M"),
])
def test_the_custom_range_and_times_are_written_in_the_pages_language(browser: Browser, site: Callable[[str], str],
                                                                      locale: str | None, summary: str,
                                                                      seen: str) -> None:
    page, errors = open_page(browser, locale, site(CUSTOM))
    try:
        expect(page.locator('[data-device-page][data-state="ready"]')).to_be_visible(timeout=15_000)
        assert page.locator("html").get_attribute("lang") == ("en" if locale else "fr")
        expect(page.locator("[data-summary]")).to_contain_text(summary)
        assert page.locator('input[name="from"]').input_value() == "2026-11-04T05:27:04"
        assert re.fullmatch(seen + ".*", page.locator("time").first.inner_text())
        if locale is None:
            assert not re.search(r"\b[AP]M\b", page.locator("main").inner_text())
    finally:
        page.context.close()
    assert errors == []


@pytest.mark.browser
def test_the_switch_in_the_page_turns_it_english_and_the_choice_stays(browser: Browser,
                                                                      site: Callable[[str], str]) -> None:
    page, errors = open_page(browser, None, site("/capteurs"))
    try:
        # Without a broker the page's script says so, in the page's language.
        expect(page.locator("[data-broker-banner]")).to_contain_text("Impossible de joindre le broker MQTT")
        page.locator('.lang-switch a[data-lang="en"]').click()
        page.wait_for_url(re.compile(r"/capteurs$"))
        assert page.locator("html").get_attribute("lang") == "en"
        expect(page.locator("h1")).to_have_text("Connected sensors")
        expect(page.locator("[data-broker-banner]")).to_contain_text("Cannot reach the MQTT broker")
        expect(page.locator("[data-layout-label]")).to_have_text("Show as a list")
        page.locator("[data-layout-toggle]").click()
        expect(page.locator("[data-layout-label]")).to_have_text("Show as a grid")
        # The French browser's next pages stay English; the switch back makes them French again.
        page.goto(site("/aide"))
        expect(page.locator("h1")).to_have_text("A network of ESP32 sensors, live")
        page.locator('.lang-switch a[data-lang="fr"]').click()
        expect(page.locator("h1")).to_have_text("Un réseau de capteurs ESP32, en direct")
    finally:
        page.context.close()
    assert errors == []
