"""A visitor of a real web server (gunicorn in a subprocess): cookies, CSRF token, JSON helpers."""

from __future__ import annotations

import http.cookiejar
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Protocol


class Site(Protocol):
    """Where the web server is."""

    def url(self, path: str) -> str:
        """Absolute URL of `path` on the web server."""


class Browser:
    """A visitor of the real web server: a cookie jar, the CSRF token of the last page, JSON helpers."""

    def __init__(self, stack: Site) -> None:
        self.stack = stack
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect())
        self.token = ""

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        request = urllib.request.Request(self.stack.url(path), data=body, method=method, headers=headers or {})
        try:
            with self.opener.open(request, timeout=10) as response:
                status, answer_headers, text = response.status, dict(response.headers), response.read().decode()
        except urllib.error.HTTPError as err:
            status, answer_headers, text = err.code, dict(err.headers), err.read().decode()
        if match := re.search(r'<meta name="csrf-token" content="([^"]+)"', text):
            self.token = match[1]
        return status, answer_headers, text

    def page(self, path: str) -> str:
        status, _, text = self.request("GET", path)
        assert status == 200, f"GET {path}: {status}"
        return text

    def json(self, path: str) -> Any:
        status, _, text = self.request("GET", path, headers={"Accept": "application/json"})
        assert status == 200, f"GET {path}: {status} {text[:200]}"
        return json.loads(text)

    def post_json(self, path: str, body: Any, csrf: bool = True) -> tuple[int, Any]:
        if csrf and not self.token:
            self.page("/capteurs")
        headers = {"Content-Type": "application/json", **({"X-CSRFToken": self.token} if csrf else {})}
        status, _, text = self.request("POST", path, json.dumps(body).encode(), headers)
        return status, json.loads(text) if text.startswith("{") else text

    def login(self, name: str, password: str) -> tuple[int, dict[str, str], str]:
        self.page("/login")
        form = urllib.parse.urlencode({"csrf_token": self.token, "name": name, "password": password,
                                       "next": "/capteurs"}).encode()
        return self.request("POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"})


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


