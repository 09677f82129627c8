"""The webhook channel: each notification POSTed to one URL, its body and headers rendered from templates.

The body is SENSORHUB_NOTIFY_WEBHOOK_TEMPLATE with `string.Template` placeholders ($text, $title, $json, …);
when the content type is JSON, each value is JSON-escaped (the template writes the quotes: `{"text": "$text"}`)
and the rendered body must be JSON (checked at start). Every request carries `X-Sensorhub-Notification: <id>`
for the receiver to drop a repeat. A 2xx answer is delivery; anything else, a redirect included (a POST
redirected would lose its body), is a failure retried later.
"""

from __future__ import annotations

import json
import logging
import re
import string
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from sensorhub.config import Settings
from sensorhub.errors import ConfigError
from sensorhub.notify.channel import SAMPLE, DeliveryError, placeholders, tls_context

logger = logging.getLogger(__name__)

#: Seconds to connect, and for each read of the answer.
TIMEOUT = 10.0
#: The header naming the notification (its outbox id).
ID_HEADER = "X-Sensorhub-Notification"
USER_AGENT = "sensorhub-notify"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer like any other that is not 2xx: urllib would turn the POST into a GET."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        """Follow nothing."""
        return None


def is_json(content_type: str) -> bool:
    """Whether `content_type` is JSON (application/json, or a `+json` type)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def parse_headers(text: str) -> list[tuple[str, string.Template]]:
    """SENSORHUB_NOTIFY_WEBHOOK_HEADERS as (name, value template) pairs."""
    pairs = []
    for item in re.split(r"[;\n]", text):
        name, colon, value = item.partition(":")
        if colon and name.strip():
            pairs.append((name.strip(), string.Template(value.strip())))
    return pairs


def _header_value(value: str) -> str:
    """One line of Latin-1 (what HTTP headers carry): no header can be split into two."""
    flat = re.sub(r"[\r\n\0]+", " ", value)
    return flat.encode("latin-1", "replace").decode("latin-1")


class Webhook:
    """POST each notification to SENSORHUB_NOTIFY_WEBHOOK_URL."""

    name = "webhook"

    def __init__(self, settings: Settings, *, timeout: float = TIMEOUT) -> None:
        self.url = settings.notify_webhook_url
        self.content_type = settings.notify_webhook_content_type
        self.template = string.Template(settings.notify_webhook_template)
        self.headers = parse_headers(settings.notify_webhook_headers)
        self.timeout = timeout
        self.json = is_json(self.content_type)
        handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
        if self.url.lower().startswith("https:"):
            handlers.append(urllib.request.HTTPSHandler(context=tls_context(settings.notify_ca_file)))
        self._opener = urllib.request.build_opener(*handlers)
        if self.json:
            try:
                json.loads(self.body(SAMPLE))
            except ValueError as err:
                raise ConfigError(f"SENSORHUB_NOTIFY_WEBHOOK_TEMPLATE does not give JSON with the content type "
                                  f"{self.content_type} ({err}); quote the placeholders (\"$text\") or use "
                                  f"$json") from None

    def body(self, payload: Mapping[str, Any]) -> str:
        """The rendered template for `payload`."""
        values = placeholders(payload)
        if self.json:
            values = {key: value if key == "json" else json.dumps(value, ensure_ascii=False)[1:-1]
                      for key, value in values.items()}
        return self.template.safe_substitute(values)

    def request(self, payload: Mapping[str, Any]) -> urllib.request.Request:
        """The POST for `payload`."""
        values = placeholders(payload)
        headers = {"Content-Type": self.content_type, "User-Agent": USER_AGENT, ID_HEADER: str(payload["id"])}
        for name, template in self.headers:
            headers[name] = _header_value(template.safe_substitute(values))
        return urllib.request.Request(self.url, data=self.body(payload).encode("utf-8"), headers=headers,
                                      method="POST")

    def send(self, payload: Mapping[str, Any]) -> None:
        """POST `payload`; a 2xx answer is delivery."""
        try:
            with self._opener.open(self.request(payload), timeout=self.timeout) as answer:
                answer.read(65536)
                status = int(answer.status)
        except urllib.error.HTTPError as err:
            detail = err.read(200).decode("utf-8", "replace").strip() if err.fp is not None else ""
            err.close()
            raise DeliveryError(f"HTTP {err.code} {err.reason}" + (f": {detail}" if detail else "")) from None
        except (OSError, ValueError) as err:  # refused, unreachable, timed out, TLS (URLError is an OSError)
            raise DeliveryError(f"cannot reach the webhook: {getattr(err, 'reason', None) or err}") from None
        if not 200 <= status < 300:
            raise DeliveryError(f"HTTP {status}")
