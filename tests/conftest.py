"""Fixtures that start real services (Mosquitto, SQLite files, PostgreSQL, FIFOs) on free ports and clean up after.

A module's end-to-end tests share one running stack (`stack`: broker, ingest client, gunicorn), started once for
the module; a module that needs other settings for it overrides `stack_settings`, a test that needs a fresh
database is marked `own_stack`.

Every test runs on SQLite; a test marked `@both_databases` (tests.support) runs on PostgreSQL too, in a
database of its own in one throwaway cluster per test session.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tracemalloc  # noqa: F401  whole before any thread (pytest's unraisable hook imports it: see below)
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import settings as hypothesis_profile
from playwright.sync_api import Browser, expect, sync_playwright
from sqlalchemy import Engine

from sensorhub.broker import Broker
from sensorhub.config import Settings
from sensorhub.db.schema import upgrade
from sensorhub.ingest.service import IngestClient
from sensorhub.web import create_app
from sensorhub.web.state import web_state
from tests.pgcluster import Cluster, binaries
from tests.stack import ROOT, Stack, running_stack
from tests.support import CHROMIUM, CHROMIUM_ARGS, digests, fresh_database, settings_for, tracked_files

# tracemalloc is imported above, not used: pytest's unraisable-exception hook imports it when an object is
# collected, and two threads doing that at once met a half-imported module (a CI run failed so).

# The tests read the command line's English messages: a developer's French locale must not translate them (the
# language tests, tests/test_cli_i18n.py, choose theirs). Inherited by the programs the tests start.
os.environ["SENSORHUB_CLI_LANGUAGE"] = "en"
_DATABASES = itertools.count(1)
# Playwright's assertions wait 5 s by default: a 2-core machine running the suite on 4 processes can take
# longer to render a page. A waiting assertion returns as soon as it holds, so this only matters on failure.
expect.set_options(timeout=15_000)
# No wall-clock limit on a Hypothesis example either (its default is 200 ms): a loaded machine took 520 ms.
hypothesis_profile.register_profile("sensorhub", deadline=None)
hypothesis_profile.load_profile("sensorhub")
MIGRATED = "sensorhub_migrated"


#: The longest modules, longest first (their wall time in `make test`, 2026-12-05, 5 workers on the 2-core machine):
#: `make test` hands out whole modules to its workers in collection order (pytest-xdist's `--dist loadfile
#: --no-loadscope-reorder`), so these start first and the short ones fill in around them. By default xdist would
#: order modules by their number of tests: the one-test benchmark smoke runs, the longest of all, started last and
#: the whole run waited for them. Some of the longest mostly wait (test_notify's receiver down for 60 s, 1 s of
#: CPU): started first, they overlap the others. A module missing here only starts later.
LONGEST_FIRST = ("test_security.py", "test_notify.py", "test_bench_hundredk.py", "test_bench_pages.py",
                 "test_browser.py", "test_ingest.py", "test_alerts_web.py", "test_cli_i18n.py", "test_db.py",
                 "test_reliability.py", "test_homeassistant.py", "test_floods.py", "test_web.py",
                 "test_bench_faults.py", "test_presence.py", "test_commands.py", "test_pages_browser.py",
                 "test_i18n.py", "test_bench_alerts.py", "test_monitoring.py", "test_history.py", "test_broker.py",
                 "test_tokens.py", "test_alerts_stack.py", "test_bench_scale_postgresql.py", "test_alerts.py",
                 "test_name_filter.py", "test_webstate.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules of LONGEST_FIRST first, in that order; the others after them, in their usual order."""
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a module's tests keep their order


def pytest_configure(config: pytest.Config) -> None:
    """The markers the fixtures below read."""
    config.addinivalue_line("markers", "own_stack: the test gets a `stack` of its own, not its module's shared one")


@pytest.fixture(scope="session", autouse=True)
def tracked_docs_untouched() -> Iterator[None]:
    """No test may change a tracked file under docs/ (screenshots go to tmp_path; `make screenshots` updates them)."""
    before = digests(tracked_files(ROOT, "docs"))
    yield
    after = digests(list(before))
    changed = sorted(str(path.relative_to(ROOT)) for path in before if after.get(path) != before[path])
    assert changed == [], f"tests changed tracked files (write to tmp_path instead): {changed}"


@pytest.fixture(scope="session")
def postgresql() -> Iterator[Cluster]:
    """A PostgreSQL cluster of Debian's `postgresql` package, in a temporary directory, for the whole session."""
    bindir = binaries()
    if bindir is None:
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed: sudo apt-get install "
                    "postgresql (.ci/run installs it)")
    with Cluster(bindir) as cluster:
        # Each test's database is a copy of this one, migrated once: a copy takes a tenth of the migrations' time.
        upgrade(cluster.create_database(MIGRATED))
        yield cluster


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """Which database the test runs on: "sqlite", or "postgresql" when parametrized (`both_databases`)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def settings(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Settings pointing at a temporary database, FIFO and log, with free ports."""
    settings = settings_for(tmp_path)
    if backend != "postgresql":
        yield settings
        return
    cluster: Cluster = request.getfixturevalue("postgresql")
    name = f"test{next(_DATABASES)}"
    yield settings.replace(database_url=cluster.create_database(name, template=MIGRATED))
    cluster.drop_database(name)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    """A fresh database with sensorhub's schema."""
    engine = fresh_database(settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def broker(settings: Settings) -> Iterator[Broker]:
    """A real Mosquitto with the project's configuration, on free ports."""
    if shutil.which("mosquitto", path="/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin") is None:
        pytest.fail("mosquitto is not installed (sudo apt-get install mosquitto); .ci/run installs it")
    running = Broker(settings)
    running.start()
    yield running
    running.stop()


@pytest.fixture
def ingest(settings: Settings, engine: Engine, broker: Broker) -> Iterator[IngestClient]:
    """The ingest client, in-process, connected to the test's broker and ready."""
    client = IngestClient(settings)
    client.start(wait_ready=10)
    yield client
    client.stop()


@pytest.fixture
def app(settings: Settings, engine: Engine) -> Iterator[Flask]:
    """The web application of `settings` on the test's database (Flask's test client: `client`)."""
    app = create_app(settings)
    app.config["TESTING"] = True
    yield app
    with app.app_context():
        state = web_state()
        state.database.dispose()
        if state.decisions is not None:
            state.decisions.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """Flask's test client of `app`."""
    return app.test_client()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium (never a downloaded browser), shared by a module's tests."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: sudo apt-get install chromium (.ci/run installs it)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def stack_settings(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Settings:
    """The settings `stack` runs with (a module that needs others, such as JSON logs, overrides this fixture)."""
    return settings_for(tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2]))


@pytest.fixture(scope="module")
def shared_stack(stack_settings: Settings) -> Iterator[Stack]:
    """The stack a module's tests share (`stack`), started at the first test that asks for it."""
    with running_stack(stack_settings) as running:
        yield running


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """Broker, `sensorhub client` and `sensorhub web` (2 gunicorn workers) on a database of their own, shared by a
    module's tests (`shared_stack`): a test may stop or restart a component but must leave it running
    (tests.stack.running_stack).

    A test marked `own_stack` gets one of its own instead, with the default settings, for what holds on a fresh
    database only (every device listed is the test's)."""
    if request.node.get_closest_marker("own_stack") is None:
        yield request.getfixturevalue("shared_stack")
        return
    with running_stack(settings_for(tmp_path)) as own:
        yield own
