"""Fixtures that start real services (Mosquitto, SQLite files, FIFOs) on free ports and clean up after."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from sensorhub.broker import Broker
from sensorhub.config import Settings
from sensorhub.db.engine import init_db, make_engine
from tests.stack import ROOT
from tests.support import digests, settings_for, tracked_files


@pytest.fixture(scope="session", autouse=True)
def tracked_docs_untouched() -> Iterator[None]:
    """No test may change a tracked file under docs/ (screenshots go to tmp_path; `make screenshots` updates them)."""
    before = digests(tracked_files(ROOT, "docs"))
    yield
    after = digests(list(before))
    changed = sorted(str(path.relative_to(ROOT)) for path in before if after.get(path) != before[path])
    assert changed == [], f"tests changed tracked files (write to tmp_path instead): {changed}"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings pointing at a temporary database, FIFO and log, with free ports."""
    return settings_for(tmp_path)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    """A fresh database with sensorhub's schema."""
    engine = make_engine(settings.database_url, create_dir=True)
    init_db(engine)
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
