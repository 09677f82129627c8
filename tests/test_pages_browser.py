"""/capteurs with more online devices than PAGED_FLEET, in Debian's headless Chromium on the real stack (Mosquitto,
ingest client, gunicorn): a page of cards from the database, filtered and paged there, a card in view kept live.
Nothing is timed here (`python -m bench --scenario pages-100k` does)."""

from __future__ import annotations

import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from playwright.sync_api import Browser, expect

from sensorhub.broker import Broker
from sensorhub.config import Settings
from sensorhub.mqttclient import stop_loop
from sensorhub.web import pages
from tests.factories import device_row, insert_devices
from tests.screenshots import DESKTOP
from tests.stack import ingest_client, web_server, web_url

pytestmark = pytest.mark.browser

DEVICES = 3_000


def publish(settings: Settings, topic: str, payloads: list[str]) -> None:
    """QoS 1 messages from a board's side of the broker, in order."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-pages-board")
    client.connect("127.0.0.1", settings.mqtt_port)
    client.loop_start()
    try:
        sent = [client.publish(topic, payload, qos=1) for payload in payloads]
        for message in sent:
            message.wait_for_publish(10)
    finally:
        stop_loop(client)
        client.disconnect()


def test_3000_devices_show_a_page_filtered_in_the_database_with_a_card_in_view_live(
        settings: Settings, broker: Broker, engine: Any, browser: Browser) -> None:
    now = time.time_ns() // 1000
    rows = [device_row(i, joined_us=now - 3_600_000_000, last_seen_us=now - i * 1000) for i in range(1, DEVICES + 1)]
    with engine.begin() as conn:
        insert_devices(conn, rows)
    sessions = {row[1]: row[5] for row in rows}
    with ingest_client(settings) as _client, web_server(settings, workers=2) as _web:
        # Every board heard from once since the ingest client started: its first sweep (the presence timeout after
        # it connected) would otherwise take the devices it found online in the database offline.
        publish(settings, "photoresistor/status", [f"{name};{session};50" for name, session in sessions.items()])
        context = browser.new_context(viewport=DESKTOP)  # type: ignore[arg-type]
        errors: list[str] = []
        try:
            page = context.new_page()
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(web_url(settings, "/capteurs"))
            expect(page.locator('[data-live-status][data-state="live"]')).to_be_visible(timeout=20_000)

            # One page of cards, by name, not 3,000; the count of all of them.
            cards = page.locator("[data-card]")
            expect(cards).to_have_count(pages.CARDS_PAGE)
            assert page.locator("[data-cards][data-paged]").count() == 1
            expect(cards.first).to_have_attribute("data-session-name", "capteur0001")
            expect(page.locator("[data-page-summary]")).to_contain_text(f"{DEVICES} appareils correspondent")

            # A card in view follows its device's readings live.
            first = page.locator('[data-card][data-session-name="capteur0001"]')
            for value in (57, 12):
                publish(settings, "photoresistor/status", [f"capteur0001;{sessions['capteur0001']};{value}"])
                expect(first.locator("[data-light-value]")).to_have_text(f"{value} %", timeout=5_000)
            # The page's second reconciliation (3 s) and the ingest client's first sweep keep the page as it is.
            page.wait_for_timeout(3 * settings.keepalive * 1000 + 500)
            expect(cards).to_have_count(pages.CARDS_PAGE)

            # The next page.
            # A navigation to the next page (paged in the database), waited for as one: a loaded machine took longer
            # than an assertion's 15 s to serve it (its first card still capteur0001 then).
            with page.expect_navigation(url=lambda url: "cursor=" in url, timeout=60_000):
                page.locator('a[rel="next"]').click()
            expect(cards.first).to_have_attribute("data-session-name", f"capteur{pages.CARDS_PAGE + 1:04d}")

            # A search among all of them, in the database.
            page.locator("[data-filter]").fill("capteur2999")
            page.locator("[data-filter]").press("Enter")
            expect(cards).to_have_count(1)
            expect(cards.first).to_have_attribute("data-session-name", "capteur2999")
            assert "q=capteur2999" in page.url
            # The new page's script is running (it sends the form when a select changes): the cards are in the
            # HTML before it runs, and a select changed earlier sends nothing (the CI run of 849e114 did that).
            expect(page.locator('[data-live-status][data-state="live"]')).to_be_visible(timeout=20_000)

            # A state filter changes the page at once (the form is sent).
            page.locator("[data-filter]").fill("")
            with page.expect_navigation(url=lambda url: "presence=hors-ligne" in url, timeout=60_000):
                page.locator("[data-presence]").select_option("hors-ligne")
            expect(page.locator("[data-no-match]")).to_be_visible()
            expect(cards).to_have_count(0)
            assert "presence=hors-ligne" in page.url
        finally:
            context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"
