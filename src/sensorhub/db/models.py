"""Typed SQLAlchemy 2.x models: devices and their LED, push-button and photoresistor readings; alerts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Text,
    TypeDecorator,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sensorhub.protocol import Kind
from sensorhub.rules import MAC_LENGTH, MAX_NAME, MAX_SESSION, NAME_RULE, SESSION_RULE
from sensorhub.timestamps import TIMESTAMP_GLOB, format_timestamp

MAC_GLOB = ":".join(["[0-9A-F][0-9A-F]"] * 6)


class UtcDateTime(TypeDecorator[datetime]):
    """An aware datetime kept as fixed-width UTC text."""

    impl = String(26)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> str | None:
        """Store an aware datetime as UTC text."""
        return None if value is None else format_timestamp(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """Read UTC text back as an aware datetime."""
        return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)


def _timestamp_check(column: str) -> CheckConstraint:
    return CheckConstraint(f"{column} GLOB '{TIMESTAMP_GLOB}'", name=f"{column}_format")


class Base(DeclarativeBase):
    """Declarative base of all models."""


class Device(Base):
    """An ESP32 board, known by its MAC address, with the name and session the server gave it.

    `name` is what people see and may be changed from the web UI at any time; `session_name` is the name
    the device was given with its current session and uses in its payloads. They differ only between a
    rename and the device's next join, when the server hands it the new name.
    """

    __tablename__ = "device"
    __table_args__ = (
        CheckConstraint(NAME_RULE.sql_check("name"), name="name_format"),
        CheckConstraint(NAME_RULE.sql_check("session_name"), name="session_name_format"),
        CheckConstraint(f"mac GLOB '{MAC_GLOB}'", name="mac_format"),
        CheckConstraint(SESSION_RULE.sql_check("session_id"), name="session_id_format"),
        CheckConstraint("online IN (0, 1)", name="online_boolean"),
        _timestamp_check("joined_at"),
        _timestamp_check("last_seen"),
        CheckConstraint("joined_at <= last_seen", name="seen_after_joined"),
        Index("ix_device_last_seen", "last_seen", "id"),
        Index("ix_device_online", "online"),
        # A page of /capteurs among 100,000 (db/listing.py): online (or not) devices by name, or by last message,
        # and their counts, read from the index alone (migration 0009).
        Index("ix_device_online_name", "online", "name"),
        Index("ix_device_online_seen", "online", "last_seen", "id"),
        # The few devices marked offline during a broker outage, read by every worker before each batch.
        Index("ix_device_lost", "id", sqlite_where=text("lost"), postgresql_where=text("lost")),
        # AUTOINCREMENT: an id, hence a default name capteurNN, is never handed out twice.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME), unique=True)
    session_name: Mapped[str] = mapped_column(String(MAX_NAME), unique=True)
    mac: Mapped[str] = mapped_column(String(MAC_LENGTH), unique=True)
    online: Mapped[bool] = mapped_column(default=False)
    session_id: Mapped[str] = mapped_column(String(MAX_SESSION))
    joined_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_seen: Mapped[datetime] = mapped_column(UtcDateTime())
    # Presence is decided where every worker sees it (db/presence.py): the time of the message that last
    # set `online` in this session (NULL: none yet; stored text like `last_seen`), so that of two workers
    # deciding it the later message wins; and whether the device was marked offline only because the broker
    # was out of reach (a reading in its session brings it back).
    presence_at: Mapped[str | None] = mapped_column(String(26), default=None)
    lost: Mapped[bool] = mapped_column(default=False, server_default=false())
    # The latest reading of each kind and its time (NULL: none recorded), kept by the ingest client in the
    # batch's last_seen UPDATE and by db.latest.refresh_latest elsewhere; stored text like a reading's `at`.
    last_led: Mapped[int | None] = mapped_column(Integer, default=None)
    last_led_at: Mapped[str | None] = mapped_column(String(26), default=None)
    last_button: Mapped[int | None] = mapped_column(Integer, default=None)
    last_button_at: Mapped[str | None] = mapped_column(String(26), default=None)
    last_light: Mapped[int | None] = mapped_column(Integer, default=None)
    last_light_at: Mapped[str | None] = mapped_column(String(26), default=None)

    def __repr__(self) -> str:
        return f"Device(id={self.id!r}, name={self.name!r}, mac={self.mac!r}, online={self.online!r})"


class _Reading:
    """Columns shared by the three reading tables."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("device.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    value: Mapped[int] = mapped_column(Integer)


