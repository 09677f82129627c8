"""/capteurs with a large fleet in headless Chromium (issue 14's table): publish -> DOM for a card in view, a
join showing up, long tasks, every online device on the page, the JS heap, and the server's /api/devices and
card fragments while the fleet is online. Everything runs on this machine together (broker, ingest client,
gunicorn, virtual devices, Chromium)."""

from __future__ import annotations

import os
import random
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import psutil
from playwright.sync_api import Page

from bench.browser import chromium
from bench.processes import FleetProcess, Subscriber
from bench.scenarios import QUICK, Figure, Sizes, percentile
from bench.stack import Stack
from sensorhub.simulator import Fleet
from tests.support import COUNT_RECONCILIATIONS

#: The viewport of the measured page (a laptop).
VIEWPORT = {"width": 1280, "height": 800}

# Records every change of the probe card's light value and every card added to the list, with the page's
# wall clock (the same clock as the publisher's: one machine).
WATCH = """(probe) => {
    window.__updates = [];
    window.__added = new Map();
    const card = document.querySelector(`[data-card][data-session-name="${probe}"]`);
    card.scrollIntoView({block: 'center'});
    const value = card.querySelector('[data-light-value]');
    new MutationObserver(() => window.__updates.push([value.textContent, Date.now()]))
        .observe(value, {childList: true, characterData: true, subtree: true});
    const list = document.querySelector('[data-live]');
    new MutationObserver((records) => {
        for (const record of records) for (const node of record.addedNodes) {
            if (node.dataset && node.dataset.sessionName && !window.__added.has(node.dataset.sessionName)) {
                window.__added.set(node.dataset.sessionName, Date.now());
            }
        }
    }).observe(list, {childList: true});
    const rect = card.getBoundingClientRect();
    return rect.top >= 0 && rect.bottom <= window.innerHeight;
}"""

LONG_TASKS = """(ms) => new Promise((resolve) => {
    const tasks = [];
    const observer = new PerformanceObserver((list) => tasks.push(...list.getEntries().map((e) => e.duration)));
    observer.observe({type: 'longtask'});
    setTimeout(() => { observer.disconnect(); resolve(tasks); }, ms);
})"""


@dataclass
class Load:
    """A fleet at a rate, and one quiet probe device whose card is measured."""

    devices: int
    interval: float


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.01)


#: Where the load's time goes (ms from the navigation's start): the server's first byte, the last byte, the
#: document parsed, the scripts run (DOMContentLoaded's end), the load event.
NAVIGATION = """() => {
    const n = performance.getEntriesByType('navigation')[0];
    return {first_byte: n.responseStart, last_byte: n.responseEnd, parsed: n.domInteractive,
            scripts_done: n.domContentLoadedEventEnd, loaded: n.loadEventEnd, bytes: n.transferSize};
}"""


def _open(page: Page, url: str, online: int) -> tuple[float, dict[str, float]]:
    """Load /capteurs; the seconds until every online device has its card, and the navigation's timing."""
    started = time.monotonic()
    page.goto(url, timeout=120_000)
    page.wait_for_function("(n) => document.querySelectorAll('[data-card]').length >= n", arg=online,
                           polling=50, timeout=120_000)
    listed = time.monotonic() - started
    page.locator("[data-live-status][data-state='live']").wait_for(timeout=30_000)
    page.wait_for_function("() => window.__reconciliations > 0", timeout=30_000)  # the server's list applied
    timing = {key: round(float(value)) for key, value in page.evaluate(NAVIGATION).items()}
    return listed, timing


#: Which processes count as which part of the stack, by what their command line holds (first match wins).
PARTS = (("chromium", "chromium"), ("broker", "mosquitto"), ("web", "gunicorn"),
         ("web", "sensorhub web"), ("ingest", "sensorhub client"), ("ingest", "sensorhub.ingest"))


def _part(process: psutil.Process, named: dict[int, str]) -> str:
    """The part of the stack a process belongs to ("other" for the rest of the machine)."""
    if process.pid in named:
        return named[process.pid]
    try:
        line = " ".join(process.cmdline())
    except (psutil.Error, OSError):
        return "other"
    return next((part for part, needle in PARTS if needle in line), "other")


