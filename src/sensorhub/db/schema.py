"""The schema's version: Alembic migrations, and a look at a database file before anything is written to it.

Every schema change is a migration in `db/migrations/versions/`. `sensorhub db upgrade` (run by `make db`,
`make run` and `sensorhub db init`) brings a database to the newest revision; the ingest client refuses to
start on anything else, with one line saying what to do. A database made before migrations existed
(`PRAGMA user_version = 1`, sensorhub's tables, no `alembic_version`) is stamped with the baseline revision
and upgraded in place.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.request import pathname2url

from sqlalchemy import Connection, Engine, MetaData, insert, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from sensorhub.db.engine import make_engine, sqlite_path
from sensorhub.db.sqlite import ensure_search
from sensorhub.errors import DatabaseError, reason
from sensorhub.i18n import N_

if TYPE_CHECKING:
    from alembic.config import Config

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: `PRAGMA user_version` of databases made before migrations existed, and the revision they match.
LEGACY_USER_VERSION = 1
BASELINE = "0001"
LEGACY_TABLES = frozenset({"device", "led_reading", "button_reading", "light_reading"})


class State(Enum):
    """What a database file holds."""

    MISSING = "missing"
    EMPTY = "empty"
    LEGACY = "legacy"
    CURRENT = "current"
    OLDER = "older"
    NEWER = "newer"
    FOREIGN = "foreign"


@dataclass(frozen=True, slots=True)
class Found:
    """The result of looking at a database: its state, its revision and its tables."""

    state: State
    revision: str | None
    tables: frozenset[str]


def alembic_config() -> Config:
    """Alembic's configuration: sensorhub's migrations, run on the connection put in `attributes`."""
    from alembic.config import Config  # only to migrate: a command that reads the database spares its import

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def revisions() -> list[str]:
    """Every revision, oldest first: the migrations' file names start with their revision, in order (a test checks
    it against Alembic's own chain), so that checking a database's revision does not import Alembic and every
    migration (0.1 s for each command line)."""
    return sorted(path.name.split("_", 1)[0] for path in (MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))


def head() -> str:
    """The newest revision this sensorhub knows."""
    return revisions()[-1]


def look(url: str) -> Found:
    """What the database at `url` holds, read without writing anything (not even switching it to WAL)."""
    path = sqlite_path(url)
    if path is not None:
        return _look_sqlite(path)
    return _look_engine(url)


def _classify(tables: frozenset[str], revision: str | None, user_version: int | None) -> Found:
    if not tables:
        return Found(State.EMPTY, None, tables)
    if "alembic_version" in tables:
        known = revisions()
        if revision == known[-1]:
            return Found(State.CURRENT, revision, tables)
        if revision in known:
            return Found(State.OLDER, revision, tables)
        if revision is not None and tables >= LEGACY_TABLES:
            return Found(State.NEWER, revision, tables)
        return Found(State.FOREIGN, revision, tables)
    if user_version == LEGACY_USER_VERSION and tables >= LEGACY_TABLES:
        return Found(State.LEGACY, None, tables)
    return Found(State.FOREIGN, None, tables)


def _look_sqlite(path: Path) -> Found:
    if not path.exists():
        return Found(State.MISSING, None, frozenset())
    if path.stat().st_size == 0:
        return Found(State.EMPTY, None, frozenset())
    try:
        conn = sqlite3.connect(f"file:{pathname2url(str(path.resolve()))}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as err:
        raise DatabaseError(N_("cannot open the database {where}: {reason}"), where=path, reason=err) from err
    try:
        tables = frozenset(row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"))
        user_version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        revision = None
        if "alembic_version" in tables:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = None if row is None else str(row[0])
    except sqlite3.DatabaseError as err:
        raise DatabaseError(N_("{path} is not a SQLite database ({reason}): point SENSORHUB_DATABASE_URL at "
                               "sensorhub's database"), path=path, reason=err) from None
    finally:
        conn.close()
    return _classify(tables, revision, user_version)


def _look_engine(url: str) -> Found:
    engine = make_engine(url, read_only=True)
    try:
        with engine.connect() as conn:
            tables = frozenset(inspect(conn).get_table_names())
            revision = None
            if "alembic_version" in tables:
                revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError as err:
        raise DatabaseError(N_("cannot open the database {where}: {reason}"), where=repr(engine.url),
                            reason=reason(err)) from err
    finally:
        engine.dispose()
    return _classify(tables, revision, None)


def display_url(url: str) -> str:
    """The database's file, or its URL without the password, for messages."""
    return str(sqlite_path(url) or make_url(url).render_as_string(hide_password=True))


