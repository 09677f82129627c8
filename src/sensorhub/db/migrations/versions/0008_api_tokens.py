"""API tokens (issue 26): bearer tokens for scripts, kept as SHA-256 digests, made by `sensorhub token add`.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sensorhub.db.postgres import check

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_STAMP = "[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-5][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]"


def upgrade() -> None:
    """Create `api_token`."""
    dialect = op.get_bind().dialect.name
    op.create_table(
        "api_token",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(12), nullable=False),
        sa.Column("read_only", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.String(26), nullable=False),
        sa.CheckConstraint(check("length(name) BETWEEN 1 AND 64 AND name NOT GLOB '*[^A-Za-z0-9._@-]*'", dialect),
                           name="token_name"),
        sa.CheckConstraint("length(digest) = 64", name="token_digest"),
        sa.CheckConstraint(check(f"created_at GLOB '{_STAMP}'", dialect), name="created_at_format"),
    )


def downgrade() -> None:
    """sensorhub does not downgrade: restore a backup instead (docs/operations.md, "Backups and restore")."""
    raise NotImplementedError("restore a backup taken before the upgrade")
