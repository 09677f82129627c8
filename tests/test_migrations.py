"""Schema migrations: a database of the first release upgrades in place with every row, and a database that is not
sensorhub's (or is newer) is refused in one line before anything is written to it."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command as alembic_command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import make_url

from sensorhub.config import Settings
from sensorhub.db import postgres, sqlite
from sensorhub.db.engine import make_engine
from sensorhub.db.models import Base
from sensorhub.db.schema import BASELINE, State, alembic_config, check_schema, head, look, revisions, upgrade
from sensorhub.errors import DatabaseError
from sensorhub.timestamps import to_micros
from tests.pgcluster import Cluster

RELEASE_1 = Path(__file__).parent / "data" / "schema-release-1.sql"


def release_1_database(path: Path) -> None:
    """A database as the first release made it, with devices and readings of every kind."""
    with sqlite3.connect(path) as conn:
        conn.executescript(RELEASE_1.read_text())
        conn.executemany(
            "INSERT INTO device (name, session_name, mac, online, session_id, joined_at, last_seen) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(f"capteur{i:02d}", f"capteur{i:02d}", f"02:00:00:00:00:{i:02X}", i % 2, f"1700000000.00000{i}",
              "2025-01-01 00:00:00.000000", f"2025-01-0{i} 12:00:00.000000") for i in range(1, 5)])
        for table, values in (("led_reading", (0, 1)), ("button_reading", (1, 0)), ("light_reading", (0, 57, 100))):
            rows = [(device, f"2025-01-01 0{device}:00:{second:02d}.{second:06d}", values[second % len(values)])
                    for device in range(1, 5) for second in range(1, 60)]
            conn.executemany(f"INSERT INTO {table} (device_id, at, value) VALUES (?, ?, ?)", rows)


#: The columns of the first release's tables (later revisions add columns to `device`).
RELEASE_1_COLUMNS = {
    "device": "id, name, session_name, mac, online, session_id, joined_at, last_seen",
    "led_reading": "*", "button_reading": "*", "light_reading": "*",
}


def dump(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table of the first release, in id order."""
    with sqlite3.connect(path) as conn:
        return {table: conn.execute(f"SELECT {columns} FROM {table} ORDER BY id").fetchall()
                for table, columns in RELEASE_1_COLUMNS.items()}


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def test_a_release_1_database_upgrades_in_place_keeping_every_row(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    release_1_database(path)
    before = dump(path)
    assert sum(len(rows) for rows in before.values()) == 4 + 3 * 4 * 59
    assert look(url(path)).state is State.LEGACY
    with pytest.raises(DatabaseError, match=r"older schema .*`make db` \(sensorhub db upgrade\)"):
        check_schema(url(path))
    assert upgrade(url(path)) == (BASELINE, head())
    assert dump(path) == before
    check_schema(url(path))
    assert upgrade(url(path)) == (head(), head())  # idempotent
    _check_history_tables(path)
    with sqlite3.connect(path) as conn:
        _check_latest_rows(conn)
        # The devices already there are in the search's trigram index (migration 0010), and the index is sound.
        assert conn.execute(f"SELECT rowid FROM {sqlite.SEARCH_TABLE} WHERE {sqlite.SEARCH_TABLE} MATCH ?",
                            ('"APTEUR03"',)).fetchall() == [(3,)]
        assert conn.execute(f"SELECT rowid FROM {sqlite.SEARCH_TABLE} WHERE {sqlite.SEARCH_TABLE} MATCH ?",
                            ('"0:00:0"',)).fetchall() == [(1,), (2,), (3,), (4,)]
        conn.execute(f"INSERT INTO {sqlite.SEARCH_TABLE} ({sqlite.SEARCH_TABLE}) VALUES ('integrity-check')")
    with sqlite3.connect(path) as conn:  # the rules of the first release still hold
        with pytest.raises(sqlite3.IntegrityError, match="light_value"):
            conn.execute("INSERT INTO light_reading (device_id, at, value) "
                         "VALUES (1, '2025-01-01 05:00:00.000000', 101)")
        assert conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'device'").fetchone()[0] == 4


def test_the_cli_upgrades_and_says_what_it_did(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    release_1_database(path)
    env = {**os.environ, "SENSORHUB_DATABASE_URL": url(path), "SENSORHUB_STATE_DIR": str(tmp_path / "var")}
    result = subprocess.run([sys.executable, "-m", "sensorhub", "db", "upgrade"], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"database at schema {head()} (was {BASELINE})"


def test_the_revisions_read_from_the_file_names_are_alembic_s_chain() -> None:
    """schema.revisions() reads the migrations' file names (no Alembic import to check a database): the same
    revisions, in the same order, as Alembic's own walk from the head down."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    chain = [rev.revision for rev in reversed(list(script.walk_revisions()))]
    assert revisions() == chain and head() == script.get_current_head() and len(chain) >= 11


def test_a_new_database_gets_every_revision_and_matches_the_models(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    assert upgrade(url(path)) == (None, head())
    assert revisions()[0] == BASELINE and revisions()[-1] == head()
    engine = make_engine(url(path))
    with engine.connect() as conn:
        # The search's FTS5 table is SQLite's own, not in the models (db/sqlite.py, migration 0010).
        assert sqlite.SEARCH_TABLES & set(inspect(conn).get_table_names()) >= {sqlite.SEARCH_TABLE}
        context = MigrationContext.configure(conn, opts={"include_object": lambda _o, name, kind, *_: not (
            kind == "table" and name in sqlite.SEARCH_TABLES)})
        differences = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert differences == [], "the models and the migrations disagree: write a migration"
    assert path.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("kind", ["foreign-with-user-version-1", "foreign", "not-sqlite", "newer"])
def test_a_foreign_or_newer_database_is_refused_in_one_line_and_left_untouched(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "other.sqlite3"
    if kind == "not-sqlite":
        path.write_bytes(b"this is a text file, not a database\n" * 100)
    else:
        with sqlite3.connect(path) as conn:
            if kind == "newer":
                conn.executescript(RELEASE_1.read_text())
                conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
                conn.execute("INSERT INTO alembic_version VALUES ('9999')")
            else:
                conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
                conn.execute("CREATE TABLE device (id INTEGER PRIMARY KEY)")
                if kind == "foreign-with-user-version-1":
                    conn.execute("PRAGMA user_version = 1")
    before = path.read_bytes()
    expected = {"newer": "made by a newer sensorhub", "not-sqlite": "is not a SQLite database"}.get(
        kind, "is not a sensorhub database (its tables: device, invoices)")
    for attempt in (lambda: check_schema(url(path)), lambda: upgrade(url(path))):
        with pytest.raises(DatabaseError, match=re.escape(expected)):
            attempt()
    settings = Settings().replace(database_url=url(path), state_dir=str(tmp_path / "var"), mqtt_port=1)
    env = {**os.environ, **settings.environ()}
    for command in (["client"], ["db", "init"], ["db", "seed"], ["db", "reset", "--yes"], ["user", "list"]):
        result = subprocess.run([sys.executable, "-m", "sensorhub", *command], env=env, capture_output=True,
                                text=True, timeout=60, check=False)
        assert result.returncode == 2, (command, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr, (command, result.stderr)
    assert path.read_bytes() == before, "the file changed"
    assert not Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists()


def test_an_empty_file_is_not_grown_by_the_client(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite3"
    path.write_bytes(b"")
    with pytest.raises(DatabaseError, match=r"is empty: create its schema with `make db`"):
        check_schema(url(path))
    assert path.stat().st_size == 0


def _check_history_tables(path: Path) -> None:
    """Migration 0004 filled the roll-ups from every reading and logged each device's current session."""
    with sqlite3.connect(path) as conn:
        _check_history_rows(conn)


def _check_history_rows(conn: Any) -> None:
    """The roll-ups and session log of a DB-API connection (sqlite3 or psycopg) match its readings and devices."""
    from tests.test_rollups import brute_force

    events = []
    for kind in ("led", "button", "light"):
        for device, at, value in conn.execute(f"SELECT device_id, at, value FROM {kind}_reading"):
            moment = datetime.strptime(at, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
            events.append((device, kind, to_micros(moment), value))
    for device, ended in conn.execute("SELECT device_id, ended_at FROM device_session WHERE ended_at IS NOT NULL"):
        moment = datetime.strptime(ended, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
        events += [(device, "led", to_micros(moment), None), (device, "button", to_micros(moment), None)]
    stored = {}
    for size, table in (("1m", "rollup_minute"), ("1h", "rollup_hour")):
        for row in conn.execute(f"SELECT device_id, kind, start, count, low, high, total, on_us FROM {table}"):
            stored[(size, row[0], row[1], row[2])] = tuple(row[3:])
    sessions = conn.execute("SELECT device_id, session_id, started_at, online_at, ended_at FROM device_session "
                            "ORDER BY device_id").fetchall()
    devices = conn.execute("SELECT id, session_id, online, last_seen FROM device ORDER BY id").fetchall()
    assert stored and stored == brute_force(events)
    # Migration 0011 filled the fleet's readings per minute with the sums of every device's minutes.
    fleet = conn.execute("SELECT start, sum(count) FROM rollup_fleet_minute GROUP BY start ORDER BY start").fetchall()
    assert fleet and [tuple(row) for row in fleet] == [tuple(row) for row in conn.execute(
        "SELECT start, sum(count) FROM rollup_minute GROUP BY start HAVING sum(count) > 0 ORDER BY start")]
    assert [(d, s) for d, s, *_ in sessions] == [(d, s) for d, s, *_ in devices]
    for (_, _, _started, online_at, ended_at), (_, _, online, last_seen) in zip(sessions, devices, strict=True):
        assert (online_at is not None) == bool(online)
        assert ended_at == (None if online else last_seen)


def _check_latest_rows(conn: Any) -> None:
    """Migration 0005 filled each device's latest value columns with its newest reading of each kind (by at, id)."""
    devices = [row[0] for row in conn.execute("SELECT id FROM device ORDER BY id").fetchall()]
    expected: dict[int, list[object]] = {device: [] for device in devices}
    for kind in ("led", "button", "light"):
        newest: dict[int, tuple[str, int, int]] = {}
        for row_id, device, at, value in conn.execute(f"SELECT id, device_id, at, value FROM {kind}_reading"):
            if device not in newest or (at, row_id) > newest[device][:2]:
                newest[device] = (at, row_id, value)
        for device in devices:
            at, _, value = newest.get(device, (None, 0, None))
            expected[device] += [value, at]
    stored = {row[0]: list(row[1:]) for row in conn.execute(
        "SELECT id, last_led, last_led_at, last_button, last_button_at, last_light, last_light_at FROM device")}
    assert stored == expected
    assert all(value is not None for values in stored.values() for value in values)  # every kind was backfilled


def test_postgresql_gets_every_revision_keeps_every_row_and_matches_the_models(postgresql: Cluster) -> None:
    target = postgresql.create_database()
    engine = make_engine(target)
    config = alembic_config()
    with engine.begin() as conn:  # a database as the reliability release (0003) left it, with rows in it
        config.attributes["connection"] = conn
        alembic_command.upgrade(config, "0003")
    raw = psycopg.connect(make_url(target).render_as_string(hide_password=False).replace("+psycopg", ""),
                          autocommit=True)
    with raw.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO device (id, name, session_name, mac, online, session_id, joined_at, last_seen) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            [(i, f"capteur{i:02d}", f"capteur{i:02d}", f"02:00:00:00:00:{i:02X}", bool(i % 2), f"1700000000.00000{i}",
              "2025-01-01 00:00:00.000000", f"2025-01-0{i} 12:00:00.000000") for i in range(1, 5)])
        for table, values in (("led_reading", (0, 1)), ("button_reading", (1, 0)), ("light_reading", (0, 57, 100))):
            cursor.executemany(f"INSERT INTO {table} (device_id, at, value) VALUES (%s, %s, %s)", [
                (device, f"2025-01-01 0{device}:00:{second:02d}.{second:06d}", values[second % len(values)])
                for device in range(1, 5) for second in range(1, 60)])
    with raw.cursor() as cursor:
        before = {t: cursor.execute(f"SELECT {c} FROM {t} ORDER BY id").fetchall()
                  for t, c in RELEASE_1_COLUMNS.items()}
    assert look(target).state is State.OLDER
    assert upgrade(target) == ("0003", head())
    check_schema(target)
    with raw.cursor() as cursor:
        assert {t: cursor.execute(f"SELECT {c} FROM {t} ORDER BY id").fetchall()
                for t, c in RELEASE_1_COLUMNS.items()} == before
        _check_history_rows(cursor)
        _check_latest_rows(cursor)
        # the device ids handed out by hand moved the sequence on: id 4 is never handed out again
        assert cursor.execute(postgres.LAST_DEVICE_ID).fetchone() == (4,)
    with engine.connect() as conn:
        # The search's trigram indexes are PostgreSQL's own, not in the models (db/postgres.py, migration 0009).
        assert {row[0] for row in conn.exec_driver_sql(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'device'")} >= set(postgres.SEARCH_INDEXES)
        context = MigrationContext.configure(conn, opts={"include_object": lambda _o, name, kind, *_: not (
            kind == "index" and name in postgres.SEARCH_INDEXES)})
        differences = compare_metadata(context, Base.metadata)
    assert differences == [], "the models and the migrations disagree on PostgreSQL: write a migration"
    with pytest.raises(psycopg.errors.CheckViolation, match="light_value"), raw.cursor() as cursor:
        cursor.execute("INSERT INTO light_reading (device_id, at, value) VALUES (1, '2025-01-01 05:00:00.000000', 101)")
    raw.close()
    engine.dispose()
