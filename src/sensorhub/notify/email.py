"""The e-mail channel: each notification a message over SMTP (STARTTLS or TLS, then AUTH when a login is set).

The Message-ID is made of the notification's id (`<id@sensorhub>`), so that a mail system or a reader can drop a
repeat; the subject is the notification's one-line text. STARTTLS is required when configured: a server that
does not offer it gets nothing (never a fallback to plain text).
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Mapping
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Any

from sensorhub.config import Settings
from sensorhub.notify.channel import DeliveryError, shown_value, title, tls_context

logger = logging.getLogger(__name__)

#: Seconds for the connection and each exchange with the server.
TIMEOUT = 10.0
#: The domain part of every Message-ID.
MESSAGE_DOMAIN = "sensorhub"


def message_id(notification_id: str) -> str:
    """The Message-ID of a notification."""
    return f"<{notification_id}@{MESSAGE_DOMAIN}>"


def compose(payload: Mapping[str, Any], sender: str, recipients: list[str]) -> EmailMessage:
    """The message for `payload`."""
    message = EmailMessage()
    message["Subject"] = str(payload["text"])[:200]
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = message_id(str(payload["id"]))
    message["X-Sensorhub-Notification"] = str(payload["id"])
    rule, device = payload["rule"], payload["device"]
    lines = [str(payload["text"]), "", f"Alert: {title(payload)} ({payload['event']}, {payload['severity']})",
             f"Rule: {rule['name']} ({rule['metric']} {rule['operator']} {rule['trigger']:g}"
             + ("" if rule.get("clear") is None else f", clears at {rule['clear']:g}") + ")",
             f"Device: {device['name']} ({device['mac']})"]
    if shown_value(payload):
        lines.append(f"Value: {shown_value(payload)}")
    for key, label in (("since", "Since"), ("fired_at", "Fired"), ("resolved_at", "Resolved")):
        if payload.get(key):
            lines.append(f"{label}: {payload[key]} UTC")
    lines += ["", f"Notification {payload['id']} (the same id means the same notification, sent again)."]
    message.set_content("\n".join(lines) + "\n")
    return message


class Email:
    """Send each notification to SENSORHUB_NOTIFY_SMTP_TO through SENSORHUB_NOTIFY_SMTP_HOST."""

    name = "email"

    def __init__(self, settings: Settings, *, timeout: float = TIMEOUT) -> None:
        self.host = settings.notify_smtp_host
        self.port = settings.smtp_port
        self.security = settings.notify_smtp_security
        self.user = settings.notify_smtp_user
        self.password = settings.notify_smtp_password
        self.sender = settings.notify_smtp_from
        self.recipients = [address for address in settings.notify_smtp_to.split(",") if address]
        self.timeout = timeout
        self.context = tls_context(settings.notify_ca_file) if self.security != "none" else None

    def send(self, payload: Mapping[str, Any]) -> None:
        """Hand the message to the server; its acceptance (for at least one recipient) is delivery."""
        message = compose(payload, self.sender, self.recipients)
        try:
            smtp = (smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=self.context)
                    if self.security == "tls" else smtplib.SMTP(self.host, self.port, timeout=self.timeout))
            with smtp:
                smtp.ehlo()
                if self.security == "starttls":
                    smtp.starttls(context=self.context)
                    smtp.ehlo()
                if self.user:
                    smtp.login(self.user, self.password)
                refused = smtp.send_message(message, from_addr=parseaddr(self.sender)[1], to_addrs=self.recipients)
        except smtplib.SMTPNotSupportedError:
            raise DeliveryError(f"the SMTP server {self.host}:{self.port} does not offer STARTTLS") from None
        except smtplib.SMTPResponseException as err:
            said = err.smtp_error.decode("utf-8", "replace") if isinstance(err.smtp_error, bytes) else err.smtp_error
            raise DeliveryError(f"SMTP {err.smtp_code} {said}".strip()) from None
        except (smtplib.SMTPException, ssl.SSLError, OSError) as err:
            raise DeliveryError(f"SMTP {self.host}:{self.port}: {err}") from None
        if refused:  # the others have it: sending again would repeat it to them
            logger.warning("notification %s: the SMTP server refused %s", payload["id"], ", ".join(sorted(refused)))
