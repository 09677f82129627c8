"""The README's screenshots: one scenario, run by the browser tests into a temporary directory and by
`make screenshots` (`python -m tests.screenshots [DIR]`) into docs/screenshots.

Each screenshot is taken once its page shows what it should (every device's card, a switched-on LED, full
charts, the channels table), so a test that runs the scenario checks the pages as well as the pictures.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Browser, Page, expect, sync_playwright

from sensorhub.broker import Broker
from sensorhub.config import Settings
from sensorhub.db.engine import init_db, make_engine
from sensorhub.ports import PortError, ensure_free
from sensorhub.simulator import Fleet
from tests.stack import ROOT, ingest_client, web_server, web_url
from tests.support import CHROMIUM, CHROMIUM_ARGS, free_port

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 812}
#: File name -> viewport.
SHOTS = {"capteurs.png": DESKTOP, "historique.png": DESKTOP, "accueil.png": DESKTOP, "capteurs-mobile.png": PHONE}
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
    expect(page.locator('[data-live-status][data-state="live"]')).to_be_visible(timeout=10_000)
    expect(page.locator("[data-card]")).to_have_count(devices)


def take(browser: Browser, url: Callable[[str], str], fleet: Fleet, out: Path) -> list[Path]:
    """Screenshot /capteurs (desktop and 375 px), /historique and /accueil into `out`; return the files."""
    out.mkdir(parents=True, exist_ok=True)
    names = [device.name for device in fleet.devices]
    errors: list[str] = []
    context = browser.new_context(viewport=DESKTOP)  # type: ignore[arg-type]
    try:
        page = context.new_page()
        page.on("pageerror", lambda err: errors.append(str(err)))
        _open_capteurs(page, url, len(names))
        first = page.locator(f'[data-card][data-session-name="{names[0]}"]')
        first.locator("[data-led-toggle]").click()
        expect(first.locator("[data-led-state]")).to_have_text("allumée", timeout=5_000)
        _wait_for_charts(page, 10)
        page.screenshot(path=out / "capteurs.png", full_page=True)
        page.goto(url("/historique"))
        expect(page.locator("[data-card]")).to_have_count(len(names))
        expect(page.locator('[data-card] [data-kind="led"] .value').first).to_be_visible()
        page.screenshot(path=out / "historique.png", full_page=True)
        page.goto(url("/accueil"))
        expect(page.locator(".channels tbody tr")).to_have_count(7)
        page.screenshot(path=out / "accueil.png", full_page=True)
    finally:
        context.close()
    phone = browser.new_context(viewport=PHONE)  # type: ignore[arg-type]
    try:
        page = phone.new_page()
        page.on("pageerror", lambda err: errors.append(str(err)))
        _open_capteurs(page, url, len(names))
        _wait_for_charts(page, 3)
        page.screenshot(path=out / "capteurs-mobile.png", full_page=True)
    finally:
        phone.close()
    if errors:
        raise AssertionError(f"JavaScript errors on the pages: {errors}")
    return [out / name for name in SHOTS]


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
                            paths = take(browser, lambda path: web_url(settings, path), fleet, out)
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
