"""SENSORHUB_WEB_PRIVATE=1 closes the live stream too: the WebSockets port opens only with a token from the web server.

Real broker (with its WebSockets guard), ingest client, gunicorn and, for the page, headless Chromium.
"""

from __future__ import annotations

import re
import threading
import urllib.parse

import paho.mqtt.client as mqtt
import pytest
from itsdangerous import TimestampSigner
from paho.mqtt.enums import CallbackAPIVersion

from sensorhub import accounts, livetoken
from sensorhub.broker import Broker
from sensorhub.config import Settings
from sensorhub.credentials import web_secret_key
from sensorhub.mqttclient import stop_loop
from sensorhub.protocol import LIVE_TOPIC, Topic
from tests.devices import RawDevice
from tests.stack import Stack
from tests.support import connects, settings_for, wait_for
from tests.visitor import Browser

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
ACCOUNT = "carol"


@pytest.fixture(scope="module")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The module's stack (conftest's) runs with SENSORHUB_WEB_PRIVATE=1."""
    return settings_for(tmp_path_factory.mktemp("private")).replace(web_private=True)


@pytest.fixture(scope="module")
def private(shared_stack: Stack) -> Stack:
    """Broker, client and web server with SENSORHUB_WEB_PRIVATE=1 and one account (the web server reads the
    accounts at each request)."""
    accounts.add(shared_stack.engine, ACCOUNT, PASSWORD)
    return shared_stack


def live_client(port: int, token: str | None) -> tuple[mqtt.Client, list[bytes]]:
    """A browser-like MQTT client on the WebSockets port, subscribed to the live feed once connected."""
    received: list[bytes] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, transport="websockets", protocol=mqtt.MQTTv5)
    if token is not None:
        client.ws_set_options(path="/?" + urllib.parse.urlencode({livetoken.PARAMETER: token}))
    client.on_connect = lambda c, _u, _f, rc, _p: c.subscribe([(LIVE_TOPIC, 0), (str(Topic.JOIN), 2)]) \
        if not rc.is_failure else None
    client.on_message = lambda _c, _u, message: received.append(message.payload)
    return client, received


def opens(port: int, token: str | None) -> bool:
    """Whether the WebSockets port lets a client with `token` (None: without one) connect within 3 s."""
    return connects(port, client=live_client(port, token)[0])


def test_without_a_token_the_websockets_port_refuses_everyone(private: Stack) -> None:
    port = private.settings.mqtt_ws_port
    assert not opens(port, None)
    assert not opens(port, "")
    assert not opens(port, "live.AAAAAA.forged")
    # Signed with another key (another installation's, or a guess): refused too.
    assert not opens(port, livetoken.issue("not the web server's key"))


def test_a_logged_in_visitor_gets_a_token_that_opens_the_live_stream(private: Stack) -> None:
    anonymous = Browser(private)
    status, _, _ = anonymous.request("GET", "/api/live-token")
    assert status == 401
    visitor = Browser(private)
    status, _, _ = visitor.login(ACCOUNT, PASSWORD)
    assert status == 302, status
    answer = visitor.json("/api/live-token")
    assert answer["required"] is True and answer["seconds"] == livetoken.TOKEN_SECONDS
    # The page carries one too, for its first connection: that one opens the stream.
    embedded = re.search(r'data-live-token="([^"]+)"', visitor.page("/capteurs"))
    assert embedded is not None and livetoken.valid(web_secret_key(private.settings), embedded[1])
    assert opens(private.settings.mqtt_ws_port, embedded[1])
    client, received = live_client(private.settings.mqtt_ws_port, answer["token"])
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", private.settings.mqtt_ws_port, keepalive=5)
    client.loop_start()
    board = RawDevice(private.settings.mqtt_port, "02:5E:C0:AA:00:01")
    try:
        wait_for(client.is_connected, 5, what="the live stream with a token")
        assert subscribed.wait(5), "no SUBACK for the live feed"
        board.join()
        wait_for(lambda: any(board.mac.encode() in payload for payload in received), 10, what="the join, live")
        board.reading(Topic.PHOTORESISTOR_STATUS, 42).wait_for_publish(5)
        wait_for(lambda: any(b";p;42" in payload for payload in received), 10,
                 what="the reading on the live feed")
    finally:
        board.close()
        client.disconnect()
        stop_loop(client)


def test_a_token_expires(private: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the signer's clock (itsdangerous reads the time through `get_timestamp`), moved by hand."""
    key = web_secret_key(private.settings)
    now = [1_800_000_000]
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda _signer: now[0])
    token = livetoken.issue(key)
    assert livetoken.valid(key, token)
    now[0] += livetoken.TOKEN_SECONDS
    assert livetoken.valid(key, token), "a token expired before the end of its lifetime"
    now[0] += 1
    assert not livetoken.valid(key, token), "a token older than its lifetime still opened the stream"
    assert livetoken.from_request_line(b"GET /?token=" + token.encode() + b" HTTP/1.1") == token
    assert livetoken.from_request_line(b"GET / HTTP/1.1") is None
    assert livetoken.from_request_line(b"garbage") is None


@pytest.mark.browser
def test_in_the_browser_a_logged_in_page_is_live(private: Stack) -> None:
    from playwright.sync_api import expect, sync_playwright

    from tests.support import CHROMIUM, CHROMIUM_ARGS

    board = RawDevice(private.settings.mqtt_port, "02:5E:C0:AA:00:02")
    board.join()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(private.url("/login?next=/capteurs"))
            page.fill('input[name="name"]', ACCOUNT)
            page.fill('input[name="password"]', PASSWORD)
            page.get_by_role("button", name="Se connecter").click()
            expect(page.locator('[data-live-status][data-state="live"]')).to_be_visible(timeout=10_000)
            card = page.locator(f'[data-card][data-session-name="{board.name}"]')
            board.reading(Topic.PHOTORESISTOR_STATUS, 57).wait_for_publish(5)
            expect(card.locator("[data-light-value]")).to_have_text("57 %", timeout=5_000)
            assert errors == []
        finally:
            browser.close()
            board.close()


def test_outside_private_mode_no_token_is_needed(tmp_path_factory: pytest.TempPathFactory) -> None:
    settings = settings_for(tmp_path_factory.mktemp("open"))
    assert not settings.web_private
    with Broker(settings):
        assert opens(settings.mqtt_ws_port, None)
