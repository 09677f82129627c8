"""Alerts (issue 25): rules, the alerts they raise per device, and the outbox of their notifications.

`alert_rule` holds what people decide (by `sensorhub alert`, the `/alertes` page or the API); `alert` one row per
rule and device from the moment the condition began to hold until it cleared (at most one not resolved: a
partial unique index); `alert_outbox` the notifications, written in the transaction that changed the alert and
delivered afterwards (docs/alerts.md).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sensorhub.db.postgres import check

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_STAMP = "[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-5][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]"


def _check(expression: str, name: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(check(expression, op.get_bind().dialect.name), name=name)


def upgrade() -> None:
    """Create `alert_rule`, `alert` and `alert_outbox` with their indexes."""
    op.create_table(
        "alert_rule",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("selector", sa.String(8), nullable=False),
        sa.Column("devices", sa.String(1024), nullable=False),
        sa.Column("metric", sa.String(8), nullable=False),
        sa.Column("operator", sa.String(2), nullable=False),
        sa.Column("trigger_value", sa.Float, nullable=False),
        sa.Column("clear_value", sa.Float, nullable=True),
        sa.Column("for_seconds", sa.Float, nullable=False),
        sa.Column("clear_for_seconds", sa.Float, nullable=False),
        sa.Column("severity", sa.String(8), nullable=False),
        sa.Column("repeat_seconds", sa.Float, nullable=True),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.String(26), nullable=False),
        sa.Column("changed_at", sa.String(26), nullable=False),
        sa.CheckConstraint("length(name) BETWEEN 1 AND 64", name="alert_rule_name"),
        sa.CheckConstraint("selector IN ('all', 'list', 'pattern')", name="alert_rule_selector"),
        sa.CheckConstraint("metric IN ('light', 'led', 'button', 'presence', 'silence')", name="alert_rule_metric"),
        sa.CheckConstraint("operator IN ('>', '>=', '<', '<=', '==', '!=')", name="alert_rule_operator"),
        sa.CheckConstraint("severity IN ('info', 'warning', 'critical')", name="alert_rule_severity"),
        sa.CheckConstraint("for_seconds >= 0 AND clear_for_seconds >= 0", name="alert_rule_durations"),
        sa.CheckConstraint("repeat_seconds IS NULL OR repeat_seconds >= 1", name="alert_rule_repeat"),
        _check(f"created_at GLOB '{_STAMP}'", "created_at_format"),
        _check(f"changed_at GLOB '{_STAMP}'", "changed_at_format"),
    )
    op.create_table(
        "alert",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("rule_id", sa.Integer, sa.ForeignKey("alert_rule.id", ondelete="CASCADE"), nullable=False),
        sa.Column("device_id", sa.Integer, sa.ForeignKey("device.id", ondelete="CASCADE"), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("since", sa.String(26), nullable=False),
        sa.Column("fired_at", sa.String(26), nullable=True),
        sa.Column("clearing_since", sa.String(26), nullable=True),
        sa.Column("resolved_at", sa.String(26), nullable=True),
        sa.Column("due_at", sa.String(26), nullable=True),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("last_value", sa.Float, nullable=True),
        sa.Column("acked_by", sa.String(64), nullable=True),
        sa.Column("acked_at", sa.String(26), nullable=True),
        sa.Column("snoozed_until", sa.String(26), nullable=True),
        sa.Column("notified_at", sa.String(26), nullable=True),
        sa.Column("reminders", sa.Integer, nullable=False),
        sa.CheckConstraint("state IN ('pending', 'firing', 'clearing', 'resolved')", name="alert_state"),
        _check(f"since GLOB '{_STAMP}'", "since_format"),
    )
    op.create_index("ux_alert_active", "alert", ["rule_id", "device_id"], unique=True,
                    sqlite_where=sa.text("state <> 'resolved'"), postgresql_where=sa.text("state <> 'resolved'"))
    op.create_index("ix_alert_due", "alert", ["due_at"], sqlite_where=sa.text("due_at IS NOT NULL"),
                    postgresql_where=sa.text("due_at IS NOT NULL"))
    op.create_index("ix_alert_device", "alert", ["device_id", "state"])
    op.create_index("ix_alert_resolved", "alert", ["resolved_at"])
    op.create_table(
        "alert_outbox",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("alert_id", sa.Integer, sa.ForeignKey("alert.id", ondelete="SET NULL"), nullable=True),
        sa.Column("channel", sa.String(8), nullable=False),
        sa.Column("event", sa.String(8), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", sa.String(26), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.String(26), nullable=False),
        sa.Column("claimed_until", sa.String(26), nullable=True),
        sa.Column("delivered_at", sa.String(26), nullable=True),
        sa.Column("last_error", sa.String(512), nullable=True),
        sa.CheckConstraint("channel IN ('webhook', 'email', 'mqtt')", name="alert_outbox_channel"),
        sa.CheckConstraint("event IN ('firing', 'resolved', 'reminder')", name="alert_outbox_event"),
        _check(f"created_at GLOB '{_STAMP}'", "created_at_format"),
    )
    op.create_index("ix_alert_outbox_due", "alert_outbox", ["next_attempt_at"],
                    sqlite_where=sa.text("delivered_at IS NULL"), postgresql_where=sa.text("delivered_at IS NULL"))
    op.create_index("ix_alert_outbox_created", "alert_outbox", ["created_at"])


def downgrade() -> None:
    """sensorhub does not downgrade: restore a backup instead (docs/operations.md, "Backups and restore")."""
    raise NotImplementedError("restore a backup taken before the upgrade")