class LedReading(_Reading, Base):
    """The LED switched on (1) or off (0)."""

    __tablename__ = "led_reading"
    __table_args__ = (
        CheckConstraint("typeof(value) = 'integer' AND value IN (0, 1)", name="led_value"),
        _timestamp_check("at"),
        Index("ix_led_reading_device_at", "device_id", "at"),
    )


class ButtonReading(_Reading, Base):
    """The push-button pressed (1) or released (0)."""

    __tablename__ = "button_reading"
    __table_args__ = (
        CheckConstraint("typeof(value) = 'integer' AND value IN (0, 1)", name="button_value"),
        _timestamp_check("at"),
        Index("ix_button_reading_device_at", "device_id", "at"),
    )


class LightReading(_Reading, Base):
    """Light on the photoresistor, 0 (dark) to 100 (bright) percent."""

    __tablename__ = "light_reading"
    __table_args__ = (
        CheckConstraint("typeof(value) = 'integer' AND value BETWEEN 0 AND 100", name="light_value"),
        _timestamp_check("at"),
        Index("ix_light_reading_device_at", "device_id", "at"),
    )


class WebUser(Base):
    """An account that may use the web page's controls (LED, rename), made with `sensorhub user add`."""

    __tablename__ = "web_user"
    __table_args__ = (
        CheckConstraint("length(name) BETWEEN 1 AND 64 AND name NOT GLOB '*[^A-Za-z0-9._@-]*'", name="user_name"),
        CheckConstraint("length(password_hash) BETWEEN 20 AND 400", name="user_password_hash"),
        _timestamp_check("created_at"),
        _timestamp_check("changed_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(400))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    changed_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ApiToken(Base):
    """A bearer token for scripts (`sensorhub token add`): only its SHA-256 digest is kept; read-only ones cannot
    switch LEDs, rename devices nor change alerts."""

    __tablename__ = "api_token"
    __table_args__ = (
        CheckConstraint("length(name) BETWEEN 1 AND 64 AND name NOT GLOB '*[^A-Za-z0-9._@-]*'", name="token_name"),
        CheckConstraint("length(digest) = 64", name="token_digest"),
        _timestamp_check("created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    #: The token's first characters, to tell tokens apart in `token list` (never enough to use one).
    prefix: Mapped[str] = mapped_column(String(12))
    read_only: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Quarantine(Base):
    """A valid message the database refused, kept with the reason rather than dropped once acknowledged."""

    __tablename__ = "quarantine"
    __table_args__ = (
        _timestamp_check("received_at"),
        Index("ix_quarantine_received_at", "received_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())
    topic: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(String(512))


class _Rollup:
    """Columns shared by the roll-up tables: one row per device, kind and bucket (its start, UTC text).

    `count`, `low`, `high` and `total` summarise the readings whose time falls in the bucket (`low` and `high`
    are NULL when none did); `on_us` is the time the LED was on or the button pressed within the bucket, in
    microseconds, counted from each reading to the next one of the same session.
    """

    device_id: Mapped[int] = mapped_column(ForeignKey("device.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(6))
    start: Mapped[datetime] = mapped_column(UtcDateTime())
    count: Mapped[int] = mapped_column(Integer)
    low: Mapped[int | None] = mapped_column(Integer)
    high: Mapped[int | None] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(Integer)
    on_us: Mapped[int] = mapped_column(BigInteger)


def _rollup_args(table: str) -> tuple[Any, ...]:
    return (
        PrimaryKeyConstraint("device_id", "kind", "start", name=f"pk_{table}"),
        CheckConstraint("kind IN ('led', 'button', 'light')", name=f"{table}_kind"),
        CheckConstraint("count >= 0 AND total >= 0 AND on_us >= 0", name=f"{table}_counts"),
        _timestamp_check("start"),
        {"sqlite_with_rowid": False},
    )


class RollupMinute(_Rollup, Base):
    """Readings summarised per device, kind and minute (kept up to date by the ingest client)."""

    __tablename__ = "rollup_minute"
    __table_args__ = _rollup_args("rollup_minute")


class RollupHour(_Rollup, Base):
    """Readings summarised per device, kind and hour (kept up to date by the ingest client)."""

    __tablename__ = "rollup_hour"
    __table_args__ = _rollup_args("rollup_hour")


class RollupFleetMinute(Base):
    """Readings of the whole fleet per minute (every kind), as each ingest worker (`worker`: its number, 0 for the
    only one) added them in the transaction that added them to `rollup_minute`: the overview's traffic chart reads
    60 rows or so, not every device's roll-ups. One row per worker, so that several workers never wait on each
    other's row; `rollups.rebuild` writes its sums as worker 0."""

    __tablename__ = "rollup_fleet_minute"
    __table_args__ = (
        PrimaryKeyConstraint("start", "worker", name="pk_rollup_fleet_minute"),
        CheckConstraint("count >= 0", name="rollup_fleet_minute_count"),
        _timestamp_check("start"),
        {"sqlite_with_rowid": False},
    )

    start: Mapped[datetime] = mapped_column(UtcDateTime())
    worker: Mapped[int] = mapped_column(Integer)
    count: Mapped[int] = mapped_column(BigInteger)


class DeviceSession(Base):
    """One session of a device: when the server named it, when it came online, when it left (NULL: not yet)."""

    __tablename__ = "device_session"
    __table_args__ = (
        _timestamp_check("started_at"),
        CheckConstraint(f"online_at IS NULL OR online_at GLOB '{TIMESTAMP_GLOB}'", name="online_at_format"),
        CheckConstraint(f"ended_at IS NULL OR ended_at GLOB '{TIMESTAMP_GLOB}'", name="ended_at_format"),
        Index("ix_device_session_device_started", "device_id", "started_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("device.id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(String(17))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    online_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class AlertRule(Base):
    """A condition on the readings or presence of some devices, and what to do when it holds (docs/alerts.md).

    `selector` picks the devices: `all`, `list` (`devices`: their ids, comma-separated) or `pattern` (`devices`: a
    shell pattern matched against the name, `*` and `?`, case-insensitive). The rule fires for a device when
    `value operator trigger_value` has held for `for_seconds`, and clears once `value operator clear_value` (the
    hysteresis: `clear_value` NULL means `trigger_value`) has stopped holding for `clear_for_seconds`. `silence`
    fires when a device online sent nothing for `trigger_value` seconds; `presence` is 1 online, 0 offline.
    """

    __tablename__ = "alert_rule"
    __table_args__ = (
        CheckConstraint("length(name) BETWEEN 1 AND 64", name="alert_rule_name"),
        CheckConstraint("selector IN ('all', 'list', 'pattern')", name="alert_rule_selector"),
        CheckConstraint("metric IN ('light', 'led', 'button', 'presence', 'silence')", name="alert_rule_metric"),
        CheckConstraint("operator IN ('>', '>=', '<', '<=', '==', '!=')", name="alert_rule_operator"),
        CheckConstraint("severity IN ('info', 'warning', 'critical')", name="alert_rule_severity"),
        CheckConstraint("for_seconds >= 0 AND clear_for_seconds >= 0", name="alert_rule_durations"),
        CheckConstraint("repeat_seconds IS NULL OR repeat_seconds >= 1", name="alert_rule_repeat"),
        _timestamp_check("created_at"),
        _timestamp_check("changed_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    selector: Mapped[str] = mapped_column(String(8), default="all")
    devices: Mapped[str] = mapped_column(String(1024), default="")
    metric: Mapped[str] = mapped_column(String(8))
    operator: Mapped[str] = mapped_column(String(2))
    trigger_value: Mapped[float] = mapped_column(Float)
    clear_value: Mapped[float | None] = mapped_column(Float, default=None)
    for_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    clear_for_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    severity: Mapped[str] = mapped_column(String(8), default="warning")
    repeat_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    changed_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Alert(Base):
    """One alert of a rule for a device, from the moment its condition began to hold until it cleared.

    `state` is `pending` (the condition holds, for less than the rule's `for_seconds`), `firing`, `clearing`
    (the clear condition holds, for less than `clear_for_seconds`) or `resolved`; a pending alert whose
    condition stops holding is deleted (nothing happened). At most one alert per rule and device is not
    resolved (a partial unique index: the database refuses a second). `due_at` is when the alert clock next has
    something to do with it: fire, resolve, or remind while firing; NULL when nothing is due.
    """

    __tablename__ = "alert"
    __table_args__ = (
        CheckConstraint("state IN ('pending', 'firing', 'clearing', 'resolved')", name="alert_state"),
        _timestamp_check("since"),
        Index("ux_alert_active", "rule_id", "device_id", unique=True,
              sqlite_where=text("state <> 'resolved'"), postgresql_where=text("state <> 'resolved'")),
        Index("ix_alert_due", "due_at", sqlite_where=text("due_at IS NOT NULL"),
              postgresql_where=text("due_at IS NOT NULL")),
        Index("ix_alert_device", "device_id", "state"),
        Index("ix_alert_resolved", "resolved_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("alert_rule.id", ondelete="CASCADE"))
    device_id: Mapped[int] = mapped_column(ForeignKey("device.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(8))
    #: Times are stored text (timestamps.format_micros), as `presence_at`.
    since: Mapped[str] = mapped_column(String(26))
    fired_at: Mapped[str | None] = mapped_column(String(26), default=None)
    clearing_since: Mapped[str | None] = mapped_column(String(26), default=None)
    resolved_at: Mapped[str | None] = mapped_column(String(26), default=None)
    due_at: Mapped[str | None] = mapped_column(String(26), default=None)
    #: The value that made it fire, and the last one seen while it was active.
    value: Mapped[float | None] = mapped_column(Float, default=None)
    last_value: Mapped[float | None] = mapped_column(Float, default=None)
    acked_by: Mapped[str | None] = mapped_column(String(64), default=None)
    acked_at: Mapped[str | None] = mapped_column(String(26), default=None)
    snoozed_until: Mapped[str | None] = mapped_column(String(26), default=None)
    notified_at: Mapped[str | None] = mapped_column(String(26), default=None)
    reminders: Mapped[int] = mapped_column(Integer, default=0)


class AlertOutbox(Base):
    """A notification to deliver, written in the transaction that changed the alert; kept once delivered.

    `id` is the notification's identity, sent with it so that a receiver can drop a repeat (delivery is at
    least once). `payload` is the JSON the channel formats; `claimed_until` is a worker's lease on the row
    while it delivers it (several workers share the outbox).
    """

    __tablename__ = "alert_outbox"
    __table_args__ = (
        CheckConstraint("channel IN ('webhook', 'email', 'mqtt')", name="alert_outbox_channel"),
        CheckConstraint("event IN ('firing', 'resolved', 'reminder')", name="alert_outbox_event"),
        _timestamp_check("created_at"),
        Index("ix_alert_outbox_due", "next_attempt_at", sqlite_where=text("delivered_at IS NULL"),
              postgresql_where=text("delivered_at IS NULL")),
        Index("ix_alert_outbox_created", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    alert_id: Mapped[int | None] = mapped_column(ForeignKey("alert.id", ondelete="SET NULL"), default=None)
    channel: Mapped[str] = mapped_column(String(8))
    event: Mapped[str] = mapped_column(String(8))
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[str] = mapped_column(String(26))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[str] = mapped_column(String(26))
    claimed_until: Mapped[str | None] = mapped_column(String(26), default=None)
    delivered_at: Mapped[str | None] = mapped_column(String(26), default=None)
    last_error: Mapped[str | None] = mapped_column(String(512), default=None)


READING_MODELS: dict[Kind, type[LedReading] | type[ButtonReading] | type[LightReading]] = {
    Kind.LED: LedReading,
    Kind.BUTTON: ButtonReading,
    Kind.LIGHT: LightReading,
}

ROLLUP_MODELS: dict[str, type[RollupMinute] | type[RollupHour]] = {"1m": RollupMinute, "1h": RollupHour}
