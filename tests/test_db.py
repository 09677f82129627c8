"""The database refuses bad rows by itself: CHECK constraints and triggers, also from the sqlite3 shell and psql."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sensorhub.config import Settings
from sensorhub.db.engine import make_engine, sqlite_path
from sensorhub.db.models import Device, DeviceSession, LightReading, RollupHour
from sensorhub.db.schema import check_schema, init_db
from sensorhub.db.schema import check_schema as check_url
from sensorhub.db.seed import seed
from sensorhub.errors import DatabaseError
from sensorhub.timestamps import format_timestamp
from tests.factories import add_device
from tests.pgcluster import Cluster
from tests.support import both_databases, free_port, settings_for


def sqlite_shell(engine: Engine, sql: str) -> subprocess.CompletedProcess[str]:
    path = sqlite_path(str(engine.url))
    assert path is not None
    sqlite3_program = shutil.which("sqlite3")
    if sqlite3_program is None:
        pytest.fail("the sqlite3 shell is not installed (sudo apt-get install sqlite3); .ci/run installs it")
    return subprocess.run([sqlite3_program, str(path), sql], capture_output=True, text=True, check=False)


#: What PostgreSQL's types and foreign keys refuse before a CHECK or a trigger sees the row.
_POSTGRESQL_TYPES = (r"invalid input syntax for type integer|value too long for type|is of type boolean but|"
                     r"violates foreign key constraint")


def shell(engine: Engine, sql: str) -> subprocess.CompletedProcess[str]:
    """Run `sql` in the database's own shell (sqlite3, or psql stopping at the first error), outside sensorhub."""
    if engine.dialect.name == "sqlite":
        return sqlite_shell(engine, sql)
    psql = shutil.which("psql")
    if psql is None:
        pytest.fail("psql is not installed (sudo apt-get install postgresql-client); .ci/run installs postgresql")
    url = engine.url
    env = {**os.environ, "PGPASSWORD": str(url.password)}
    return subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(url.host), "-p", str(url.port),
                           "-U", str(url.username), "-d", str(url.database), "-c", sql],
                          capture_output=True, text=True, check=False, env=env)


def now_text(delta: timedelta = timedelta()) -> str:
    return format_timestamp(datetime.now(UTC) + delta)


def test_init_is_idempotent_and_sets_pragmas(engine: Engine) -> None:
    init_db(engine)
    check_schema(engine)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 5000


@both_databases
def test_good_rows_are_accepted(engine: Engine) -> None:
    device = add_device(engine)
    with engine.begin() as conn:
        conn.execute(insert(LightReading), [{"device_id": device, "at": datetime.now(UTC), "value": 58}])
    with Session(engine) as session:
        assert session.scalars(select(LightReading.value)).all() == [58]


@both_databases
def test_the_database_checks_order_not_the_wall_clock(engine: Engine) -> None:
    # A reading stamped ahead of this machine's clock (the clock stepped back since) is kept, in order.
    device = add_device(engine, joined=datetime.now(UTC) + timedelta(minutes=10))
    with engine.begin() as conn:
        conn.execute(insert(LightReading), [{"device_id": device, "at": datetime.now(UTC) + timedelta(minutes=11),
                                             "value": 7}])
    with Session(engine) as session:
        assert session.scalars(select(LightReading.value)).all() == [7]


