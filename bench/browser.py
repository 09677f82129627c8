"""Publish -> /capteurs updated: the time from a device's MQTT publish to the changed text in Chromium."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from playwright.sync_api import Browser, Playwright, sync_playwright

from bench.scenarios import QUICK, Figure, Sizes, percentile
from bench.stack import Stack
from sensorhub.simulator import Fleet
from tests.support import CHROMIUM, CHROMIUM_ARGS, COUNT_RECONCILIATIONS

WATCH = """() => {
    window.__updates = [];
    for (const card of document.querySelectorAll('[data-card]')) {
        const value = card.querySelector('[data-light-value]');
        new MutationObserver(() => window.__updates.push([card.dataset.sessionName, value.textContent, Date.now()]))
            .observe(value, {childList: true, characterData: true, subtree: true});
    }
}"""


#: The Chromium a quick run's scenarios share (`chromium(keep=True)`), until `close_kept()`.
_KEPT: list[tuple[Playwright, Browser]] = []


@contextmanager
def chromium(keep: bool = False) -> Iterator[Browser]:
    """A headless Chromium of its own, closed on the way out; with `keep` (a quick run, the smoke run) the same one
    for every scenario until `close_kept()`, each scenario's pages closed on the way out: Playwright's driver and a
    Chromium launch are 1.5 s of CPU, and the smoke run measures no figure against a target."""
    if not keep:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                yield browser
            finally:
                browser.close()
        return
    if not _KEPT:
        playwright = sync_playwright().start()
        try:
            _KEPT.append((playwright, playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                                 args=CHROMIUM_ARGS)))
        except BaseException:
            playwright.stop()
            raise
    browser = _KEPT[0][1]
    try:
        yield browser
    finally:
        for context in browser.contexts:
            context.close()


def close_kept() -> None:
    """Close the Chromium a quick run's scenarios shared, if any."""
    while _KEPT:
        playwright, browser = _KEPT.pop()
        try:
            browser.close()
        finally:
            playwright.stop()


def browser_latency(stack: Stack, sizes: Sizes, devices: int = 10) -> Figure:
    """Light readings published by simulated devices, watched in /capteurs with a MutationObserver."""
    fleet = Fleet(stack.settings, count=devices, interval=86_400, button_every=None, seed=23)
    fleet.start()
    delays: list[float] = []
    try:
        fleet.wait_joined(30)
        with chromium(keep=sizes is QUICK) as browser:
            page = browser.new_page()
            page.add_init_script(COUNT_RECONCILIATIONS)
            page.goto(f"http://127.0.0.1:{stack.settings.web_port}/capteurs")
            page.locator("[data-card]").nth(devices - 1).wait_for(timeout=20_000)
            page.locator("[data-live-status][data-state='live']").wait_for(timeout=20_000)
            page.wait_for_function("() => window.__reconciliations > 0", timeout=20_000)  # the server's list applied
            page.evaluate(WATCH)
            for event in range(sizes.browser_events):
                index = event % devices
                device = fleet.devices[index]
                value = (device.light + 37) % 101
                published = time.time() * 1000
                fleet.set_light(index, value)
                text = f"{value} %"
                shown = None
                deadline = time.monotonic() + 5
                while shown is None and time.monotonic() < deadline:
                    # page.evaluate goes through the debugging protocol, which the page's CSP allows
                    shown = page.evaluate(
                        "([name, text]) => (window.__updates.find(u => u[0] === name && u[1] === text) || [])[2]"
                        " ?? null", [device.name, text])
                    time.sleep(0.002)
                if shown is None:
                    raise TimeoutError(f"{device.name} never showed {text}")
                delays.append(float(shown) - published)
                page.evaluate("window.__updates.length = 0")
                time.sleep(0.02)
    finally:
        fleet.stop()
    p50, p99 = percentile(delays, 0.5), percentile(delays, 0.99)
    return Figure(
        "browser_p99_ms", f"publish -> /capteurs updated in Chromium ({devices} devices)",
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(delays)} updates)", "p99 <= 100 ms", p99 <= 100,
        {"p50_ms": round(p50, 1), "p99_ms": round(p99, 1), "max_ms": round(max(delays), 1), "events": len(delays)},
    )