class CpuWatch:
    """How busy the machine was between start and `read`, and each part of the stack's share of one core."""

    def __init__(self, fleet_pid: int, subscriber_pid: int) -> None:
        self.named = {fleet_pid: "fleet", subscriber_pid: "subscriber", os.getpid(): "bench"}
        self.started = time.monotonic()
        self.machine = psutil.cpu_times()
        self.times = self._times()

    def _times(self) -> dict[int, tuple[str, float]]:
        found = {}
        for process in psutil.process_iter():
            try:
                times = process.cpu_times()
                found[process.pid] = (_part(process, self.named), times.user + times.system)
            except (psutil.Error, OSError):
                continue
        return found

    def read(self) -> dict[str, Any]:
        """`machine_busy`: share of all cores busy; `fleet_core`: the fleet's CPU per wall second; `parts`: the
        same for each part of the stack (a process started meanwhile counts from its start)."""
        wall = time.monotonic() - self.started
        before, after = self.machine, psutil.cpu_times()
        idle = (after.idle - before.idle) + (getattr(after, "iowait", 0) - getattr(before, "iowait", 0))
        total = sum(after) - sum(before)
        parts: dict[str, float] = {}
        for pid, (part, used) in self._times().items():
            parts[part] = parts.get(part, 0.0) + used - self.times.get(pid, (part, 0.0))[1]
        shares = {part: round(used / wall, 2) for part, used in sorted(parts.items(), key=lambda kv: -kv[1])}
        return {"machine_busy": round(1 - idle / total, 3) if total else 0.0,
                "fleet_core": shares.get("fleet", 0.0), "parts": shares}


def _publish_to_dom(page: Page, probe: Fleet, events: int, subscriber: Subscriber) -> tuple[list[float], list[float]]:
    """Light readings of the probe device, each timed from its publish to the changed text of its card, and to
    its arrival at a subscriber on the broker (what the broker and the machine add before the page)."""
    delays: list[float] = []
    delivered: list[float] = []
    device = probe.devices[0]
    for _ in range(events):
        value = (device.light + 37) % 101
        text = f"{value} %"
        page.evaluate("window.__updates.length = 0")
        subscriber.drain()
        published = time.time() * 1000
        probe.set_light(0, value)
        shown = None
        deadline = time.monotonic() + 10
        while shown is None and time.monotonic() < deadline:
            # The page stamps the change itself (MutationObserver, Date.now()): polling seldom keeps the
            # debugging protocol's calls, which run on the page's main thread, from weighing on what is measured.
            time.sleep(0.05)
            shown = page.evaluate("(text) => (window.__updates.find((u) => u[0] === text) || [])[1] ?? null", text)
        if shown is None:
            raise TimeoutError(f"the probe's card never showed {text}")
        delays.append(float(shown) - published)
        arrived = subscriber.arrival(value, published)
        if arrived is not None:
            delivered.append(arrived - published)
        time.sleep(0.05)
    return delays, delivered


def _join(page: Page, stack: Stack) -> float:
    """Milliseconds from a new device's join to its card on the page."""
    newcomer = Fleet(stack.settings, 1, interval=86_400, button_every=None, seed=4242)
    newcomer.start()
    try:
        _wait(lambda: newcomer.devices[0].joined, 60, "the newcomer to join")
        joined = time.time() * 1000
        name = newcomer.devices[0].name
        page.wait_for_function("(name) => window.__added.has(name)", arg=name, timeout=60_000)
        return float(page.evaluate("(name) => window.__added.get(name)", name)) - joined
    finally:
        newcomer.stop()


