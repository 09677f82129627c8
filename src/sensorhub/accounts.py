"""Web accounts: who may use the controls. Salted scrypt hashes (Werkzeug), managed with `sensorhub user`."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from sensorhub.db.models import WebUser
from sensorhub.errors import SensorhubError
from sensorhub.i18n import N_

logger = logging.getLogger(__name__)

MIN_PASSWORD = 10
MAX_PASSWORD = 1024
_NAME_RE = re.compile(r"[A-Za-z0-9._@-]{1,64}")
#: Checked against when the name is unknown, so that a wrong name takes as long as a wrong password: a fixed
#: scrypt hash of "sensorhub-no-such-user" with the parameters `generate_password_hash(method="scrypt")` uses
#: (tests/test_security.py checks they agree), written out rather than made at import, where it cost every process
#: that imports this module (each command line, each gunicorn worker) 0.1 s of CPU.
DUMMY_HASH = ("scrypt:32768:8:1$DGY6LwtOrwno8kp6$7eed1d58fb402f8a8bbb46e0e2f420d0d56e4ccbe075ca23beebe647aa0a6179ce99"
              "76701403b34278c1bbcb5b431adf0e5bc7cbf9273d7ab458917ffa70e6af")


class AccountError(SensorhubError):
    """An account cannot be added, changed or removed as asked."""


@dataclass(frozen=True, slots=True)
class Account:
    """A web account as `user list` shows it."""

    name: str
    created_at: datetime
    changed_at: datetime


def check_name(name: str) -> str:
    """Return `name` if it can be an account name, else raise AccountError."""
    if not _NAME_RE.fullmatch(name):
        raise AccountError(N_("an account name has 1 to 64 letters, digits or . _ @ - (no spaces)"))
    return name


def check_password(password: str) -> str:
    """Return `password` if it is acceptable, else raise AccountError."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AccountError(N_("a password has at least {count} characters"), count=MIN_PASSWORD)
    return password


def add(engine: Engine, name: str, password: str) -> None:
    """Create an account; AccountError if the name is taken."""
    check_name(name)
    digest = generate_password_hash(check_password(password), method="scrypt")
    now = datetime.now(UTC)
    try:
        with engine.begin() as conn:
            conn.execute(insert(WebUser).values(name=name, password_hash=digest, created_at=now, changed_at=now))
    except IntegrityError:
        raise AccountError(N_("the account {name!r} already exists (`sensorhub user passwd {name}` changes its "
                              "password)"), name=name) from None


def set_password(engine: Engine, name: str, password: str) -> None:
    """Change an account's password (its open sessions end); AccountError if it does not exist."""
    digest = generate_password_hash(check_password(password), method="scrypt")
    with engine.begin() as conn:
        done = conn.execute(update(WebUser).where(WebUser.name == name)
                            .values(password_hash=digest, changed_at=datetime.now(UTC))).rowcount
    if not done:
        raise AccountError(N_("no account is called {name!r} (`sensorhub user list`)"), name=name)


def remove(engine: Engine, name: str) -> None:
    """Delete an account (its open sessions end); AccountError if it does not exist."""
    with engine.begin() as conn:
        done = conn.execute(delete(WebUser).where(WebUser.name == name)).rowcount
    if not done:
        raise AccountError(N_("no account is called {name!r} (`sensorhub user list`)"), name=name)


def list_accounts(engine: Engine) -> list[Account]:
    """Every account, by name."""
    with engine.connect() as conn:
        rows = conn.execute(select(WebUser.name, WebUser.created_at, WebUser.changed_at).order_by(WebUser.name))
        return [Account(*row) for row in rows]


def any_account(conn: Connection) -> bool:
    """Whether at least one account exists (then the controls need a login)."""
    return bool(conn.execute(select(func.count()).select_from(WebUser)).scalar_one())


def verify(conn: Connection, name: str, password: str) -> str | None:
    """The session stamp of the account if `password` is right, else None (in constant time for unknown names)."""
    row = conn.execute(select(WebUser.password_hash).where(WebUser.name == name)).first()
    if row is None:
        check_password_hash(DUMMY_HASH, password)
        return None
    return stamp(row[0]) if check_password_hash(row[0], password) else None


def current_stamp(conn: Connection, name: str) -> str | None:
    """The session stamp of an account now, or None if it no longer exists."""
    row = conn.execute(select(WebUser.password_hash).where(WebUser.name == name)).first()
    return None if row is None else stamp(row[0])


def stamp(password_hash: str) -> str:
    """What a login session remembers of the password: it changes with the password, ending other sessions."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:20]
