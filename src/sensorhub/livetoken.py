"""Short-lived tokens that let a logged-in page open the live stream (`SENSORHUB_WEB_PRIVATE=1`).

The web server signs them with a key derived from its secret key (itsdangerous, salted for this use only); the
broker's WebSockets guard (sensorhub.wsguard), which reads the same secret, checks them on the WebSocket upgrade
request before anything reaches Mosquitto. A token says nothing but when it was made: it opens a connection for
`TOKEN_SECONDS` and is not needed afterwards; a page fetches a fresh one for each reconnection.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from itsdangerous import BadSignature, TimestampSigner

#: How long a token may be used to open a connection (a page asks for a new one every minute).
TOKEN_SECONDS = 300
#: The query parameter of the WebSocket URL that carries it.
PARAMETER = "token"
_SALT = "sensorhub.live-stream"
_VALUE = "live"


def _signer(secret_key: str) -> TimestampSigner:
    return TimestampSigner(secret_key, salt=_SALT)


def issue(secret_key: str) -> str:
    """A token for the live stream, valid `TOKEN_SECONDS` from now."""
    return _signer(secret_key).sign(_VALUE).decode()


def valid(secret_key: str, token: str | None, max_age: int = TOKEN_SECONDS) -> bool:
    """Whether `token` was issued with `secret_key` less than `max_age` seconds ago."""
    if not token:
        return False
    try:
        return _signer(secret_key).unsign(token, max_age=max_age) == _VALUE.encode()
    except BadSignature:  # also SignatureExpired
        return False


def from_request_line(line: bytes) -> str | None:
    """The token in the target of an HTTP request line (`GET /mqtt?token=... HTTP/1.1`), or None."""
    parts = line.split(b" ")
    if len(parts) != 3:
        return None
    try:
        target = parts[1].decode("ascii")
    except UnicodeDecodeError:
        return None
    values = parse_qs(urlsplit(target).query).get(PARAMETER)
    return values[0] if values else None
