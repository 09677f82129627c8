"""/capteurs with a large fleet: 300 virtual devices on the real stack (Mosquitto, ingest client, gunicorn) in
Debian's headless Chromium. Nothing is timed here (`make bench BENCH_ARGS="--scenario fleet-browser"` does)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from sensorhub.broker import Broker
from sensorhub.config import Settings
from sensorhub.simulator import Fleet
from tests.screenshots import DESKTOP
from tests.stack import ingest_client, web_server, web_url
from tests.support import wait_for

pytestmark = pytest.mark.browser

DEVICES = 300



def session_names(fleet: Fleet) -> list[str]:
    names = [device.name for device in fleet.devices]
    assert all(names), "every device has its name"
    return [name for name in names if name is not None]


def test_300_devices_are_listed_follow_joins_and_leaves_and_keep_their_led_toggle(
        settings: Settings, broker: Broker, engine: Any, browser: Browser) -> None:
    settings = settings.replace(new_devices_per_minute=0)  # 300 new boards at once: beyond the default 60 a minute
    with ingest_client(settings) as _client, web_server(settings, workers=2) as _web:
        fleet = Fleet(settings, DEVICES, interval=3.0, seed=314, button_every=None)
        newcomer = Fleet(settings, 1, interval=3.0, seed=315, button_every=None)
        context = browser.new_context(viewport=DESKTOP)  # type: ignore[arg-type]
        errors: list[str] = []
        try:
            fleet.start()
            fleet.wait_joined(120)
            names = session_names(fleet)
            page = context.new_page()
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(web_url(settings, "/capteurs"))
            expect(page.locator('[data-live-status][data-state="live"]')).to_be_visible(timeout=20_000)

            # Every device is listed, in the compact list a large fleet gets, each card once.
            cards = page.locator("[data-card]")
            expect(cards).to_have_count(DEVICES, timeout=30_000)
            listed = page.evaluate("[...document.querySelectorAll('[data-card]')].map((c) => c.dataset.sessionName)")
            assert sorted(listed) == sorted(names)
            expect(page.locator("[data-cards]")).to_have_class(re.compile(r"(?=.*\blayout-list\b)(?=.*\bis-large\b)"))
            expect(page.locator("[data-fleet-controls]")).to_be_visible()

            # A join appears, a leave disappears.
            newcomer.start()
            newcomer.wait_joined(30)
            (joined,) = session_names(newcomer)
            expect(page.locator(f'[data-card][data-session-name="{joined}"]')).to_have_count(1, timeout=10_000)
            fleet.leave(0)
            expect(page.locator(f'[data-card][data-session-name="{names[0]}"]')).to_have_count(0, timeout=10_000)
            expect(cards).to_have_count(DEVICES, timeout=10_000)

            # A reading of a device whose card is out of view is there when the card is scrolled into view.
            middle = fleet.devices[DEVICES // 2]
            far = page.locator(f'[data-card][data-session-name="{names[DEVICES // 2]}"]')
            assert not far.evaluate("(card) => card.getBoundingClientRect().top < window.innerHeight")
            value = (middle.light + 41) % 101
            fleet.set_light(DEVICES // 2, value)
            page.wait_for_timeout(300)
            far.scroll_into_view_if_needed()
            # The device's own readings (every 3 s) may follow: the card shows its latest one.
            wait_for(lambda: far.locator("[data-light-value]").text_content() == f"{middle.light} %",
                     5, what="the card scrolled into view to show the device's latest reading")
            page.evaluate("window.scrollTo(0, 0)")

            # The LED toggle of a card far down the list still switches its device, and the card follows.
            target = DEVICES - 1
            shown = page.locator(f'[data-card][data-session-name="{names[target]}"]')
            shown.locator("[data-led-toggle]").click()
            wait_for(lambda: fleet.devices[target].led, 10, what="the simulated LED to switch on")
            expect(shown.locator("[data-led-state]")).to_have_text("allumée", timeout=10_000)
            expect(shown.locator("[data-pending]")).to_be_hidden()

            # Filtering by name keeps working at this size.
            page.locator("[data-filter]").fill(fleet.devices[target].mac)
            expect(page.locator("[data-card]:visible")).to_have_count(1)
            expect(shown).to_be_visible()
            page.locator("[data-state-filter]").select_option("led-on")
            page.locator("[data-filter]").fill("")
            expect(page.locator("[data-card]:visible")).to_have_count(1)
            expect(shown).to_be_visible()
        finally:
            context.close()
            newcomer.stop()
            fleet.stop(60)
    assert errors == [], f"JavaScript errors on the page: {errors}"