def _server(stack: Stack, sessions: list[tuple[str, str]], requests: int) -> dict[str, dict[str, float]]:
    """Client-side time of /api/devices and of the card fragments while the fleet is online, in ms (the fleet
    runs in another process: the client here waits for nothing of it)."""
    base = f"http://127.0.0.1:{stack.settings.web_port}"
    rng = random.Random(3)
    paths = {
        "/api/devices": lambda: "/api/devices",
        "/sensor/by-session": lambda: (lambda d: f"/sensor/by-session?name={d[0]}&session={d[1]}")(
            rng.choice(sessions)),
        "/sensor/<id>": lambda: f"/sensor/{stack.device_id(rng.choice(sessions)[0])}",
    }
    result: dict[str, dict[str, float]] = {}
    for label, path in paths.items():
        times = []
        for _ in range(requests):
            url = base + path()
            started = time.perf_counter()
            with urllib.request.urlopen(url, timeout=30) as response:
                response.read()
            times.append((time.perf_counter() - started) * 1000)
        result[label] = {"p50_ms": round(percentile(times, 0.5), 1), "p99_ms": round(percentile(times, 0.99), 1)}
    times = []
    for _ in range(max(3, requests // 20)):
        started = time.perf_counter()
        with urllib.request.urlopen(base + "/sensor/online", timeout=60) as response:
            response.read()
        times.append((time.perf_counter() - started) * 1000)
    result["/sensor/online"] = {"p50_ms": round(percentile(times, 0.5), 1),
                                             "p99_ms": round(percentile(times, 0.99), 1)}
    return result


def _heap_mb(page: Page) -> float:
    session = page.context.new_cdp_session(page)
    session.send("HeapProfiler.collectGarbage")
    used = session.send("Runtime.getHeapUsage")["usedSize"]
    session.detach()
    return float(used) / 1e6


def _measure(stack: Stack, load: Load, sizes: Sizes, *, full: bool) -> dict[str, Any]:
    fleet = FleetProcess(stack.settings, load.devices, load.interval, seed=77)
    probe = Fleet(stack.settings, 1, interval=86_400, button_every=None, seed=78)
    out: dict[str, Any] = {"devices": load.devices, "interval_s": load.interval}
    try:
        sessions = fleet.start()
        probe.start()
        probe.wait_joined(60)
        online = len(sessions) + 1
        time.sleep(2)  # the ingest client records the last joins
        with chromium(keep=sizes is QUICK) as browser:
            page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
            page.add_init_script(COUNT_RECONCILIATIONS)
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            listed, out["navigation_ms"] = _open(page, f"http://127.0.0.1:{stack.settings.web_port}/capteurs", online)
            out["listed_s"] = round(listed, 2)
            in_view = page.evaluate(WATCH, probe.devices[0].name)
            if not in_view:
                raise RuntimeError("the probe's card is not in view")
            if full:
                tasks = page.evaluate(LONG_TASKS, sizes.fleet_browser_window * 1000)
                out["long_tasks"] = {"count": len(tasks), "max_ms": round(max(tasks, default=0), 1),
                                     "share": round(sum(tasks) / (sizes.fleet_browser_window * 1000), 3)}
            probe_id = int(page.get_attribute(f'[data-card][data-session-name="{probe.devices[0].name}"]', "data-id")
                           or 0)
            subscriber = Subscriber(stack.settings, probe_id)
            subscriber.start()
            try:
                cpu = CpuWatch(fleet.process.pid or 0, subscriber.process.pid or 0)
                subscriber.mark()
                delays, delivered = _publish_to_dom(page, probe, sizes.browser_events, subscriber)
                out["cpu"] = cpu.read()
                messages, readings = subscriber.rates()
                out["feed"] = {"messages_per_s": round(messages), "readings_per_s": round(readings)}
            finally:
                subscriber.close()
            page_p99, subscriber_p99 = percentile(delays, 0.99), percentile(delivered, 0.99)
            out["publish_to_dom"] = {"p50_ms": round(percentile(delays, 0.5), 1),
                                     "p99_ms": round(page_p99, 1), "events": len(delays),
                                     "to_subscriber_p50_ms": round(percentile(delivered, 0.5), 1),
                                     "to_subscriber_p99_ms": round(subscriber_p99, 1),
                                     "to_subscriber_events": len(delivered),
                                     "page_over_subscriber_p99": round(page_p99 / subscriber_p99, 2)
                                     if delivered and subscriber_p99 > 0 else None,
                                     **out["feed"], **out["cpu"]}
            if full:
                out["join_ms"] = round(_join(page, stack), 1)
                out["heap_mb"] = round(_heap_mb(page), 1)
                out["server"] = _server(stack, sessions, sizes.web_requests)
            if errors:
                raise RuntimeError(f"JavaScript errors on the page: {errors}")
    finally:
        probe.stop()
        fleet.stop()
    return out


def _dom_text(dom: dict[str, Any]) -> str:
    """p50/p99 to the DOM, beside the same readings' p99 to the reference subscriber and the ratio of the two."""
    return (f"p50 {dom['p50_ms']} ms, p99 {dom['p99_ms']} ms ({dom['events']} updates); to a paho subscriber "
            f"(own process) p50 {dom['to_subscriber_p50_ms']}, p99 {dom['to_subscriber_p99_ms']} ms "
            f"({dom['to_subscriber_events']} arrivals); page/subscriber p99 {dom['page_over_subscriber_p99']}; "
            f"the page received {dom['readings_per_s']:,} readings/s in {dom['messages_per_s']:,} messages/s; "
            f"machine {dom['machine_busy']:.0%} busy; share of a core: "
            + ", ".join(f"{part} {share:.0%}" for part, share in dom["parts"].items()))


def fleet_browser(sizes: Sizes, shared: Stack | None = None) -> list[Figure]:
    """Issue 14's table, one line per figure: a big fleet at 1/s (every figure), then a small fast one, each on a
    stack of its own, or both on `shared` (a quick run's: what it proves is that every figure is measured)."""
    if shared is not None:
        big = _measure(shared, Load(sizes.fleet, 1.0), sizes, full=True)
        fast = _measure(shared, Load(sizes.fast_fleet, 1 / sizes.fast_rate), sizes, full=False)
    else:
        with Stack(components=("broker", "client", "web")) as stack:
            big = _measure(stack, Load(sizes.fleet, 1.0), sizes, full=True)
        with Stack(components=("broker", "client", "web")) as stack:
            fast = _measure(stack, Load(sizes.fast_fleet, 1 / sizes.fast_rate), sizes, full=False)
    n, m, rate = f"{sizes.fleet:,}", sizes.fast_fleet, sizes.fast_rate
    slow_dom, fast_dom, tasks = big["publish_to_dom"], fast["publish_to_dom"], big["long_tasks"]
    server, nav = big["server"], big["navigation_ms"]
    server_p99 = max(entry["p99_ms"] for label, entry in server.items() if label != "/sensor/online")
    window = sizes.fleet_browser_window
    return [
        Figure("fleet_dom_slow", f"publish -> DOM, card in view, {n} devices at 1/s",
               _dom_text(slow_dom),
               "p99 <= 100 ms", slow_dom["p99_ms"] <= 100, slow_dom),
        Figure("fleet_dom_fast", f"publish -> DOM, card in view, {m} devices at {rate}/s",
               _dom_text(fast_dom),
               "p99 <= 100 ms", fast_dom["p99_ms"] <= 100, {**fast_dom, "listed_s": fast["listed_s"]}),
        Figure("fleet_join_ms", f"a device that joins shows up ({n} online)", f"{big['join_ms']:.0f} ms",
               "<= 1 s", big["join_ms"] <= 1000, {"join_ms": big["join_ms"]}),
        Figure("fleet_long_tasks", f"main-thread long tasks after load ({window:g} s, {n} devices)",
               f"{tasks['count']} tasks, longest {tasks['max_ms']} ms, {tasks['share']:.1%} of the time",
               "none > 100 ms, <= 10 %", tasks["max_ms"] <= 100 and tasks["share"] <= 0.1, tasks),
        Figure("fleet_listed_s", f"every online device on the page after load ({n} + 1)",
               f"{big['listed_s']} s (first byte {nav['first_byte']} ms, last byte {nav['last_byte']}, parsed "
               f"{nav['parsed']}, scripts run {nav['scripts_done']}, {nav['bytes'] / 1e6:.1f} MB)",
               "<= 3 s", big["listed_s"] <= 3, {"listed_s": big["listed_s"], "navigation_ms": nav}),
        Figure("fleet_heap_mb", f"JS heap of /capteurs ({n} devices)", f"{big['heap_mb']} MB", "<= 150 MB",
               big["heap_mb"] <= 150, {"heap_mb": big["heap_mb"]}),
        Figure("fleet_server_p99_ms", f"p99 of /api/devices, one card, every card; {n} online",
               ", ".join(f"{label} {entry['p99_ms']}" for label, entry in server.items()) + " ms",
               "p99 <= 100 ms (not /sensor/online)", server_p99 <= 100, server),
    ]
