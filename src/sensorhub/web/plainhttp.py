"""Plain HTTP on the HTTPS port: a redirect to the same path over https://, instead of an empty reply.

gunicorn wraps each accepted connection in TLS before it reads anything (in gevent's server, in the connection's
own greenlet); a browser that was given `http://host:8000/` then fails the handshake and sees the connection
closed. gunicorn's `ssl_context` hook lets us hand it a context whose `wrap_socket` first peeks at the client's
first byte: 0x16 opens a TLS handshake and goes on as before; anything else is read as an HTTP request head
(bounded in size and time), answered `308 Permanent Redirect` to `https://<Host><path>`, and closed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

#: The first byte of a TLS record carrying a handshake (a ClientHello): RFC 8446 section 5.1.
TLS_HANDSHAKE = 0x16
#: Most bytes of a request head read before answering (gunicorn takes a 4094-byte request line at most).
MAX_HEAD = 8192
#: Seconds a plain-HTTP client has to send its request head; a slow one is closed then, holding one greenlet.
HEAD_SECONDS = 10.0
#: Seconds the rest of an answered request (a body) is read and dropped before closing.
LINGER_SECONDS = 1.0
#: The request line of HTTP/1.x: a method, an origin-form target of visible ASCII, the version.
_REQUEST_LINE = re.compile(rb"([A-Z]{1,20}) (\S{1,4094}) HTTP/1\.[01]")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
#: A Host header as browsers send it: a DNS name or IPv4 address, or a bracketed IPv6 address, and a port.
_HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*\.?|\[(?P<ipv6>[0-9A-Fa-f:.]{{2,45}})\])(?::(?P<port>\d{{1,5}}))?")
_WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})

Factory = Callable[[], Any]


class PlainHttpAnswered(ssl.SSLError):
    """A plain-HTTP client on the HTTPS port, answered with a redirect: no TLS connection, as for a bad handshake."""


def authority(host_header: str | None, fallback: str) -> str:
    """`host[:port]` for the redirect: the request's Host if it is one, else `fallback` (never a foreign URL)."""
    if host_header is None:
        return fallback
    match = _HOST.fullmatch(host_header.strip())
    if match is None or len(match[0]) > 255:
        return fallback
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            return fallback
    if match["port"] is not None and not 0 < int(match["port"]) < 65536:
        return fallback
    return match[0]


def redirect_target(head: bytes, fallback: str) -> str | None:
    """The https:// URL answering a request head, or None if the head is not HTTP/1.x."""
    lines = head.split(b"\n")
    request = _REQUEST_LINE.fullmatch(lines[0].rstrip(b"\r"))
    if request is None:
        return None
    path = request[2].decode("ascii", "replace")
    if not path.startswith("/") or not path.isprintable() or not path.isascii():
        path = "/"  # absolute-form (`GET http://elsewhere/`), `*` or worse: the site's root, never another host
    host = None
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"host":
            if host is not None:
                return f"https://{fallback}{path}"  # two Host headers: trust neither (RFC 9112 section 3.2)
            host = value.strip().decode("ascii", "replace")
    return f"https://{authority(host, fallback)}{path}"


def redirect_response(method: str, location: str) -> bytes:
    """The 308 answer, with a short body for people (none for HEAD)."""
    body = f"This port speaks HTTPS: {location}\n".encode("ascii")
    head = (f"HTTP/1.1 308 Permanent Redirect\r\nLocation: {location}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("ascii")
    return head if method == "HEAD" else head + body


def _read_head(sock: socket.socket) -> bytes:
    """The request head, up to its blank line, MAX_HEAD bytes or HEAD_SECONDS (then what came)."""
    deadline = time.monotonic() + HEAD_SECONDS
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) < MAX_HEAD:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no request head in time")
        sock.settimeout(remaining)
        chunk = sock.recv(MAX_HEAD - len(head))
        if not chunk:
            break
        head += chunk
    return head


def _fallback(sock: socket.socket, configured_host: str) -> str:
    """This server's own name and port: the configured address, else the one the client reached."""
    address, port = sock.getsockname()[:2]
    name = address if configured_host.strip("[]") in _WILDCARDS else configured_host.strip("[]")
    if ":" in name:
        name = f"[{name}]"
    return name if port == 443 else f"{name}:{port}"


def answer(sock: socket.socket, configured_host: str) -> None:
    """Read a plain-HTTP request head from `sock` and answer it with a redirect to https (nothing if it is not HTTP)."""
    head = _read_head(sock)
    first_line = head.split(b"\n", 1)[0]
    location = redirect_target(head, _fallback(sock, configured_host))
    if location is None:
        logger.debug("neither TLS nor HTTP on the HTTPS port: %r", first_line[:40])
        return
    method = first_line.split(b" ", 1)[0].decode("ascii")
    sock.sendall(redirect_response(method, location))
    # Closing with unread bytes (a POST's body) would send a reset that can destroy the answer before the client
    # reads it: say we are done, then take what still comes for a moment.
    with contextlib.suppress(OSError):  # the client may be gone already: nothing more to do
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(LINGER_SECONDS)
        for _ in range(16):
            if not sock.recv(4096):
                break


class _AnsweringContext:
    """An SSL context that answers plain HTTP itself and wraps everything else as the real one does."""

    def __init__(self, context: Any, configured_host: str) -> None:
        self._context = context
        self._configured_host = configured_host

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> Any:
        """The TLS socket for a TLS client; for a plain-HTTP one, its redirect, then PlainHttpAnswered."""
        first = sock.recv(1, socket.MSG_PEEK)  # waits, in this connection's greenlet, as the handshake would
        if first and first[0] != TLS_HANDSHAKE:
            answer(sock, self._configured_host)
            raise PlainHttpAnswered("plain HTTP on the HTTPS port: answered with a redirect to https")
        return self._context.wrap_socket(sock, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def ssl_context_hook(configured_host: str) -> Callable[[Any, Factory], Any]:
    """gunicorn's `ssl_context` setting: its own context, answering plain HTTP with a redirect to https."""

    def ssl_context(_config: Any, default_ssl_context_factory: Factory) -> Any:
        return _AnsweringContext(default_ssl_context_factory(), configured_host)

    return ssl_context