def init_db(engine: Engine) -> None:
    """Create the schema, or bring it to the newest revision (idempotent)."""
    upgrade(engine.url.render_as_string(hide_password=False))
    logger.info("database ready at %s", engine.url)


def check_schema(database: Engine | str) -> None:
    """Raise DatabaseError, in one line saying what to do, unless the database (an engine or a URL) is at the
    newest revision."""
    url = database if isinstance(database, str) else database.url.render_as_string(hide_password=False)
    found = look(url)
    where = display_url(url)
    match found.state:
        case State.CURRENT:
            return
        case State.MISSING:
            raise DatabaseError(N_("no database at {where}: create it with `make db` (sensorhub db init)"), where=where)
        case State.EMPTY:
            raise DatabaseError(N_("the database {where} is empty: create its schema with `make db` "
                                   "(sensorhub db init)"), where=where)
        case State.LEGACY | State.OLDER:
            raise DatabaseError(N_("the database {where} has an older schema ({found}, this sensorhub needs {head}): "
                                   "upgrade it with `make db` (sensorhub db upgrade)"), where=where,
                                found=found.revision or "first release", head=head())
        case State.NEWER:
            raise DatabaseError(N_("the database {where} was made by a newer sensorhub (schema {found}; this one "
                                   "knows up to {head}): upgrade sensorhub"), where=where, found=found.revision,
                                head=head())
        case State.FOREIGN:
            shown = ", ".join(sorted(found.tables)[:5]) + ("…" if len(found.tables) > 5 else "")
            raise DatabaseError(N_("{where} is not a sensorhub database (its tables: {shown}): point "
                                   "SENSORHUB_DATABASE_URL at another file"), where=where, shown=shown)


def upgrade(url: str) -> tuple[str | None, str]:
    """Bring the database at `url` to the newest revision (creating it if needed); return (before, after)."""
    found = look(url)
    if found.state in (State.NEWER, State.FOREIGN):
        check_schema(url)  # raises the one-line explanation
    from alembic import command

    engine = make_engine(url, create_dir=True)
    try:
        config = alembic_config()
        with engine.begin() as conn:
            _warn_about_collation(conn)
            config.attributes["connection"] = conn
            if found.state is State.LEGACY:
                logger.info("database made before migrations: marking it as revision %s", BASELINE)
                command.stamp(config, BASELINE)
            command.upgrade(config, "head")
            ensure_search(conn)  # SQLite's search index, if it could not be made before or lost a trigger
    except SQLAlchemyError as err:
        raise DatabaseError(N_("cannot upgrade the database {where}: {reason}"), where=repr(engine.url),
                            reason=reason(err)) from err
    finally:
        engine.dispose()
    after = head()
    before = BASELINE if found.state is State.LEGACY else found.revision
    if before != after:
        logger.info("database %s upgraded from %s to %s", display_url(url), before or "nothing", after)
    return before, after


def _warn_about_collation(conn: Connection) -> None:
    """Names sort as SQLite sorts them (by code point) only in a PostgreSQL database made with the C collation."""
    if conn.dialect.name != "postgresql":
        return
    collation = conn.exec_driver_sql("SELECT datcollate FROM pg_database WHERE datname = current_database()").scalar()
    if collation not in ("C", "POSIX", "C.UTF-8", "C.utf8"):
        logger.warning("the PostgreSQL database uses the collation %s: lists sorted by name may differ from "
                       "SQLite's order; create it with LC_COLLATE 'C' (docs/install.md, \"PostgreSQL\")", collation)


def migrated_engine(url: str) -> Engine:
    """An engine on a database brought to the newest revision (tests and tools)."""
    upgrade(url)
    return make_engine(url)


def reset(url: str) -> int:
    """Delete every device and reading, then recreate an empty schema; web accounts are kept (they are
    configuration, not recorded data). Refuses a database that is not sensorhub's. Returns how many accounts."""
    from sensorhub.db.models import WebUser

    check_schema(url)  # never drop the tables of something that is not ours
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            accounts = [dict(row) for row in conn.execute(select(WebUser.__table__)).mappings()]
            tables = MetaData()
            tables.reflect(conn)
            tables.drop_all(conn)
        init_db(engine)
        if accounts:
            with engine.begin() as conn:
                conn.execute(insert(WebUser), accounts)
    finally:
        engine.dispose()
    return len(accounts)
