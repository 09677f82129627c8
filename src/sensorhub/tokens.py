"""API tokens: bearer tokens for scripts, made and revoked on the command line (`sensorhub token ...`).

A token is `shk_` and 43 random URL-safe characters (256 bits), printed once when it is made; the database keeps
its SHA-256 digest only (a token is random, so no slow hash is needed to protect it), and its first characters
to tell tokens apart. `Authorization: Bearer <token>` then works on every API route of the web server, without
a cookie nor a CSRF token; a read-only token reads but cannot switch LEDs, rename devices nor change alerts.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, delete, insert, select
from sqlalchemy.exc import IntegrityError

from sensorhub.accounts import check_name
from sensorhub.db.models import ApiToken
from sensorhub.errors import SensorhubError
from sensorhub.i18n import N_

PREFIX = "shk_"
#: Characters of the token shown by `token list` (the prefix and 4 random ones).
SHOWN = len(PREFIX) + 4


class TokenError(SensorhubError):
    """A token cannot be made or revoked as asked."""


@dataclass(frozen=True, slots=True)
class Token:
    """A token as `token list` and the web server see it (never the secret)."""

    name: str
    prefix: str
    read_only: bool
    created_at: datetime


def digest(token: str) -> str:
    """The SHA-256 digest kept for `token` (hex)."""
    return hashlib.sha256(token.encode()).hexdigest()


def add(engine: Engine, name: str, read_only: bool = False) -> str:
    """Make a token called `name`; return the secret (shown once, never stored)."""
    try:
        check_name(name)
    except SensorhubError:
        raise TokenError(N_("a token name has 1 to 64 letters, digits or . _ @ - (no spaces)")) from None
    secret = PREFIX + secrets.token_urlsafe(32)
    try:
        with engine.begin() as conn:
            conn.execute(insert(ApiToken).values(name=name, digest=digest(secret), prefix=secret[:SHOWN],
                                                 read_only=read_only, created_at=datetime.now(UTC)))
    except IntegrityError:
        raise TokenError(N_("a token is already called {name!r} (`sensorhub token list`)"), name=name) from None
    return secret


def list_tokens(engine: Engine) -> list[Token]:
    """Every token, by name."""
    with engine.connect() as conn:
        rows = conn.execute(select(ApiToken.name, ApiToken.prefix, ApiToken.read_only, ApiToken.created_at)
                            .order_by(ApiToken.name))
        return [Token(str(name), str(prefix), bool(read_only), created) for name, prefix, read_only, created in rows]


def revoke(engine: Engine, name: str) -> None:
    """Delete the token `name`: requests carrying it are refused from now on."""
    with engine.begin() as conn:
        if conn.execute(delete(ApiToken).where(ApiToken.name == name)).rowcount == 0:
            raise TokenError(N_("no token is called {name!r} (`sensorhub token list`)"), name=name)


def verify(conn: Connection, secret: str) -> Token | None:
    """The token whose secret this is, or None (unknown, revoked, or not a token at all)."""
    if not secret.startswith(PREFIX) or len(secret) > 100:
        return None
    row = conn.execute(select(ApiToken.name, ApiToken.prefix, ApiToken.read_only, ApiToken.created_at)
                       .where(ApiToken.digest == digest(secret))).first()
    if row is None:
        return None
    return Token(str(row[0]), str(row[1]), bool(row[2]), row[3])
