"""The screenshots of the README and docs/: one scenario, run by the browser tests into a temporary directory and by
`make screenshots` (`python -m tests.screenshots [DIR]`) into docs/screenshots.

Every page (PAGES), at 1280 and 375 px, in French and in English: `<page>-<language>-<width>.png`. Each is taken
once its page shows what it should (every device's card, a switched-on LED, full charts, the channels table) in
its language (`<html lang>`), so a test that runs the scenario checks the pages as well as the pictures.
"""

from __future__ import annotations

import math
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy import text

from sensorhub.alerting import Metric, Rule
from sensorhub.broker import Broker
from sensorhub.config import Settings
from sensorhub.db import alerts
from sensorhub.db.engine import make_engine
from sensorhub.db.schema import init_db
from sensorhub.ports import PortError, ensure_free
from sensorhub.simulator import Fleet
from tests.stack import ROOT, ingest_client, web_server, web_url
from tests.support import CHROMIUM, CHROMIUM_ARGS, free_port

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 812}
#: The browser's locale for each language of the pages (its Accept-Language, navigator.language).
LANGUAGES = {"fr": "fr-FR", "en": "en-US"}
VIEWPORTS = (DESKTOP, PHONE)
#: Every page: the navigation's four, a device's, help, the login form and an error page.
PAGES = ("accueil", "capteurs", "historique", "appareil", "alertes", "aide", "connexion", "erreur")
#: File name -> viewport.
SHOTS = {f"{page}-{language}-{viewport['width']}.png": viewport
         for language in LANGUAGES for viewport in VIEWPORTS for page in PAGES}
