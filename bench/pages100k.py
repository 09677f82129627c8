"""The pages with a very large fleet (issue 28): 100,000 online boards in the database, on SQLite or PostgreSQL.

`python -m bench --scenario pages-100k [--postgresql] [--quick]`: builds the database in bulk (devices and a few
light readings each, not through MQTT), starts the broker, the ingest client and gunicorn on it, and measures
- the time to open /capteurs in headless Chromium until its cards are usable (the first card shown, the broker
  connected);
- /historique (first and next page), /api/devices (default answer, a page of `limit` after a cursor), searching a
  name and a MAC (`?q=`), server side, through gunicorn (p50 and p99 of `requests` requests each);
- /accueil's counts (db/overview.py's `presence`, straight on the database) and the whole /accueil page;
- publish -> DOM for a card in view while `rate` readings a second of the rest of the fleet flow through the
  ingest client and its live feed.
Sizes are options (`PAGES_DEVICES`, … in the environment, or `--quick`).
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import random
import re
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from bench import machine
from bench.fleet_browser import CpuWatch
from bench.processes import Subscriber
from bench.scenarios import Figure, percentile
from bench.stack import Stack
from sensorhub import supervisor
from sensorhub.db.engine import make_engine
from sensorhub.db.latest import refresh_sql
from sensorhub.db.overview import presence
from sensorhub.db.schema import init_db
from sensorhub.mqttclient import stop_loop
from sensorhub.timestamps import format_micros
from tests.factories import DEVICE_COLUMNS, device_row

#: Targets of issue 28, item 4.
OPEN_TARGET_S = 2.0
QUERY_TARGET_MS = 100.0
LIVE_TARGET_MS = 100.0
#: The whole /accueil (its counts, the traffic chart from the fleet's roll-up, joins and leaves, alerts).
ACCUEIL_TARGET_MS = 200.0
#: The bench stack's keepalive with a large fleet: the longest (3 x 11 s of presence timeout before the first sweep).
KEEPALIVE = 11


@dataclass(frozen=True)
class PagesSizes:
    """How big the scenario is (each can be set by PAGES_<NAME> in the environment)."""

    devices: int = 100_000
    readings: int = 3  # light readings per device
    requests: int = 30  # per measured request
    rate: int = 1_700  # readings a second of the fleet while the live card is measured
    live_seconds: float = 20.0


PAGES_FULL = PagesSizes()
PAGES_QUICK = PagesSizes(devices=3_000, readings=2, requests=4, rate=100, live_seconds=2.0)


def sizes_from_environment(base: PagesSizes) -> PagesSizes:
    """`base` with the sizes PAGES_DEVICES, PAGES_READINGS, … of the environment."""
    changes: dict[str, Any] = {}
    for field in fields(base):
        text = os.environ.get(f"PAGES_{field.name.upper()}")
        if text:
            changes[field.name] = type(getattr(base, field.name))(text)
    return PagesSizes(**{**base.__dict__, **changes})


def name_of(number: int) -> str:
    """Device `number`'s name."""
    return f"capteur{number:06d}"


def _rows(sizes: PagesSizes, now_us: int) -> tuple[list[tuple[Any, ...]], list[tuple[int, str, int]]]:
    rng = random.Random(28)
    joined = now_us - 3_600 * 1_000_000
    devices = [device_row(i, joined_us=joined, last_seen_us=now_us - rng.randrange(600 * 1_000_000), online=True,
                          name=name_of(i)) for i in range(1, sizes.devices + 1)]
    readings = [(i, format_micros(joined + (k + 1) * 60 * 1_000_000), rng.randrange(101))
                for i in range(1, sizes.devices + 1) for k in range(sizes.readings)]
    return devices, readings