@pytest.mark.parametrize(
    ("sql", "error"),
    [
        ("INSERT INTO light_reading (device_id, at, value) VALUES (1, '{past_minute}', 101)", "light_value"),
        ("INSERT INTO light_reading (device_id, at, value) VALUES (1, '{past_minute}', -1)", "light_value"),
        ("INSERT INTO light_reading (device_id, at, value) VALUES (1, '{past_minute}', 50.5)", "light_value"),
        ("INSERT INTO led_reading (device_id, at, value) VALUES (1, '{past_minute}', 2)", "led_value"),
        ("INSERT INTO button_reading (device_id, at, value) VALUES (1, '{past_minute}', 'x')", "button_value"),
        ("INSERT INTO light_reading (device_id, at, value) VALUES (1, '2001-01-01 00:00:00.000000', 5)",
         "after the device joined"),
        ("INSERT INTO light_reading (device_id, at, value) VALUES (99, '{past_minute}', 5)", "unknown device"),
        ("INSERT INTO light_reading (device_id, at, value) VALUES (1, 'yesterday', 5)", "at_format"),
        ("UPDATE device SET mac = 'zz' WHERE id = 1", "mac_format"),
        ("UPDATE device SET mac = '61:ec:ed:3b:25:b1' WHERE id = 1", "mac_format"),
        ("UPDATE device SET name = 'a;b' WHERE id = 1", "name_format"),
        ("UPDATE device SET name = '' WHERE id = 1", "name_format"),
        ("UPDATE device SET name = 'caf\u00e9' WHERE id = 1", "name_format"),
        ("UPDATE device SET name = '{long_name}' WHERE id = 1", "name_format"),
        ("UPDATE device SET session_id = '1;2' WHERE id = 1", "session_id_format"),
        ("UPDATE device SET session_id = '123456789012345678' WHERE id = 1", "session_id_format"),
        ("UPDATE device SET joined_at = '{past_minute}' WHERE id = 1", "joined_at cannot change"),
        ("UPDATE device SET last_seen = '2001-01-01 00:00:00.000000' WHERE id = 1", "seen_after_joined|cannot go back"),
        ("UPDATE device SET last_seen = '{past_minute}' WHERE id = 1; "
         "UPDATE device SET last_seen = '{two_minutes_ago}' WHERE id = 1", "last_seen cannot go back"),
        ("UPDATE device SET online = 2 WHERE id = 1", "online_boolean"),
        ("UPDATE device SET session_name = 'other' WHERE id = 1", "current name"),
        ("UPDATE light_reading SET at = '{past_minute}' WHERE id = 1", "cannot change"),
    ],
)
@both_databases
def test_the_shell_refuses_bad_rows(engine: Engine, sql: str, error: str) -> None:
    device = add_device(engine, joined=datetime.now(UTC) - timedelta(hours=1))
    with engine.begin() as conn:
        conn.execute(insert(LightReading), [{"device_id": device, "at": datetime.now(UTC), "value": 1}])
    statement = sql.format(past_minute=now_text(-timedelta(minutes=1)),
                           two_minutes_ago=now_text(-timedelta(minutes=2)), long_name="x" * 30)
    if engine.dialect.name == "postgresql":
        if "50.5" in sql:
            pytest.skip("PostgreSQL rounds 50.5 to fit an INTEGER column: a REAL cannot be stored there at all")
        error += f"|{_POSTGRESQL_TYPES}"
    result = shell(engine, statement)
    assert result.returncode != 0, f"the shell accepted: {statement}"
    assert re.search(error, result.stderr), result.stderr


@both_databases
def test_reading_before_join_is_refused_through_sqlalchemy(engine: Engine) -> None:
    joined = datetime.now(UTC) - timedelta(minutes=1)
    device = add_device(engine, joined=joined)
    with pytest.raises(IntegrityError, match="after the device joined"), engine.begin() as conn:
        conn.execute(insert(LightReading), [{"device_id": device, "at": joined, "value": 5}])


@both_databases
def test_name_cannot_take_another_devices_session_name(engine: Engine) -> None:
    first = add_device(engine, name="capteur01", mac="00:00:00:00:00:01")
    add_device(engine, name="capteur02", mac="00:00:00:00:00:02")
    with Session(engine) as session, session.begin():
        session.execute(update(Device).where(Device.id == first).values(name="salle-B"))
    # capteur01 is still the session name of device 1 until its next join
    with pytest.raises(IntegrityError, match="another device's session"), engine.begin() as conn:
        conn.execute(text("UPDATE device SET name = 'capteur01' WHERE id = 2"))
    with pytest.raises(IntegrityError, match=r"session|UNIQUE"), engine.begin() as conn:
        conn.execute(text("UPDATE device SET name = 'capteur02' WHERE id = 1"))


@both_databases
def test_timestamps_come_back_as_aware_utc(engine: Engine) -> None:
    joined = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    add_device(engine, joined=joined)
    with Session(engine) as session:
        device = session.scalars(select(Device)).one()
    assert device.joined_at == joined and device.joined_at.tzinfo is not None
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT joined_at FROM device").scalar() == "2026-01-02 03:04:05.123456"


@both_databases
def test_read_only_engine_refuses_writes(settings: Settings, engine: Engine) -> None:
    reader = make_engine(settings.database_url, read_only=True)
    with pytest.raises(Exception, match=r"readonly|read-only|query_only"), reader.begin() as conn:
        conn.execute(text("DELETE FROM device"))
    reader.dispose()


def test_missing_database_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="make db"):
        make_engine(f"sqlite:///{tmp_path / 'nothing.sqlite3'}")


def test_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DatabaseError, match="cannot create the database directory"):
        make_engine(f"sqlite:///{blocker / 'sub' / 'db.sqlite3'}", create_dir=True)


def test_schema_check_names_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    sqlite3.connect(path).close()
    with pytest.raises(DatabaseError, match="make db"):
        check_schema(make_engine(f"sqlite:///{path}"))