DEFAULT_DIR = ROOT / "docs" / "screenshots"
#: The virtual devices of `make screenshots` (the same MAC addresses and light levels every time).
SEED = 7
DEVICES = 3


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG file, from its header; ValueError if it is not a PNG."""
    head = path.read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG file")
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def _wait_for_charts(page: Page, points: int) -> None:
    page.wait_for_function(
        """(points) => [...document.querySelectorAll('[data-card]')].every((card) => {
            const chart = window.Chart.getChart(card.querySelector('canvas'));
            return chart && chart.data.datasets[0].data.length >= points;
        })""", arg=points, timeout=15_000)


def _open_capteurs(page: Page, url: Callable[[str], str], devices: int) -> None:
    page.goto(url("/capteurs"))
    expect(page.locator("[data-card]").first).to_be_attached(timeout=10_000)
    expect(page.locator('[data-live-status][data-state="live"]')).to_be_visible(timeout=10_000)
    expect(page.locator("[data-card]")).to_have_count(devices)


def demo_week(engine: Any) -> int:
    """A device that left an hour ago after a week of readings (light every 5 minutes, LED on in the evening)."""
    from sensorhub.db.latest import refresh_latest
    from sensorhub.db.rollups import rebuild
    from sensorhub.timestamps import format_micros
    from tests.factories import device_row, insert_devices

    now = int(time.time()) * 1_000_000
    start = now - 7 * 86_400_000_000
    with engine.begin() as conn:
        device = int(conn.execute(text("SELECT COALESCE(MAX(id), 0) + 1 FROM device")).scalar_one())
        insert_devices(conn, [device_row(device, joined_us=start - 1, last_seen_us=now - 3_600_000_000, online=False,
                                         name="salle B", mac="02:5E:00:00:00:01",
                                         session=f"{start // 1_000_000}.000001")])
        light, led = [], []
        for n in range(7 * 288 - 12):
            at = start + n * 300_000_000
            hour = (at // 3_600_000_000) % 24
            daylight = max(0.0, math.sin((hour - 6) / 12 * math.pi))
            light.append({"d": device, "at": format_micros(at), "v": min(100, round(5 + 80 * daylight + n % 7))})
            if n % 288 in (216, 276):  # 18:00 on, 23:00 off
                led.append({"d": device, "at": format_micros(at + 1), "v": int(n % 288 == 216)})
        conn.execute(text("INSERT INTO light_reading (device_id, at, value) VALUES (:d, :at, :v)"), light)
        conn.execute(text("INSERT INTO led_reading (device_id, at, value) VALUES (:d, :at, :v)"), led)
        rebuild(conn, [device])
        refresh_latest(conn, [device])
    return device


def take(browser: Browser, url: Callable[[str], str], fleet: Fleet, out: Path,
         history_device: int | None = None, viewports: Sequence[dict[str, int]] = VIEWPORTS) -> list[Path]:
    """Screenshot every page (PAGES) at 1280 and 375 px (`viewports`) in French and English into `out` (SHOTS's
    names), returning the files in SHOTS's order.

    The device page is `history_device`'s over 7 days if given, else the first live device's last hour.
    """
    out.mkdir(parents=True, exist_ok=True)
    names = [device.name for device in fleet.devices]
    errors: list[str] = []
    context = browser.new_context(viewport=DESKTOP, locale=LANGUAGES["fr"])  # type: ignore[arg-type]
    try:
        page = context.new_page()
        page.on("pageerror", lambda err: errors.append(str(err)))
        _open_capteurs(page, url, len(names))
        first = page.locator(f'[data-card][data-session-name="{names[0]}"]')
        first.locator("[data-led-toggle]").click()
        expect(first.locator("[data-led-state]")).to_have_text("allumée", timeout=5_000)
        device = history_device if history_device is not None else int(first.get_attribute("data-id") or 0)
    finally:
        context.close()
    for language, locale in LANGUAGES.items():
        for viewport in viewports:
            context = browser.new_context(viewport=viewport, locale=locale)  # type: ignore[arg-type]
            try:
                page = context.new_page()
                page.on("pageerror", lambda err: errors.append(str(err)))
                for name in PAGES:
                    _show(page, name, url, len(names), len(names) + (history_device is not None), device,
                          history_device is not None)
                    assert page.locator("html").get_attribute("lang") == language, (name, language)
                    page.screenshot(path=out / f"{name}-{language}-{viewport['width']}.png", full_page=True)
            finally:
                context.close()
    if errors:
        raise AssertionError(f"JavaScript errors on the pages: {errors}")
    widths = {viewport["width"] for viewport in viewports}
    return [out / name for name, viewport in SHOTS.items() if viewport["width"] in widths]


def _show(page: Page, name: str, url: Callable[[str], str], live: int, recorded: int, device: int,
          week: bool) -> None:
    """Open page `name` and wait until it shows what it should (`live` devices online, `recorded` in all)."""
    if name == "capteurs":
        _open_capteurs(page, url, live)
        expect(page.locator('[data-led-state][data-value="1"]')).to_have_count(1, timeout=5_000)
        _wait_for_charts(page, 10 if page.viewport_size == DESKTOP else 3)
    elif name == "historique":
        page.goto(url("/historique"))
        expect(page.locator("[data-card]")).to_have_count(recorded)
        expect(page.locator('[data-card] [data-kind="led"] .value').first).to_be_visible()
    elif name == "appareil":
        page.goto(url(f"/appareil/{device}?periode={'7j' if week else '1h'}"))
        expect(page.locator('[data-device-page][data-state="ready"]')).to_be_visible(timeout=10_000)
    elif name == "accueil":
        page.goto(url("/accueil"))
        expect(page.locator('[data-count="online"]')).not_to_have_text("0")
    elif name == "alertes":
        page.goto(url("/alertes"))
        expect(page.locator("[data-rules]")).to_be_visible()
    elif name == "aide":
        page.goto(url("/aide"))
        expect(page.locator(".channels tbody tr")).to_have_count(7)
    elif name == "connexion":
        page.goto(url("/login"))
        expect(page.locator(".login-form")).to_be_visible()
    else:
        response = page.goto(url("/appareil/999999"))
        assert response is not None and response.status == 404


def _port(default: int) -> int:
    """`default` if it is free (the pictures then show the usual ports), else any free port."""
    try:
        ensure_free(default, "", "")
    except PortError:
        return free_port()
    return default


def main(argv: list[str]) -> int:
    """Start a broker, ingest client, web server and 3 virtual devices (default ports if free), take the screenshots."""
    out = Path(argv[0]).resolve() if argv else DEFAULT_DIR
    with tempfile.TemporaryDirectory(prefix="sensorhub-screenshots-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # so that a broker started as root can drop to the mosquitto user and still log
        defaults = Settings()
        settings = defaults.replace(
            database_url=f"sqlite:///{work / 'db.sqlite3'}", mqtt_port=_port(defaults.mqtt_port),
            mqtt_ws_port=_port(defaults.mqtt_ws_port), web_port=_port(defaults.web_port), web_host="127.0.0.1",
            fifo=str(work / "led.fifo"), broker_log=str(work / "mosquitto.log"),
            log_level="INFO",  # the readiness lines are INFO
        )
        engine = make_engine(settings.database_url, create_dir=True)
        init_db(engine)
        history_device = demo_week(engine)
        with engine.begin() as conn:  # a rule, for /alertes (it fires when a demo device's light is low)
            alerts.add_rule(conn, Rule(id=0, name="sombre", metric=Metric.LIGHT, operator="<", trigger=20, clear=30),
                            int(time.time() * 1e6))
        engine.dispose()
        broker = Broker(settings, stderr=subprocess.DEVNULL)  # its log file is enough
        broker.start()
        try:
            with ingest_client(settings), web_server(settings):
                fleet = Fleet(settings, DEVICES, 0.5, mqtt_version="5", seed=SEED, button_every=None)
                fleet.start()
                try:
                    fleet.wait_joined(10)
                    with sync_playwright() as playwright:
                        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                             args=CHROMIUM_ARGS)
                        try:
                            paths = take(browser, lambda path: web_url(settings, path), fleet, out, history_device)
                        finally:
                            browser.close()
                finally:
                    fleet.stop()
        finally:
            broker.stop()
    for path in paths:
        width, height = png_size(path)
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}  {width}x{height}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