def build(url: str, sizes: PagesSizes) -> None:
    """The database at `url` (empty), migrated, with `devices` online devices and `readings` light readings each."""
    engine = make_engine(url, create_dir=True)
    init_db(engine)
    engine.dispose()
    devices, readings = _rows(sizes, time.time_ns() // 1000)
    if url.startswith("sqlite"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"))
        db.execute("PRAGMA synchronous = OFF")
        db.executemany(f"INSERT INTO device ({', '.join(DEVICE_COLUMNS)}) VALUES "
                       f"({', '.join('?' * len(DEVICE_COLUMNS))})", devices)
        db.executemany("INSERT INTO light_reading (device_id, at, value) VALUES (?, ?, ?)", readings)
        db.execute(refresh_sql())
        db.execute("ANALYZE")
        db.commit()
        db.close()
        return
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as db:
        with db.cursor() as cursor:
            with cursor.copy(f"COPY device ({', '.join(DEVICE_COLUMNS)}) FROM STDIN") as copy:
                for row in devices:
                    copy.write_row(row)
            with cursor.copy("COPY light_reading (device_id, at, value) FROM STDIN") as copy:
                for row in readings:
                    copy.write_row(row)
            cursor.execute(f"SELECT setval(pg_get_serial_sequence('device', 'id'), {len(devices)})")
            cursor.execute(refresh_sql().encode())
        db.commit()
        db.autocommit = True
        db.execute(b"VACUUM ANALYZE")


def _get(base: str, path: str, timeout: float = 120.0) -> tuple[int, bytes, dict[str, str], float]:
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(base + path, timeout=timeout) as response:
            body = response.read()
            status, headers = response.status, dict(response.headers)
    except urllib.error.HTTPError as err:
        body, status, headers = err.read(), err.code, dict(err.headers)
    return status, body, headers, (time.perf_counter() - started) * 1000


def _timed(base: str, paths: Callable[[], str], count: int) -> dict[str, Any]:
    times, sizes, statuses = [], [], set()
    _get(base, paths())  # warm the caches and gunicorn's worker
    for _ in range(count):
        status, body, _headers, ms = _get(base, paths())
        times.append(ms)
        sizes.append(len(body))
        statuses.add(status)
    return {"p50_ms": round(statistics.median(times), 1), "p99_ms": round(percentile(times, 0.99), 1),
            "bytes": max(sizes), "status": sorted(statuses)}


def _next_link(headers: dict[str, str]) -> str | None:
    link = headers.get("Link", "")
    return link[1:link.index(">")] if link.startswith("<") and 'rel="next"' in link else None


def server_figures(base: str, sizes: PagesSizes, url: str, rng: random.Random) -> dict[str, dict[str, Any]]:
    """/historique, /api/devices, search and /accueil through gunicorn; the overview's counts on the database."""
    n = sizes.requests
    pick = lambda: rng.randint(1, sizes.devices)  # noqa: E731
    found: dict[str, dict[str, Any]] = {}
    found["historique"] = _timed(base, lambda: "/historique", n)
    _s, body, _h, _ms = _get(base, "/historique")
    link = re.search(r'<a href="([^"]+)"[^>]*rel="next"', body.decode())
    nxt = html.unescape(link[1]) if link else ""
    found["historique_next"] = _timed(base, lambda: nxt, n) if nxt else {"missing": True}
    found["api_devices"] = _timed(base, lambda: "/api/devices", max(3, n // 5))
    _s, _b, headers, _ms = _get(base, "/api/devices?limit=100")
    following = _next_link(headers)
    found["api_devices_next"] = (_timed(base, lambda: following, n) if following
                                 else {"missing": True, **_timed(base, lambda: "/api/devices?limit=100", 3)})
    found["search_name"] = _timed(base, lambda: f"/api/devices?q={name_of(pick())}", n)
    found["search_mac"] = _timed(base, lambda: "/api/devices?q=" + urllib.parse.quote(
        device_row(pick(), joined_us=0)[3][-8:]), n)
    found["search_historique"] = _timed(base, lambda: f"/historique?q={name_of(pick())}", n)
    found["accueil"] = _timed(base, lambda: "/accueil", n)
    engine = make_engine(url)
    times = []
    from datetime import UTC, datetime

    with engine.connect() as conn:
        for _ in range(n + 1):
            started = time.perf_counter()
            presence(conn, datetime.now(UTC), 60)
            times.append((time.perf_counter() - started) * 1000)
    engine.dispose()
    found["accueil_counts"] = {"p50_ms": round(statistics.median(times[1:]), 1),
                               "p99_ms": round(percentile(times[1:], 0.99), 1)}
    return found


# Records every change of the first card's light value with the page's wall clock (the publisher's: one machine).
WATCH = """() => {
    window.__updates = [];
    const card = document.querySelector('[data-card]');
    const value = card.querySelector('[data-light-value]');
    new MutationObserver(() => window.__updates.push([value.textContent, Date.now()]))
        .observe(value, {childList: true, characterData: true, subtree: true});
    return card.dataset.sessionName;
}"""
USABLE = """() => {
    const card = document.querySelector('[data-card]');
    const live = document.querySelector("[data-live-status][data-state='live']");
    return Boolean(card && live && card.getBoundingClientRect().height > 0);
}"""


class Publisher:
    """`rate` readings a second on photoresistor/status for random devices of the fleet (as their boards would),
    and one every 100 ms for the probe device, whose publish times are kept."""

    def __init__(self, port: int, sizes: PagesSizes, sessions: dict[str, str]) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pages-publisher")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.sizes = sizes
        self.sessions = sessions
        self.probe: str | None = None
        self.sent: list[tuple[int, float]] = []  # the probe's (value, wall clock ms)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        rng = random.Random(3)
        tick = 0.01
        per_tick = self.sizes.rate * tick
        owed = 0.0
        next_probe = time.monotonic()
        value = 0
        while not self.stop.is_set():
            started = time.monotonic()
            owed += per_tick
            while owed >= 1:
                owed -= 1
                name = name_of(rng.randint(1, self.sizes.devices))
                self.client.publish("photoresistor/status", f"{name};{self.sessions[name]};{rng.randrange(101)}")
            if self.probe and started >= next_probe:
                next_probe = started + 0.1
                value = (value + 7) % 101
                self.sent.append((value, time.time() * 1000))
                self.client.publish("photoresistor/status", f"{self.probe};{self.sessions[self.probe]};{value}")
            time.sleep(max(0.0, tick - (time.monotonic() - started)))

    def close(self) -> None:
        """Stop publishing and disconnect."""
        self.stop.set()
        self.thread.join(5)
        stop_loop(self.client)
        self.client.disconnect()


def browser_figures(stack: Stack, base: str, sizes: PagesSizes) -> dict[str, dict[str, Any]]:
    """/capteurs opened in Chromium (until usable), then publish -> DOM for the first card while the fleet flows."""
    from playwright.sync_api import sync_playwright

    from tests.support import CHROMIUM, CHROMIUM_ARGS

    found: dict[str, dict[str, Any]] = {}
    sessions = dict(stack.db.execute("SELECT session_name, session_id FROM device").fetchall())
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            started = time.monotonic()
            try:
                page.goto(base + "/capteurs", timeout=180_000, wait_until="commit")
                page.wait_for_function(USABLE, polling=50, timeout=180_000)
                opened = time.monotonic() - started
                found["capteurs_open"] = {"s": round(opened, 2),
                                          "cards": page.evaluate("document.querySelectorAll('[data-card]').length")}
            except Exception as err:
                found["capteurs_open"] = {"s": None, "error": str(err).splitlines()[0][:200]}
                return found
            publisher = Publisher(stack.settings.mqtt_port, sizes, sessions)
            probe = page.evaluate(WATCH)
            # The reference: a bare paho subscriber to the live feed in its own process, as the page is
            # subscribed (what the ingest client, the broker and the machine add before the page).
            subscriber = Subscriber(stack.settings, _device_id(stack, probe))
            try:
                subscriber.start()
                stored_before = _stored(stack, probe)
                watch = CpuWatch(os.getpid(), subscriber.process.pid or 0)
                subscriber.mark()
                publisher.probe = probe
                time.sleep(sizes.live_seconds)
                publisher.probe = None
                time.sleep(1.0)
                cpu = watch.read()
                messages, readings = subscriber.rates()
                updates = [(_shown_value(text), at) for text, at in page.evaluate("window.__updates")]
                arrivals = subscriber.drain()
                # Whether the ingest client kept up: the probe's readings it stored by the end of the window.
                stored = _stored(stack, probe) - stored_before
            finally:
                publisher.close()
                subscriber.close()
            page_delays, reference = _live(publisher.sent, updates), _live(publisher.sent, arrivals)
            found["live"] = {**page_delays, "stored": stored,
                             "to_subscriber_p50_ms": reference.get("p50_ms"),
                             "to_subscriber_p99_ms": reference.get("p99_ms"),
                             "page_over_subscriber_p99": (round(page_delays["p99_ms"] / reference["p99_ms"], 2)
                                                          if page_delays.get("p99_ms") and reference.get("p99_ms")
                                                          else None),
                             "messages_per_s": round(messages), "readings_per_s": round(readings), **cpu}
        finally:
            browser.close()
    return found


def _of_device(stack: Stack, query: str, name: str) -> int:
    """The integer `query` answers for the device called `name` (its `?`, in the database's own paramstyle)."""
    if stack.postgresql:
        query = query.replace("?", "%s")
    return int(stack.db.execute(query, (name,)).fetchone()[0])


def _stored(stack: Stack, name: str) -> int:
    """How many light readings of the device called `name` the database holds."""
    return _of_device(stack, "SELECT count(*) FROM light_reading r JOIN device d ON d.id = r.device_id "
                             "WHERE d.session_name = ?", name)


def _device_id(stack: Stack, name: str) -> int:
    """The id of the device called `name`."""
    return _of_device(stack, "SELECT id FROM device WHERE session_name = ?", name)


def _shown_value(text: str) -> int | None:
    """The number a card's light value shows ("42 %"), None if none."""
    first = text.split()[0] if text.split() else ""
    return int(first) if first.isdigit() else None


def _live(sent: list[tuple[int, float]], seen: list[tuple[int | None, float]]) -> dict[str, Any]:
    """Publish -> arrival per probe reading (at the page or at the reference subscriber): each arrival matched to
    the latest publish of its value before it."""
    delays = []
    for value, at in seen:
        earlier = [moment for sent_value, moment in sent if sent_value == value and moment <= at]
        if earlier:
            delays.append(at - earlier[-1])
    if not delays:
        return {"p99_ms": None, "sent": len(sent), "shown": 0}
    return {"p50_ms": round(statistics.median(delays), 1), "p99_ms": round(percentile(delays, 0.99), 1),
            "sent": len(sent), "shown": len(delays)}


@contextlib.contextmanager
def _database(postgresql: bool, workdir: Path) -> Iterator[str | None]:
    if not postgresql:
        yield None
        return
    from bench.__main__ import postgresql_databases

    with postgresql_databases() as new_database:
        yield new_database()


def measure(sizes: PagesSizes, postgresql: bool, say: Callable[[str], None]) -> list[Figure]:
    """Build the database, start the stack on it and measure every figure."""
    with tempfile.TemporaryDirectory(prefix="sensorhub-bench-pages-") as workdir, \
            _database(postgresql, Path(workdir)) as pg_url:
        url = pg_url or f"sqlite:///{Path(workdir) / 'db.sqlite3'}"
        started = time.monotonic()
        build(url, sizes)
        say(f"built {sizes.devices} devices, {sizes.devices * sizes.readings} readings in "
            f"{time.monotonic() - started:.0f} s")
        # The ingest client loads every device before it says it is ready: on PostgreSQL with 100,000 that
        # took longer than the supervisor's 30 s (docs/scaling.md); the bench waits for it.
        supervisor.READY_TIMEOUT = max(supervisor.READY_TIMEOUT, 300.0)
        stack = Stack(workdir=Path(workdir), components=("broker", "client", "web"), database_url=pg_url)
        # The longest presence timeout (3 x 11 s): every board must be heard from before the ingest client's first
        # sweep, or it takes the devices it found online in the database offline.
        stack.settings = stack.settings.replace(keepalive=KEEPALIVE if sizes.devices > 10_000 else 3)
        with stack:
            ready = time.monotonic()
            say(f"stack ready in {ready - started:.0f} s after the build began")
            online = heard(stack, sizes, ready)
            say(f"every board heard from in {time.monotonic() - ready:.0f} s; {online} online")
            base = f"http://127.0.0.1:{stack.settings.web_port}"
            server = server_figures(base, sizes, url, random.Random(9))
            say(f"server: {json.dumps(server)}")
            browser = browser_figures(stack, base, sizes)
            say(f"browser: {json.dumps(browser)}")
            browser["online"] = {"before": online, "after": _online(stack)}
    return figures(server, browser, sizes)


def _online(stack: Stack) -> int:
    return int(stack.db.execute("SELECT count(*) FROM device WHERE online").fetchone()[0])


def heard(stack: Stack, sizes: PagesSizes, ready: float) -> int:
    """One reading of every board, then until the ingest client stored them and its first sweep passed; how many
    devices are online then (a board not heard from in time is taken offline: the figures say how many stayed)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    sessions = dict(stack.db.execute("SELECT session_name, session_id FROM device").fetchall())
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pages-heard")
    client.connect("127.0.0.1", stack.settings.mqtt_port)
    client.loop_start()
    try:  # QoS 0 at 10,000/s: within the presence timeout, and no more than the ingest client stores
        started = time.monotonic()
        for number, (name, session) in enumerate(sessions.items()):
            client.publish("photoresistor/status", f"{name};{session};50")
            if number % 1000 == 999:
                time.sleep(max(0.0, started + (number + 1) / 10_000 - time.monotonic()))
    finally:
        stop_loop(client)
        client.disconnect()
    wanted = sizes.devices * (sizes.readings + 1)
    deadline = ready + 3 * stack.settings.keepalive
    while time.monotonic() < deadline:
        if int(stack.db.execute("SELECT count(*) FROM light_reading").fetchone()[0]) >= wanted:
            break
        time.sleep(0.5)
    time.sleep(max(0.0, ready + 3 * stack.settings.keepalive + 2 - time.monotonic()))  # past the first sweep
    return _online(stack)


def _ms(found: dict[str, Any], target: float, label: str, key: str) -> Figure:
    value = found.get("p99_ms")
    text = "n/a" if value is None else f"p50 {found.get('p50_ms')} ms, p99 {value} ms"
    if value is not None and "to_subscriber_p99_ms" in found:
        text += (f"; to a paho subscriber (own process) p50 {found['to_subscriber_p50_ms']}, p99 "
                 f"{found['to_subscriber_p99_ms']} ms; page/subscriber p99 {found['page_over_subscriber_p99']}; "
                 f"the page received {found['readings_per_s']:,} readings/s in {found['messages_per_s']:,} "
                 f"messages/s; machine {found['machine_busy']:.0%} busy; share of a core: "
                 + ", ".join(f"{part} {share:.0%}" for part, share in found["parts"].items()))
    return Figure(key, label, text, f"<= {target:.0f} ms", None if value is None else value <= target, found)


def figures(server: dict[str, dict[str, Any]], browser: dict[str, dict[str, Any]], sizes: PagesSizes) -> list[Figure]:
    """The scenario's figures."""
    opened = browser.get("capteurs_open", {})
    seconds = opened.get("s")
    n = f"{browser.get('online', {}).get('before', sizes.devices):,} online"
    out = [Figure("pages_capteurs_open_s", f"/capteurs usable in Chromium, {n}",
                  "never" if seconds is None else f"{seconds} s", f"<= {OPEN_TARGET_S:.0f} s",
                  None if seconds is None and "error" not in opened else (seconds is not None
                                                                         and seconds <= OPEN_TARGET_S), opened)]
    live = browser.get("live", {})
    out.append(_ms(live, LIVE_TARGET_MS, f"publish -> DOM, card in view, {sizes.rate}/s of the fleet",
                   "pages_live_p99_ms"))
    for key, label in (("historique", "/historique, first page"), ("historique_next", "/historique, next page"),
                       ("api_devices", "/api/devices (no parameter)"),
                       ("api_devices_next", "/api/devices?limit=100&cursor=…"),
                       ("search_name", "search a name (/api/devices?q=)"),
                       ("search_mac", "search a MAC (/api/devices?q=)"),
                       ("search_historique", "search a name (/historique?q=)"),
                       ("accueil_counts", "/accueil's counts (presence query)"), ("accueil", "/accueil, whole page")):
        target = (1000.0 if key in ("historique", "historique_next") else ACCUEIL_TARGET_MS if key == "accueil"
                  else QUERY_TARGET_MS)
        out.append(_ms(server.get(key, {}), target, label, f"pages_{key}_ms"))
    return out


def main(quick: bool, postgresql: bool) -> int:
    """The pages-100k scenario on its own: one table, one JSON line."""
    from bench.__main__ import table

    sizes = sizes_from_environment(PAGES_QUICK if quick else PAGES_FULL)
    host = machine.describe()
    if postgresql:
        host["database"] = "PostgreSQL " + machine.postgresql_version()
    host["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    print(f"sensorhub benchmark ({'quick smoke run' if quick else 'full'}) on {host['cpu']}, "
          f"{host['cores']} cores, {host['memory_gib']} GiB, {host['os']}, Python {host['python']}, "
          f"SQLite {host['sqlite']}, mosquitto {host['mosquitto']}, scenario pages-100k, {sizes.devices:,} devices, "
          f"database: {host.get('database', 'SQLite')}, load average {host['loadavg']}", flush=True)
    found = measure(sizes, postgresql, lambda text: print(text, file=sys.stderr, flush=True))
    host["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(table(found))
    print(json.dumps({"quick": quick, "postgresql": postgresql, "scenario": "pages-100k", "machine": host,
                      "sizes": sizes.__dict__,
                      "figures": {f.key: {"value": f.value, "target": f.target, "ok": f.ok, **f.data}
                                  for f in found}}))
    return 0