@both_databases
def test_seed_adds_plausible_devices(engine: Engine) -> None:
    assert seed(engine, devices=3) == 3
    assert seed(engine, devices=2) == 2
    with Session(engine) as session:
        names = session.scalars(select(Device.name).order_by(Device.id)).all()
        assert names == ["demo01", "demo02", "demo03", "demo04", "demo05"]
        assert session.scalar(select(LightReading.id).limit(1)) is not None
        # the roll-ups and sessions the ingest client would have kept
        light = session.scalar(select(func.count()).select_from(LightReading))
        assert session.scalar(select(func.sum(RollupHour.count)).where(RollupHour.kind == "light")) == light
        assert session.scalar(select(func.count()).select_from(DeviceSession)) == 5


def _cli(settings: Settings, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.environ()}
    return subprocess.run([sys.executable, "-m", "sensorhub", "db", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)


@both_databases
def test_db_commands_init_seed_and_reset(settings: Settings) -> None:
    assert _cli(settings, "init").returncode == 0
    assert _cli(settings, "seed", "--devices", "2").returncode == 0
    engine = make_engine(settings.database_url)
    with Session(engine) as session:
        assert len(session.scalars(select(Device.id)).all()) == 2
    refused = _cli(settings, "reset", stdin="n\n")
    assert refused.returncode == 1 and "Delete ALL devices" in refused.stdout
    with Session(engine) as session:
        assert len(session.scalars(select(Device.id)).all()) == 2, "reset without confirmation deleted data"
    assert _cli(settings, "reset", "--yes").returncode == 0
    with Session(engine) as session:
        assert session.scalars(select(Device.id)).all() == []
    check_schema(engine)
    engine.dispose()


@pytest.mark.parametrize("fault", ["unreachable", "wrong-password", "no-such-database"])
def test_postgresql_faults_are_one_clear_line(postgresql: Cluster, tmp_path: Path, fault: str) -> None:
    url = {"unreachable": f"postgresql+psycopg://postgres:x@127.0.0.1:{free_port()}/sensorhub",
           "wrong-password": postgresql.url("postgres", password="not-the-password"),
           "no-such-database": postgresql.url("nothing_here")}[fault]
    expected = {"unreachable": "Connection refused", "wrong-password": "password authentication failed",
                "no-such-database": 'database "nothing_here" does not exist'}[fault]
    with pytest.raises(DatabaseError, match=expected) as raised:
        check_url(url)
    assert "\n" not in str(raised.value) and "not-the-password" not in str(raised.value)
    settings = settings_for(tmp_path).replace(database_url=url)
    for command in ("upgrade", "init"):
        result = _cli(settings, command)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and re.search(expected, lines[0]), result.stderr
        assert "not-the-password" not in result.stderr


def test_a_postgresql_url_with_another_driver_is_refused_at_start(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    env = {**os.environ, **settings.environ(), "SENSORHUB_DATABASE_URL": "postgresql+psycopg2://u:p@127.0.0.1/db"}
    result = subprocess.run([sys.executable, "-m", "sensorhub", "db", "upgrade"], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 2 and "postgresql+psycopg://" in result.stderr, result.stderr


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_on_postgresql_backup_points_to_pg_dump_and_accounts_work(settings: Settings, engine: Engine,
                                                                   tmp_path: Path) -> None:
    result = _cli(settings, "backup", str(tmp_path / "copy.sqlite3"))
    assert result.returncode == 2 and "pg_dump" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "copy.sqlite3").exists()
    env = {**os.environ, **settings.environ()}
    added = subprocess.run([sys.executable, "-m", "sensorhub", "user", "add", "alice"], env=env,
                           input="correct horse battery\ncorrect horse battery\n", capture_output=True, text=True,
                           timeout=60, check=False)
    assert added.returncode == 0, added.stderr
    assert _cli(settings, "reset", "--yes").stdout.strip() == "database reset (1 web account(s) kept)"
    listed = subprocess.run([sys.executable, "-m", "sensorhub", "user", "list"], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert "alice" in listed.stdout and "sensorhub-test-password" not in listed.stdout + listed.stderr


def test_make_clean_keeps_a_copy_before_it_removes_the_database(tmp_path: Path) -> None:
    # `make clean` used to delete every reading and account at once.
    from tests.stack import ROOT

    (tmp_path / "db").mkdir()
    with sqlite3.connect(tmp_path / "db" / "db.sqlite3") as conn:
        conn.execute("CREATE TABLE kept (value)")
        conn.execute("INSERT INTO kept VALUES ('a reading')")
    conn.close()
    result = subprocess.run(["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "-C", str(tmp_path),
                             "clean"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "db" / "db.sqlite3").exists()
    copies = list((tmp_path / "db" / "backups").glob("db-*.sqlite3"))
    assert len(copies) == 1 and str(copies[0].relative_to(tmp_path)) in result.stdout
    assert copies[0].stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(copies[0]) as conn:
        assert conn.execute("SELECT value FROM kept").fetchall() == [("a reading",)]
    conn.close()
    again = subprocess.run(["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "-C", str(tmp_path),
                            "clean"], capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0 and "nothing to remove" in again.stdout
