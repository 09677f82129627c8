"""Web accounts (security issue): who may use the LED and rename controls.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sensorhub.db.postgres import check

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_STAMP = "[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-5][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]"


def upgrade() -> None:
    """Create web_user (a development database may already have it: it was made before this migration)."""
    if "web_user" in sa.inspect(op.get_bind()).get_table_names():
        return
    dialect = op.get_bind().dialect.name
    op.create_table(
        "web_user",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(400), nullable=False),
        sa.Column("created_at", sa.String(26), nullable=False),
        sa.Column("changed_at", sa.String(26), nullable=False),
        sa.CheckConstraint(check("length(name) BETWEEN 1 AND 64 AND name NOT GLOB '*[^A-Za-z0-9._@-]*'", dialect),
                           name="user_name"),
        sa.CheckConstraint("length(password_hash) BETWEEN 20 AND 400", name="user_password_hash"),
        sa.CheckConstraint(check(f"created_at GLOB '{_STAMP}'", dialect), name="created_at_format"),
        sa.CheckConstraint(check(f"changed_at GLOB '{_STAMP}'", dialect), name="changed_at_format"),
    )


def downgrade() -> None:
    """sensorhub does not downgrade: restore a backup instead (docs/operations.md, "Backups and restore")."""
    raise NotImplementedError("restore a backup taken before the upgrade")
