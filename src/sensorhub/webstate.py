"""The web server's own writable state: the login throttle and the login sessions.

The sensor database stays written by the ingest client and the CLI only (the web servers open it read-only, and
may read a replica). What the web server must write lives here instead: by default a small SQLite file in the
state directory (`var/web-state.sqlite3`, 0600), shared by the gunicorn workers of one machine; with
SENSORHUB_WEB_STATE_URL a PostgreSQL database, shared by several web servers behind one reverse proxy.

- The throttle counts failed logins per client address. An attempt takes its place in the count before its
  password is checked, in one write transaction serialised across processes and hosts (SQLite: BEGIN IMMEDIATE;
  PostgreSQL: a transaction-level advisory lock on the address), so parallel attempts cannot slip between a count
  and an insert. A right password gives its place back.
- A login session is a random id (256 bits) that only the browser's cookie holds; the table keeps its SHA-256,
  the account and when it was opened and expires (SENSORHUB_WEB_SESSION_DAYS). Logging out deletes its row;
  `sensorhub user passwd` and `user remove` delete the account's rows; an expired row counts for nothing and is
  deleted when met and at every login.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    event,
    func,
    insert,
    literal,
    select,
)
from sqlalchemy.engine import make_url

from sensorhub.config import Settings
from sensorhub.db.engine import make_engine, sqlite_path

logger = logging.getLogger(__name__)

#: The web state's file in the state directory, unless SENSORHUB_WEB_STATE_URL says otherwise.
STATE_FILE = "web-state.sqlite3"
#: Where the throttle lived before the sessions joined it (its counts last a minute: not carried over).
OLD_THROTTLE_FILE = "web-logins.sqlite3"
#: Failed logins allowed per client address in THROTTLE_WINDOW seconds; more answer 429.
THROTTLE_LIMIT = 5
THROTTLE_WINDOW = 60.0
#: First key of PostgreSQL's two-key advisory locks taken here (the second: 0 for the schema, else the address).
_PG_LOCK = 1617

metadata = MetaData()

failure = Table(
    "web_login_failure", metadata,
    # An INTEGER PRIMARY KEY on SQLite (the rowid), a bigint identity on PostgreSQL.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("address", String(64), nullable=False),
    Column("at", Float, nullable=False),  # Unix time, seconds
    Index("web_login_failure_address", "address", "at"),
)

login_session = Table(
    "web_login_session", metadata,
    Column("id_hash", String(64), primary_key=True),  # SHA-256 of the cookie's id, hex; never the id itself
    Column("account", String(64), nullable=False),
    Column("created_at", Float, nullable=False),  # Unix time, seconds
    Column("expires_at", Float, nullable=False),
    Index("web_login_session_account", "account"),
    Index("web_login_session_expires_at", "expires_at"),
)


def web_state_url(settings: Settings) -> str:
    """SENSORHUB_WEB_STATE_URL, or the SQLite file `web-state.sqlite3` in the state directory."""
    if settings.web_state_url:
        return settings.web_state_url
    from sensorhub.credentials import state_dir

    return f"sqlite:///{state_dir(settings) / STATE_FILE}"


class WebStateStore:
    """The web state database: an engine opened lazily in each process (gunicorn forks after create_app)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.dialect = make_url(url).get_backend_name()
        self._engine: Engine | None = None
        self._pid = 0
        self._lock = threading.Lock()

    @property
    def path(self) -> Path | None:
        """The SQLite file, or None on PostgreSQL."""
        return sqlite_path(self.url)

    def engine(self) -> Engine:
        """This process's engine (a forked child makes its own: pooled connections do not cross a fork)."""
        if self._engine is None or self._pid != os.getpid():
            with self._lock:
                if self._engine is None or self._pid != os.getpid():
                    self._engine = self._make_engine()
                    self._pid = os.getpid()
        return self._engine

    def _make_engine(self) -> Engine:
        engine = make_engine(self.url, create_dir=True)  # a new SQLite file is made 0600: it holds addresses
        if self.dialect == "sqlite":
            # pysqlite's own transaction handling off, so that a write transaction can say BEGIN IMMEDIATE: it takes
            # SQLite's write lock at once, and the other processes wait at BEGIN instead of after their count.
            @event.listens_for(engine, "connect")
            def _autocommit(dbapi_connection: Any, _record: Any) -> None:
                dbapi_connection.isolation_level = None

            @event.listens_for(engine, "begin")
            def _begin(conn: Connection) -> None:
                immediate = conn.get_execution_options().get("sqlite_immediate", False)
                conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
        return engine

    def setup(self) -> None:
        """Create the tables if missing (several processes or hosts may start at once)."""
        with self.write() as conn:
            if self.dialect == "postgresql":
                # CREATE TABLE IF NOT EXISTS still races on PostgreSQL's catalog: one process at a time.
                conn.execute(select(func.pg_advisory_xact_lock(_PG_LOCK, 0)))
            metadata.create_all(conn)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction, serialised with every other one on SQLite (BEGIN IMMEDIATE)."""
        with self.engine().connect() as conn, conn.execution_options(sqlite_immediate=True).begin():
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction."""
        with self.engine().connect() as conn, conn.begin():
            yield conn

    def dispose(self) -> None:
        """Close this process's pooled connections."""
        if self._engine is not None and self._pid == os.getpid():
            self._engine.dispose()
        self._engine = None


