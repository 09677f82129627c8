"""The web state (sensorhub.webstate): login sessions and the login throttle, on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
import itertools
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, select

from sensorhub import accounts
from sensorhub.config import Settings
from sensorhub.web import create_app
from sensorhub.webstate import (
    STATE_FILE,
    LoginSessions,
    LoginThrottle,
    WebStateStore,
    end_account_sessions,
    login_session,
    web_state_url,
)
from tests.pgcluster import Cluster
from tests.stack import web_server, web_url
from tests.support import free_port
from tests.visitor import Browser

PASSWORD = "correct horse battery"
_DATABASES = itertools.count(1)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty web state database: a SQLite file, or a PostgreSQL database of the session's cluster."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / STATE_FILE}"
        return
    cluster: Cluster = request.getfixturevalue("postgresql")
    name = f"webstate{next(_DATABASES)}"
    yield cluster.create_database(name)
    cluster.drop_database(name)


@pytest.fixture
def store(state_url: str) -> Iterator[WebStateStore]:
    store = WebStateStore(state_url)
    store.setup()
    yield store
    store.dispose()


def stored(store: WebStateStore) -> list[tuple[str, str, float, float]]:
    with store.read() as conn:
        return [(r.id_hash, r.account, r.created_at, r.expires_at) for r in conn.execute(select(login_session))]


def test_a_session_is_kept_as_a_hash_and_ends_at_logout(store: WebStateStore) -> None:
    clock = Clock()
    sessions = LoginSessions(store, 7 * 86400, clock)
    token = sessions.open("alice")
    assert len(token) >= 43 and sessions.account(token) == "alice"
    [(id_hash, account, created, expires)] = stored(store)
    assert id_hash == hashlib.sha256(token.encode()).hexdigest() and token not in id_hash
    assert (account, created, expires) == ("alice", clock.now, clock.now + 7 * 86400)
    assert sessions.account(token + "x") is None and sessions.account("") is None
    assert sessions.end(token) and sessions.account(token) is None and stored(store) == []
    assert not sessions.end(token)


def test_a_password_change_ends_every_session_of_the_account_only(store: WebStateStore) -> None:
    sessions = LoginSessions(store, 3600)
    alice, alice_again, bob = sessions.open("alice"), sessions.open("alice"), sessions.open("bob")
    assert sessions.end_all("alice") == 2
    assert [sessions.account(t) for t in (alice, alice_again, bob)] == [None, None, "bob"]


def test_an_expired_session_is_refused_and_deleted(store: WebStateStore) -> None:
    clock = Clock()
    sessions = LoginSessions(store, 7 * 86400, clock)
    old, other = sessions.open("alice"), sessions.open("bob")
    clock.now += 7 * 86400 - 1
    assert sessions.account(old) == "alice"
    clock.now += 1  # the lifetime is over, to the second
    assert sessions.account(old) is None and [row[1] for row in stored(store)] == ["bob"]
    fresh = sessions.open("carol")  # a login deletes every expired row on the way
    assert [row[1] for row in stored(store)] == ["carol"] and sessions.account(other) is None
    assert sessions.account(fresh) == "carol"


def test_the_throttle_counts_parallel_attempts_exactly(state_url: str) -> None:
    # 8 stores: as many processes (or hosts) with their own connections, 40 attempts at once.
    stores = [WebStateStore(state_url) for _ in range(8)]
    for each in stores:
        each.setup()
    start = threading.Barrier(40)

    def attempt(number: int) -> int | None:
        throttle = LoginThrottle(stores[number % len(stores)])
        start.wait()
        return throttle.attempt("192.0.2.7")

    try:
        began = time.time()
        with ThreadPoolExecutor(40) as pool:
            ids = list(pool.map(attempt, range(40)))
        counted = [i for i in ids if i is not None]
        assert len(counted) == 5 and len(set(counted)) == 5
        throttle = LoginThrottle(stores[0])
        # Blocked for the window from the fifth attempt, made since `began` (a loaded machine takes its time).
        blocked = throttle.blocked_for("192.0.2.7")
        assert 60 - (time.time() - began) - 0.5 < blocked <= 60 and throttle.blocked_for("192.0.2.8") == 0
        assert throttle.attempt("192.0.2.8") is not None  # another address has its own count
        throttle.succeeded(counted[0])  # a right password gives its place back
        assert throttle.blocked_for("192.0.2.7") == 0 and throttle.attempt("192.0.2.7") is not None
        assert throttle.attempt("192.0.2.7") is None
    finally:
        for each in stores:
            each.dispose()


def test_failed_attempts_are_forgotten_after_the_window(store: WebStateStore) -> None:
    clock = Clock()
    throttle = LoginThrottle(store, limit=2, window=60, clock=clock)
    assert throttle.attempt("a") is not None and throttle.attempt("a") is not None and throttle.attempt("a") is None
    clock.now += 59
    assert throttle.attempt("a") is None and throttle.blocked_for("a") == pytest.approx(1)
    clock.now += 1
    assert throttle.attempt("a") is not None


def test_many_processes_may_create_the_tables_at_once(state_url: str) -> None:
    stores = [WebStateStore(state_url) for _ in range(6)]
    start = threading.Barrier(len(stores))

    def setup(store: WebStateStore) -> None:
        start.wait()
        store.setup()

    try:
        with ThreadPoolExecutor(len(stores)) as pool:
            list(pool.map(setup, stores))
        assert LoginSessions(stores[0], 60).account(LoginSessions(stores[1], 60).open("alice")) == "alice"
    finally:
        for each in stores:
            each.dispose()


# -- the web app and the CLI -------------------------------------------------------------------------------------


def log_in(client: FlaskClient, name: str, password: str = PASSWORD) -> int:
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token
    return int(client.post("/login", data={"csrf_token": token[1], "name": name, "password": password}).status_code)


def logged_in_as(app: Flask, cookie: str) -> bool:
    """Whether a visitor holding `cookie` is logged in (the page names the account)."""
    client = app.test_client()
    client.set_cookie("sensorhub_session", cookie)
    return ">alice<" in client.get("/capteurs").get_data(as_text=True)


def test_the_app_keeps_its_state_in_the_state_directory_and_drops_the_old_throttle_file(
        settings: Settings, engine: Engine) -> None:
    old = Path(settings.state_dir) / "web-logins.sqlite3"
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_bytes(b"")
    create_app(settings)
    path = Path(settings.state_dir) / STATE_FILE
    assert web_state_url(settings) == f"sqlite:///{path}"
    assert path.stat().st_mode & 0o777 == 0o600 and not old.exists()


def test_web_servers_sharing_a_postgresql_web_state_share_logins(settings: Settings, engine: Engine,
                                                                  postgresql: Cluster, tmp_path: Path) -> None:
    # Two web servers (two state directories, as on two hosts) behind one proxy: no sticky sessions.
    url = postgresql.create_database(f"webstate{next(_DATABASES)}")
    try:
        shared = settings.replace(web_state_url=url, secret_key="the same key on every web server, 32+ chars")
        one = create_app(shared)
        other = create_app(shared.replace(state_dir=str(tmp_path / "other-host")))
        accounts.add(engine, "alice", PASSWORD)
        client = one.test_client()
        assert log_in(client, "alice") == 302
        cookie = client.get_cookie("sensorhub_session")
        assert cookie is not None and logged_in_as(one, cookie.value) and logged_in_as(other, cookie.value)
        assert not (tmp_path / "other-host" / STATE_FILE).exists()
        # Logging out on one host ends the session on the other.
        second = other.test_client()
        second.set_cookie("sensorhub_session", cookie.value)
        token = re.search(r'<meta name="csrf-token" content="([^"]+)"', second.get("/capteurs").get_data(as_text=True))
        assert token and second.post("/logout", data={"csrf_token": token[1]}).status_code == 302
        assert not logged_in_as(one, cookie.value) and not logged_in_as(other, cookie.value)
        # The throttle is shared too: 5 failures on one host, the 6th attempt refused on the other.
        for _ in range(5):
            assert log_in(one.test_client(), "alice", "wrong password") == 401
        assert log_in(other.test_client(), "alice") == 429
    finally:
        for app in (locals().get("one"), locals().get("other")):
            if isinstance(app, Flask):
                app.extensions["sensorhub"].throttle.store.dispose()
        postgresql.drop_database(url.rsplit("/", 1)[1])


def test_end_account_sessions_leaves_a_missing_state_file_alone(settings: Settings) -> None:
    assert end_account_sessions(settings, "alice") == 0
    assert not (Path(settings.state_dir) / STATE_FILE).exists()
    store = WebStateStore(web_state_url(settings))
    store.setup()
    sessions = LoginSessions(store, 60)
    token = sessions.open("alice")
    assert end_account_sessions(settings, "alice") == 1 and sessions.account(token) is None
    store.dispose()


# -- several real web servers sharing a PostgreSQL web state -----------------------------------------------------


class Server:
    """Where one of the web servers listens (for tests.visitor.Browser)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def url(self, path: str) -> str:
        """Absolute URL of `path` on this web server."""
        return web_url(self.settings, path)


