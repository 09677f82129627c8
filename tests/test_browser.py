"""End to end: Debian's headless Chromium against the real stack (Mosquitto, ingest client, gunicorn) and
virtual devices."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Locator, Page, Route, expect

from sensorhub.config import Settings
from sensorhub.simulator import Fleet
from tests import screenshots
from tests.screenshots import DESKTOP, PHONE
from tests.stack import Stack, web_server, web_url
from tests.support import COUNT_RECONCILIATIONS, wait_for

pytestmark = pytest.mark.browser

_seeds = itertools.count(101)


@pytest.fixture
def fleets(stack: Stack) -> Iterator[Callable[..., Fleet]]:
    """Start fleets of virtual devices. The module's tests share conftest's `stack`: afterwards a component the
    test stopped runs again, the fleets leave (gracefully) and the database has them offline, so that the next
    test starts with no device online."""
    started: list[Fleet] = []

    def start(count: int = 1, interval: float = 0.5, wait: bool = True) -> Fleet:
        fleet = Fleet(stack.settings, count, interval, mqtt_version="5", seed=next(_seeds), button_every=None)
        fleet.start()
        started.append(fleet)
        if wait:
            fleet.wait_joined(10)
        return fleet

    yield start
    stack.restart_stopped()
    for fleet in started:
        fleet.stop()
    wait_for(lambda: not stack.api("/api/devices?online=1"), 15, what="every device of the test offline")


def new_page(browser: Browser, viewport: dict[str, int] | None = None,
             timezone: str | None = None) -> tuple[Page, list[str]]:
    context = browser.new_context(viewport=viewport or DESKTOP, timezone_id=timezone)  # type: ignore[arg-type]
    context.add_init_script(COUNT_RECONCILIATIONS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("console", lambda message: errors.append(message.text) if "Content Security Policy" in message.text
            else None)
    return page, errors


@pytest.fixture
def page(browser: Browser, stack: Stack) -> Iterator[Page]:
    """A desktop page, closed before the stack stops (gunicorn would wait for its keep-alive connections)."""
    opened, errors = new_page(browser)
    yield opened
    opened.context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def open_capteurs(page: Page, stack: Stack) -> None:
    page.goto(stack.url("/capteurs"))
    expect(page.locator('[data-live-status][data-state="live"]')).to_be_visible(timeout=10_000)


def card(page: Page, session_name: str) -> Locator:
    return page.locator(f'[data-card][data-session-name="{session_name}"]')


def name_of(fleet: Fleet, i: int) -> str:
    name = fleet.devices[i].name
    assert name is not None
    return name


def recorded(stack: Stack, session_name: str) -> bool:
    """Whether the ingest client has the device online in the database."""
    return any(d["session_name"] == session_name and d["online"] for d in stack.api("/api/devices"))


def watch_button(page: Page, session_name: str) -> float:
    """Record in the page when the card's button first shows 'appuyé'; return the page's clock now (ms)."""
    return float(page.evaluate(
        """(name) => {
            const card = [...document.querySelectorAll('[data-card]')].find((c) => c.dataset.sessionName === name);
            const state = card.querySelector('[data-button-state]');
            window.__pressedAt = null;
            new MutationObserver(() => {
                if (state.textContent === 'appuyé' && window.__pressedAt === null) {
                    window.__pressedAt = performance.now();
                }
            }).observe(state, {childList: true, characterData: true, subtree: true});
            return performance.now();
        }""",
        session_name,
    ))


def pressed_latency(page: Page, since: float) -> float:
    page.wait_for_function("window.__pressedAt !== null", timeout=3_000)
    return float(page.evaluate("window.__pressedAt")) - since


# -- live /capteurs ----------------------------------------------------------------------------------------------


def test_a_device_that_joins_after_the_page_loaded_appears(page: Page, stack: Stack,
                                                           fleets: Callable[..., Fleet]) -> None:
    open_capteurs(page, stack)
    expect(page.get_by_text("Aucun capteur connecté pour le moment")).to_be_visible()
    page.evaluate("window.__sameDocument = true")
    fleet = fleets(1, interval=0.3)
    shown = card(page, name_of(fleet, 0))
    expect(shown).to_be_visible(timeout=5_000)
    expect(shown.locator("[data-device-name]")).to_have_text(name_of(fleet, 0))
    expect(page.get_by_text("Aucun capteur connecté pour le moment")).to_be_hidden()
    # Light readings keep coming into the chart, never more than 10 points.
    page.wait_for_function(
        """(name) => {
            const card = [...document.querySelectorAll('[data-card]')].find((c) => c.dataset.sessionName === name);
            const chart = card && window.Chart.getChart(card.querySelector('canvas'));
            return chart && chart.data.datasets[0].data.length >= 3;
        }""", arg=name_of(fleet, 0), timeout=5_000)
    expect(shown.locator("[data-light-value]")).to_have_text(f"{fleet.devices[0].light} %", timeout=3_000)
    assert page.evaluate("window.__sameDocument") is True  # no reload


def has_chart(page: Page, session_name: str) -> bool:
    """Whether the card of `session_name` holds a Chart.js chart now."""
    return bool(page.evaluate(
        """(name) => {
            const card = [...document.querySelectorAll('[data-card]')].find((c) => c.dataset.sessionName === name);
            return Boolean(card && window.Chart.getChart(card.querySelector('[data-chart]')));
        }""", session_name))


def test_a_fleet_that_grows_large_keeps_charts_for_the_cards_in_view_only(
        page: Page, stack: Stack, fleets: Callable[..., Fleet]) -> None:
    """At 13 devices the page stops drawing every chart: the cards in view keep theirs (the browser says which
    cards are in view once they are `content-visibility: auto`), those far below have none until scrolled to."""
    small = fleets(12, interval=2.0)
    open_capteurs(page, stack)
    first, last = name_of(small, 0), name_of(small, 11)
    wait_for(lambda: has_chart(page, first) and has_chart(page, last), 10, what="every chart of a small fleet")
    more = fleets(2, interval=2.0)
    expect(page.locator("[data-card]")).to_have_count(14, timeout=10_000)
    expect(page.locator("[data-cards]")).to_have_class(re.compile(r"\bis-large\b"))
    names = sorted([name_of(small, i) for i in range(12)] + [name_of(more, i) for i in range(2)])
    top, bottom = names[0], names[-1]  # a large fleet is in name order
    assert card(page, bottom).evaluate("(c) => c.getBoundingClientRect().top > 2 * window.innerHeight")
    wait_for(lambda: has_chart(page, top) and not has_chart(page, bottom), 10,
             what="a chart for the first card, none for the last one, far below")
    card(page, bottom).scroll_into_view_if_needed()
    wait_for(lambda: has_chart(page, bottom), 10, what="the chart of the card scrolled into view")


def test_a_button_press_shows_within_a_second(page: Page, stack: Stack, fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(1, interval=1.0)
    wait_for(lambda: recorded(stack, name_of(fleet, 0)), 5, what="the join to be recorded")
    open_capteurs(page, stack)
    expect(card(page, name_of(fleet, 0))).to_be_visible()
    since = watch_button(page, name_of(fleet, 0))
    fleet.press_button(0)
    assert pressed_latency(page, since) < 1000
    expect(card(page, name_of(fleet, 0)).locator("[data-button-state]")).to_have_text("relâché")


def test_the_led_toggle_switches_the_device_and_every_browser_follows(
        browser: Browser, page: Page, stack: Stack, fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(1, interval=1.0)
    wait_for(lambda: recorded(stack, name_of(fleet, 0)), 5, what="the join to be recorded")
    other, other_errors = new_page(browser)
    try:
        open_capteurs(page, stack)
        open_capteurs(other, stack)
        mine, theirs = card(page, name_of(fleet, 0)), card(other, name_of(fleet, 0))
        expect(theirs.locator("[data-led-state]")).to_have_text("éteinte")  # reported when its session started
        mine.locator("[data-led-toggle]").click()
        wait_for(lambda: fleet.devices[0].led, 5, what="the simulated LED to switch on")
        expect(theirs.locator("[data-led-state]")).to_have_text("allumée", timeout=3_000)
        expect(theirs.locator("[data-led-toggle]")).to_be_checked()
        expect(mine.locator("[data-led-state]")).to_have_text("allumée")
        expect(mine.locator("[data-pending]")).to_be_hidden()
        expect(mine.locator("[data-led-toggle]")).to_be_enabled()
        # And back, from the other browser.
        theirs.locator("[data-led-toggle]").click()
        wait_for(lambda: not fleet.devices[0].led, 5, what="the simulated LED to switch off")
        expect(mine.locator("[data-led-state]")).to_have_text("éteinte", timeout=3_000)
        expect(mine.locator("[data-led-toggle]")).not_to_be_checked()
        expect(mine.locator("[data-card-error]")).to_be_hidden()
    finally:
        other.context.close()
    assert other_errors == []


def test_devices_that_leave_or_crash_disappear(page: Page, stack: Stack, fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(3, interval=1.0)
    names = [name_of(fleet, i) for i in range(3)]
    wait_for(lambda: all(recorded(stack, n) for n in names), 5, what="the joins to be recorded")
    open_capteurs(page, stack)
    for name in names:
        expect(card(page, name)).to_be_visible()
    fleet.leave(0)
    expect(card(page, names[0])).to_have_count(0, timeout=5_000)
    fleet.crash(1)  # no DISCONNECT: the broker publishes the device's Will on state/leave
    expect(card(page, names[1])).to_have_count(0, timeout=5_000)
    expect(card(page, names[2])).to_be_visible()


def test_a_failed_led_command_is_shown_on_the_card(page: Page, stack: Stack, fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(1, interval=1.0)
    wait_for(lambda: recorded(stack, name_of(fleet, 0)), 5, what="the join to be recorded")
    open_capteurs(page, stack)
    shown = card(page, name_of(fleet, 0))
    expect(shown).to_be_visible()
    stack.client.stop()
    shown.locator("[data-led-toggle]").click()
    error = shown.locator("[data-card-error]")
    expect(error).to_be_visible(timeout=3_000)
    expect(error).to_contain_text("le client d'ingestion ne tourne pas")
    expect(shown.locator("[data-led-toggle]")).not_to_be_checked()  # reverted: the UI does not pretend
    expect(shown.locator("[data-led-toggle]")).to_be_enabled()
    expect(shown.locator("[data-led-state]")).to_have_text("éteinte")
    assert fleet.devices[0].led is False


def test_joins_and_leaves_before_the_page_subscribed_are_reconciled(
        page: Page, stack: Stack, fleets: Callable[..., Fleet]) -> None:
    """Events between the server rendering the page and MQTT.js subscribing (the seed's critical section)."""
    first = fleets(2, interval=1.0)
    names = [name_of(first, 0), name_of(first, 1)]
    wait_for(lambda: all(recorded(stack, n) for n in names), 5, what="the joins to be recorded")
    later: list[Fleet] = []

    def hold_mqtt_library(route: Route) -> None:
        # The page is rendered (with both devices) but cannot subscribe yet: one leaves, another joins.
        first.leave(0)
        later.append(fleets(1, interval=1.0))
        joined = name_of(later[0], 0)
        wait_for(lambda: recorded(stack, joined) and not recorded(stack, names[0]), 5, what="the changes")
        route.continue_()

    page.route("**/static/vendor/mqtt.min.js", hold_mqtt_library)
    page.goto(stack.url("/capteurs"))
    expect(page.locator('[data-live-status][data-state="live"]')).to_be_visible(timeout=15_000)
    expect(card(page, name_of(later[0], 0))).to_be_visible(timeout=5_000)
    expect(card(page, names[0])).to_have_count(0, timeout=5_000)
    expect(card(page, names[1])).to_be_visible()


def test_joins_and_leaves_during_the_reconciliation_fetch_are_kept(
        page: Page, stack: Stack, fleets: Callable[..., Fleet]) -> None:
    """The list of online devices is read, then a device leaves and another joins before it arrives."""
    first = fleets(1, interval=1.0)
    leaving = name_of(first, 0)
    wait_for(lambda: recorded(stack, leaving), 5, what="the join to be recorded")
    later: list[Fleet] = []

    def stale_list(route: Route) -> None:
        if later:
            route.continue_()
            return
        snapshot = route.fetch()  # the server's list now, before the events below
        first.leave(0)
        later.append(fleets(1, interval=1.0))
        joined = name_of(later[0], 0)
        wait_for(lambda: recorded(stack, joined) and not recorded(stack, leaving), 5, what="the changes")
        # The page hears both over MQTT meanwhile: the leaving card goes, the newcomer's comes.
        page.wait_for_function(
            "([gone, come]) => !document.querySelector(`[data-card][data-session-name='${gone}']`)"
            " && document.querySelector(`[data-card][data-session-name='${come}']`)", arg=[leaving, joined],
            timeout=5_000)
        route.fulfill(response=snapshot)

    page.route("**/sensor/online", stale_list)
    page.goto(stack.url("/capteurs"))
    deadline = time.monotonic() + 15
    while not later:  # route handlers run while the test waits inside Playwright
        assert time.monotonic() < deadline, "the page never fetched /sensor/online"
        page.wait_for_timeout(50)
    joined = name_of(later[0], 0)
    # The cards right after each reconciliation: the stale list first, the true one 3 s after connecting.
    for generation in (1, 2):
        shown = page.wait_for_function(
            """([generation, names]) => window.__reconciliations === generation
                && names.map((name) => Boolean(document.querySelector(`[data-card][data-session-name='${name}']`)))""",
            arg=[generation, [joined, leaving]], timeout=6_000).json_value()
        assert shown == [True, False], f"after reconciliation {generation}: {joined} shown, {leaving} gone"


def test_a_device_joining_right_after_navigation_is_shown(page: Page, stack: Stack,
                                                          fleets: Callable[..., Fleet]) -> None:
    page.goto(stack.url("/capteurs"), wait_until="commit")
    fleet = fleets(1, interval=1.0, wait=False)
    fleet.wait_joined(10)
    expect(card(page, name_of(fleet, 0))).to_be_visible(timeout=8_000)
    expect(page.locator('[data-live-status][data-state="live"]')).to_be_visible()


def test_losing_the_broker_shows_a_banner_and_reconnects(page: Page, stack: Stack,
                                                         fleets: Callable[..., Fleet]) -> None:
    open_capteurs(page, stack)
    banner = page.locator("[data-broker-banner]")
    expect(banner).to_be_hidden()
    stack.broker.stop()
    expect(banner).to_be_visible(timeout=10_000)
    expect(banner).to_contain_text("Connexion au broker MQTT perdue")
    expect(page.locator('[data-live-status][data-state="lost"]')).to_be_visible()
    stack.broker.start()
    expect(page.locator('[data-live-status][data-state="live"]')).to_be_visible(timeout=10_000)
    expect(banner).to_be_hidden()
    fleet = fleets(1, interval=1.0)  # subscribed again: a new device shows up
    expect(card(page, name_of(fleet, 0))).to_be_visible(timeout=5_000)


@pytest.mark.own_stack  # /historique lists every device: this one alone
def test_renaming_from_the_page_keeps_the_live_session(page: Page, stack: Stack,
                                                       fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(1, interval=1.0)
    session_name = name_of(fleet, 0)
    wait_for(lambda: recorded(stack, session_name), 5, what="the join to be recorded")
    open_capteurs(page, stack)
    shown = card(page, session_name)
    shown.get_by_role("button", name=f"Renommer {session_name}").click()
    field = shown.locator("input[name=name]")
    field.fill("salle;B")
    shown.get_by_role("button", name="Enregistrer").click()
    expect(shown.locator(".rename-status")).to_contain_text("« ; »")
    field.fill("salle B")
    shown.get_by_role("button", name="Enregistrer").click()
    expect(shown.locator("[data-device-name]")).to_have_text("salle B", timeout=5_000)
    expect(shown.locator("[data-rename-form]")).to_be_hidden()
    # The device still publishes as its session name: its card keeps following it.
    since = watch_button(page, session_name)
    fleet.press_button(0)
    assert pressed_latency(page, since) < 1000
    assert fleet.devices[0].name == session_name
    page.goto(stack.url("/historique"))
    expect(page.locator("[data-card] [data-device-name]")).to_have_text("salle B")


# -- /historique, layout, small screens --------------------------------------------------------------------------


def test_historique_shows_the_recorded_values(page: Page, stack: Stack, fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(2, interval=0.2)
    fleet.press_button(0)
    device_id = next(d["id"] for d in stack.api("/api/devices") if d["session_name"] == name_of(fleet, 0))
    quiet_id = next(d["id"] for d in stack.api("/api/devices") if d["session_name"] == name_of(fleet, 1))
    wait_for(lambda: len(stack.api(f"/api/devices/{device_id}")["history"]["light"]) >= 5, 5, what="readings")
    page.goto(stack.url("/historique"))
    recorded_light = {v["at"]: v["value"] for v in stack.api(f"/api/devices/{device_id}")["history"]["light"]}
    shown = page.locator(f"#appareil-{device_id}")
    expect(shown.locator("[data-device-name]")).to_have_text(name_of(fleet, 0))
    items = shown.locator('[data-kind="light"] li')
    assert items.count() >= 5
    moments = []
    for i in range(items.count()):
        at = items.nth(i).locator("time").get_attribute("datetime")
        assert at is not None
        moments.append(at)
        # The browser's time zone (the test context's: UTC), the UTC value on hover.
        assert items.nth(i).locator("time").inner_text() == f"{at[8:10]}/{at[5:7]}/{at[:4]} {at[11:19]},{at[20:23]}"
        assert items.nth(i).locator("time").get_attribute("title") == f"{at[:10]} {at[11:23]} UTC"
        assert items.nth(i).locator(".value").inner_text() == f"{recorded_light[at]} %"
    assert moments == sorted(moments, reverse=True)  # newest first
    expect(shown.locator('[data-kind="button"] .value')).to_have_text(["relâché", "appuyé"])
    expect(shown.locator('[data-kind="led"] .value')).to_have_text(["éteinte"])
    # a device whose button nobody pressed says so
    expect(page.locator(f'#appareil-{quiet_id} [data-kind="button"]')).to_contain_text("Aucune valeur enregistrée")


def expect_toggle_offers(page: Page, target: str) -> None:
    """The layout button's label and icon name `target`; aria-pressed says whether the list is shown."""
    toggle = page.locator("[data-layout-toggle]")
    expect(toggle).to_have_text("Afficher en liste" if target == "list" else "Afficher en grille")
    expect(toggle.locator(f'[data-layout-icon="{target}"]')).to_be_visible()
    expect(toggle.locator("[data-layout-icon]:visible")).to_have_count(1)
    expect(toggle).to_have_attribute("aria-pressed", "false" if target == "list" else "true")


def test_the_layout_toggle_switches_and_is_remembered(page: Page, stack: Stack,
                                                      fleets: Callable[..., Fleet]) -> None:
    fleets(2, interval=1.0)
    open_capteurs(page, stack)
    cards = page.locator("[data-cards]")
    expect(cards).to_have_class("cards layout-grid")
    toggle = page.get_by_role("button", name="Afficher en liste")  # the layout it switches to
    expect_toggle_offers(page, "list")
    toggle.click()
    expect(cards).to_have_class("cards layout-list")
    expect_toggle_offers(page, "grid")
    page.reload()
    expect(page.locator("[data-cards]")).to_have_class("cards layout-list")
    expect_toggle_offers(page, "grid")
    page.goto(stack.url("/historique"))
    expect(page.locator("[data-cards]")).to_have_class("cards layout-list")
    expect_toggle_offers(page, "grid")
    page.get_by_role("button", name="Afficher en grille").click()
    expect(page.locator("[data-cards]")).to_have_class("cards layout-grid")
    expect_toggle_offers(page, "list")
    page.goto(stack.url("/capteurs"))
    expect(page.locator("[data-cards]")).to_have_class("cards layout-grid")


def test_the_filter_bar_hides_other_cards(page: Page, stack: Stack, fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(3, interval=1.0)
    wait_for(lambda: all(recorded(stack, name_of(fleet, i)) for i in range(3)), 5, what="the joins")
    open_capteurs(page, stack)
    wanted = fleet.devices[1]
    page.locator("[data-filter]").fill(wanted.mac[-5:].lower())
    expect(page.locator("[data-card]:visible")).to_have_count(1)
    expect(card(page, name_of(fleet, 1))).to_be_visible()
    count = page.locator("[data-filter-count]")
    expect(count).to_have_text("1 appareil affiché sur 3")
    page.locator("[data-filter]").fill("aucun-appareil-ne-porte-ce-nom")
    expect(count).to_have_text("0 appareil affiché sur 3")
    expect(page.get_by_text("Aucun capteur ne correspond au filtre.")).to_be_visible()
    page.locator("[data-filter]").fill("capteur")
    expect(count).to_have_text("3 appareils affichés sur 3")
    page.locator("[data-filter]").fill("")
    expect(count).to_be_hidden()


def no_horizontal_scroll(page: Page) -> None:
    width = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert width[0] <= width[1] == PHONE["width"], width


def test_a_375px_phone_needs_no_horizontal_scrolling(browser: Browser, stack: Stack,
                                                     fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(3, interval=0.5)
    wait_for(lambda: all(recorded(stack, name_of(fleet, i)) for i in range(3)), 5, what="the joins")
    phone, errors = new_page(browser, PHONE)
    try:
        open_capteurs(phone, stack)
        expect(phone.locator("[data-card]")).to_have_count(3)
        no_horizontal_scroll(phone)
        phone.locator("[data-layout-toggle]").click()
        no_horizontal_scroll(phone)
        phone.locator("[data-layout-toggle]").click()
        for path in ("/historique", "/accueil", "/aide"):
            phone.goto(stack.url(path))
            no_horizontal_scroll(phone)
    finally:
        phone.context.close()
    assert errors == []


@pytest.fixture
def site(stack: Stack) -> Callable[[str], str]:
    """A function giving a path's URL on the module's web server (/aide needs nothing else)."""
    return stack.url


#: For every element of the channels table: its right edge beyond the box's, and its text nodes that take more
#: than one line (a word broken in two: channel names and example parts must not).
CHANNELS_LAYOUT = """() => {
    const box = document.querySelector('.table-wrap');
    const right = box.getBoundingClientRect().right;
    // Column headings hidden in a 1 px clipped box (for screen readers) are not seen.
    const seen = (el) => !el.closest('thead') || el.closest('thead').getBoundingClientRect().width > 1;
    const beyond = [...box.querySelectorAll('*')]
        .filter((el) => seen(el) && el.getBoundingClientRect().right > right + 0.5)
        .map((el) => `${el.tagName.toLowerCase()} ${el.textContent.trim().slice(0, 30)}`);
    const broken = [];
    for (const code of box.querySelectorAll('code')) {
        const walker = document.createTreeWalker(code, NodeFilter.SHOW_TEXT);
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
            const range = document.createRange();
            range.selectNodeContents(node);
            const lines = new Set([...range.getClientRects()].map((rect) => Math.round(rect.top)));
            if (lines.size > 1) broken.push(node.textContent);
        }
    }
    return {beyond, broken, scrollable: getComputedStyle(box).overflowX !== 'visible'
        && box.scrollWidth > box.clientWidth};
}"""


@pytest.mark.parametrize("width", [PHONE["width"], 800, DESKTOP["width"]])
def test_the_channels_table_fits_its_box_or_scrolls_and_breaks_no_word(browser: Browser, site: Callable[[str], str],
                                                                      width: int) -> None:
    page, errors = new_page(browser, {"width": width, "height": 800})
    try:
        page.goto(site("/aide"))
        expect(page.locator(".channels tbody tr")).to_have_count(7)
        layout = page.evaluate(CHANNELS_LAYOUT)
        assert layout["broken"] == [], f"words broken across lines at {width} px"
        assert layout["scrollable"] or layout["beyond"] == [], f"cut off, not scrollable, at {width} px: {layout}"
        if width == PHONE["width"]:
            # On a phone nothing has to be scrolled to: each channel is a card, the example under its label.
            assert not layout["scrollable"] and layout["beyond"] == [], layout
            row = page.locator(".channels tbody tr").filter(has_text="state/nameAssign")
            example = row.locator('td[data-label="Exemple"]')
            expect(example).to_contain_text("61:EC:ED:3B:25:B1;capteur01;1743946777.603371")
            label = example.evaluate("(td) => getComputedStyle(td, '::before').content")
            assert label == '"Exemple"'
            no_horizontal_scroll(page)
    finally:
        page.context.close()
    assert errors == []


@pytest.mark.own_stack  # every device listed, as `make screenshots` on a fresh database
def test_the_screenshot_scenario_checks_every_page(browser: Browser, stack: Stack, fleets: Callable[..., Fleet],
                                                   tmp_path: Path) -> None:
    """What `make screenshots` does, into a temporary directory: never into docs/screenshots. Every page in both
    languages, at the phone's width only (the desktop's is the same code with another viewport, twice the CPU)."""
    fleet = fleets(screenshots.DEVICES, interval=0.5)
    wait_for(lambda: all(recorded(stack, name_of(fleet, i)) for i in range(screenshots.DEVICES)), 5,
             what="the joins")
    taken = screenshots.take(browser, stack.url, fleet, tmp_path / "shots", viewports=(screenshots.PHONE,))
    assert [path.name for path in taken] == [name for name in screenshots.SHOTS if name.endswith("-375.png")]
    assert len(taken) == len(screenshots.PAGES) * len(screenshots.LANGUAGES)
    assert sorted(path.name for path in (tmp_path / "shots").iterdir()) == sorted(path.name for path in taken)
    for path in taken:
        assert path.parent == tmp_path / "shots"
        width, height = screenshots.png_size(path)
        assert width == screenshots.SHOTS[path.name]["width"], path.name
        assert height >= screenshots.SHOTS[path.name]["height"] // 2, path.name  # full pages, not a strip
        assert path.stat().st_size > 10_000, path.name  # not a blank page


# -- a device over time ------------------------------------------------------------------------------------------


def thirty_days(engine: Any) -> int:
    """A device with 30 days of readings (light every 5 minutes, LED every 2 hours), roll-ups built."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import text

    from sensorhub.db.latest import refresh_latest
    from sensorhub.db.rollups import rebuild
    from sensorhub.timestamps import format_micros, to_micros
    from tests.factories import add_device

    now = datetime.now(UTC)
    device = add_device(engine, "salle B", 1, joined=now - timedelta(days=31), online=False, last_seen=now)
    start = to_micros(now - timedelta(days=30))
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO light_reading (device_id, at, value) VALUES (:d, :at, :v)"), [
            {"d": device, "at": format_micros(start + n * 300_000_000), "v": 50 + (n * 7) % 40}
            for n in range(30 * 288)])
        conn.execute(text("INSERT INTO led_reading (device_id, at, value) VALUES (:d, :at, :v)"), [
            {"d": device, "at": format_micros(start + n * 7_200_000_000), "v": n % 2} for n in range(30 * 12)])
        rebuild(conn)
        refresh_latest(conn, [device])
    return device


def chart_points(page: Page, name: str) -> list[int]:
    return list(page.evaluate(
        "(name) => Chart.getChart(document.querySelector(`[data-chart=\"${name}\"]`)).data.datasets"
        ".map((set) => set.data.length)", name))


def test_a_devices_30_day_chart_renders_in_local_time(browser: Browser, settings: Settings, engine: Any) -> None:
    device = thirty_days(engine)
    with web_server(settings, workers=1):
        page, errors = new_page(browser, timezone="Europe/Paris")
        try:
            page.goto(web_url(settings, f"/appareil/{device}?periode=30j"))
            root = page.locator('[data-device-page][data-state="ready"]')
            expect(root).to_have_attribute("data-bucket", "1h", timeout=15_000)
            assert page.locator('[data-range="30j"]').get_attribute("aria-pressed") == "true"
            light = chart_points(page, "light")
            assert len(light) == 3 and 700 <= light[2] <= 721, light  # min, max (the band), mean: hourly buckets
            assert chart_points(page, "state")[0] > 300  # the LED's share of each hour on
            # Each LED state holds until the next reading: Chart.js's "before" steps (its "after" would not).
            assert page.evaluate("Chart.getChart(document.querySelector('[data-chart=\"state\"]'))"
                                 ".data.datasets.map((set) => set.stepped)") == ["before", "before"]
            drawn = page.evaluate("""() => {
                const canvas = document.querySelector('[data-chart="light"]');
                const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
                let inked = 0;
                for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) inked += 1;
                return inked / (canvas.width * canvas.height);
            }""")
            assert drawn > 0.05, f"the chart looks empty ({drawn:.1%} of the canvas drawn)"
            summary = page.locator("[data-summary]").inner_text()
            assert "heure de votre navigateur" in summary and "heures (min, moyenne, max)" in summary
            csv_href = page.locator("[data-csv]").get_attribute("href")
            assert csv_href is not None and csv_href.startswith(f"/api/export.csv?device={device}&from=")
            # Times on the page are Paris time (UTC+1 in winter), UTC on hover.
            seen = page.locator("time").first
            at = seen.get_attribute("datetime")
            assert at is not None
            from datetime import datetime, timedelta
            from zoneinfo import ZoneInfo

            local = datetime.fromisoformat(at).astimezone(ZoneInfo("Europe/Paris"))
            assert seen.inner_text() == local.strftime("%d/%m/%Y %H:%M:%S")
            assert seen.get_attribute("title") == f"{at[:10]} {at[11:19]} UTC"
            # The last hour: raw readings; a custom range: in the address, to be shared.
            page.locator('[data-range="1h"]').click()
            expect(root).to_have_attribute("data-bucket", "raw")
            page.locator('[data-range="custom"]').click()
            ten_days_ago = (local - timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%S")
            page.locator('input[name="from"]').fill(ten_days_ago)
            page.locator('[data-custom-range] button[type="submit"]').click()
            expect(root).to_have_attribute("data-bucket", "1h")
            assert "du=" in page.url and "au=" in page.url
            page.set_viewport_size(PHONE)  # type: ignore[arg-type]
            page.reload()
            expect(page.locator('[data-device-page][data-state="ready"]')).to_be_visible(timeout=15_000)
            no_horizontal_scroll(page)
        finally:
            page.context.close()
    assert errors == []


def test_a_new_devices_charts_start_at_its_first_reading_with_bands_and_room_between_labels(
        browser: Browser, settings: Settings, engine: Any) -> None:
    # On a fresh demo every period showed a sliver at the right edge; at 375 px the times ran together
    # ("04:2904:3704:45"); LED and button were drawn as "état 0-100 %".
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import text

    from sensorhub.db.latest import refresh_latest
    from sensorhub.db.rollups import rebuild
    from sensorhub.timestamps import format_micros, to_micros
    from tests.factories import add_device

    now = datetime.now(UTC)
    device = add_device(engine, "neuf", 1, joined=now - timedelta(minutes=20), last_seen=now)
    first = to_micros(now - timedelta(minutes=15))
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO light_reading (device_id, at, value) VALUES (:d, :at, :v)"),
                     [{"d": device, "at": format_micros(first + n * 10_000_000), "v": 40 + n % 20}
                      for n in range(90)])
        conn.execute(text("INSERT INTO led_reading (device_id, at, value) VALUES (:d, :at, :v)"),
                     [{"d": device, "at": format_micros(first + n * 120_000_000), "v": n % 2} for n in range(7)])
        rebuild(conn)
        refresh_latest(conn, [device])
    with web_server(settings, workers=1):
        page, errors = new_page(browser, viewport=PHONE)
        try:
            page.goto(web_url(settings, f"/appareil/{device}?periode=24h"))
            expect(page.locator('[data-device-page][data-state="ready"]')).to_be_visible(timeout=15_000)
            scale = page.evaluate("""() => {
                const x = Chart.getChart(document.querySelector('[data-chart="light"]')).scales.x;
                return {min: x.min, max: x.max, ticks: x.ticks.length};
            }""")
            first_ms = first / 1000
            assert first_ms - 60_000 <= scale["min"] <= first_ms, scale  # not 24 h before now
            assert 2 <= scale["ticks"] <= 4, scale  # as many labels as fit at 375 px
            labels = page.evaluate("""() => Chart.getChart(document.querySelector('[data-chart="state"]'))
                .scales.y.ticks.map((tick) => tick.label).filter((label) => label)""")
            assert labels == ["bouton", "LED"], labels
            no_horizontal_scroll(page)
        finally:
            page.context.close()
    assert errors == []