class LoginThrottle:
    """Failed logins per client address, counted atomically in the web state (shared by every web process)."""

    def __init__(self, store: WebStateStore, limit: int = THROTTLE_LIMIT, window: float = THROTTLE_WINDOW,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.limit = limit
        self.window = window
        self.clock = clock

    def attempt(self, address: str) -> int | None:
        """Count an attempt from `address` if fewer than `limit` are counted in the window: its id, else None."""
        now = self.clock()
        counted = select(func.count()).select_from(failure).where(
            failure.c.address == address, failure.c.at > now - self.window).scalar_subquery()
        with self.store.write() as conn:
            if self.store.dialect == "postgresql":
                # Attempts from one address wait for each other here, until the transaction ends.
                conn.execute(select(func.pg_advisory_xact_lock(_PG_LOCK, func.hashtext(address))))
            conn.execute(delete(failure).where(failure.c.at <= now - self.window))
            row = conn.execute(
                insert(failure).from_select(["address", "at"],
                                            select(literal(address, String), literal(now, Float))
                                            .where(counted < self.limit))
                .returning(failure.c.id)).first()
        return None if row is None else int(row[0])

    def succeeded(self, attempt: int) -> None:
        """A right password: the attempt no longer counts."""
        with self.store.write() as conn:
            conn.execute(delete(failure).where(failure.c.id == attempt))

    def blocked_for(self, address: str) -> float:
        """Seconds until `address` may try again (0: now)."""
        now = self.clock()
        with self.store.read() as conn:
            times = list(conn.execute(
                select(failure.c.at).where(failure.c.address == address, failure.c.at > now - self.window)
                .order_by(failure.c.at.desc()).limit(self.limit)).scalars())
        if len(times) < self.limit:
            return 0.0
        return max(0.0, float(times[-1]) + self.window - now)

    def forget(self) -> None:
        """Forget every counted attempt."""
        with self.store.write() as conn:
            conn.execute(delete(failure))


class LoginSessions:
    """Login sessions kept in the web state: the cookie holds a random id, the table its SHA-256 and expiry."""

    def __init__(self, store: WebStateStore, lifetime: float, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.lifetime = lifetime
        self.clock = clock

    def open(self, account: str) -> str:
        """Open a session of `account` for `lifetime` seconds: its id, for the cookie only (expired ones go)."""
        now = self.clock()
        token = secrets.token_urlsafe(32)
        with self.store.write() as conn:
            conn.execute(delete(login_session).where(login_session.c.expires_at <= now))
            conn.execute(insert(login_session).values(id_hash=digest(token), account=account, created_at=now,
                                                      expires_at=now + self.lifetime))
        return token

    def account(self, token: str) -> str | None:
        """The account of the session `token`, or None if it is unknown, ended or expired (then deleted)."""
        now = self.clock()
        with self.store.read() as conn:
            row = conn.execute(select(login_session.c.account, login_session.c.expires_at)
                               .where(login_session.c.id_hash == digest(token))).first()
        if row is None:
            return None
        if row.expires_at <= now:
            with self.store.write() as conn:
                conn.execute(delete(login_session).where(login_session.c.id_hash == digest(token)))
            return None
        return str(row.account)

    def end(self, token: str) -> bool:
        """End the session `token` (logging out): whether it was open."""
        with self.store.write() as conn:
            return bool(conn.execute(delete(login_session).where(login_session.c.id_hash == digest(token)))
                        .rowcount)

    def end_all(self, account: str) -> int:
        """End every session of `account` (its password changed, or it was removed): how many."""
        with self.store.write() as conn:
            return int(conn.execute(delete(login_session).where(login_session.c.account == account)).rowcount)


def digest(token: str) -> str:
    """What the web state keeps of a session id: its SHA-256 in hex (a copy of the table opens no session)."""
    return hashlib.sha256(token.encode()).hexdigest()


def end_account_sessions(settings: Settings, account: str) -> int:
    """End every login session of `account` in the web state of `settings` (for the CLI): how many ended.

    A SQLite web state that no web server has made yet holds no session: it is not created here (by the CLI's
    user, maybe root, which the web server could then not open).
    """
    store = WebStateStore(web_state_url(settings))
    if store.path is not None and not store.path.exists():
        return 0
    try:
        store.setup()
        return LoginSessions(store, 0).end_all(account)
    finally:
        store.dispose()


def drop_old_throttle_file(directory: Path) -> None:
    """Delete the throttle's file of earlier versions: its counts expire within a minute anyway."""
    for name in (OLD_THROTTLE_FILE, OLD_THROTTLE_FILE + "-journal"):
        try:
            (directory / name).unlink()
        except FileNotFoundError:
            continue
        logger.info("deleted %s (the login throttle now lives in %s)", directory / name, STATE_FILE)