@pytest.mark.integration
def test_two_gunicorn_servers_share_logins_and_count_failures_exactly_on_postgresql(
        settings: Settings, engine: Engine, postgresql: Cluster, tmp_path: Path) -> None:
    # Two hosts' web servers (their own state directories and ports, 2 gevent workers each) behind no sticky proxy.
    url = postgresql.create_database(f"webstate{next(_DATABASES)}")
    shared = settings.replace(web_state_url=url, secret_key="the same key on every web server, 32+ chars")
    other = shared.replace(state_dir=str(tmp_path / "other-host"), web_port=free_port())
    accounts.add(engine, "alice", PASSWORD)
    try:
        with web_server(shared, workers=2) as one_process, web_server(other, workers=2) as two_process:
            one, two = Server(shared), Server(other)
            # 40 wrong passwords at once, half to each server: exactly 5 checked, wherever they land.
            visitors = [Browser(one if i % 2 else two) for i in range(40)]
            for each in visitors:
                each.page("/login")
            start = threading.Barrier(len(visitors))

            def attempt(each: Browser) -> int:
                form = urllib.parse.urlencode({"csrf_token": each.token, "name": "alice",
                                               "password": "wrong password"}).encode()
                start.wait()
                return each.request("POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"})[0]

            with ThreadPoolExecutor(len(visitors)) as pool:
                statuses = sorted(pool.map(attempt, visitors))
            checked = sum(p.output().count("failed login for 'alice'") for p in (one_process, two_process))
            assert (statuses.count(401), statuses.count(429), checked) == (5, 35, 5), statuses
            LoginThrottle(store := WebStateStore(url)).forget()
            store.dispose()
            # Logged in through one server, the cookie works on the other; logging out there ends it everywhere.
            visitor = Browser(one)
            assert visitor.login("alice", PASSWORD)[0] == 302
            elsewhere = Browser(two)
            for cookie in visitor.jar:
                elsewhere.jar.set_cookie(cookie)
            assert ">alice<" in visitor.page("/capteurs") and ">alice<" in elsewhere.page("/capteurs")
            form = urllib.parse.urlencode({"csrf_token": elsewhere.token}).encode()
            assert elsewhere.request("POST", "/logout", form,
                                     {"Content-Type": "application/x-www-form-urlencoded"})[0] == 302
            assert ">alice<" not in visitor.page("/capteurs")
    finally:
        postgresql.drop_database(url.rsplit("/", 1)[1])
