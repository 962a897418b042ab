"""where a release member came from: trained, imported from a skops file, or refit

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05

``release_members.origin`` holds a member's lineage beyond its training snapshot: ``{}``
for a member Arbiter trained, or ``{"kind": "imported" | "refit", "file", "sha256", ...}``
for an estimator brought from a skops file (and its clones refit on reviewers' labels).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("release_members", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "origin",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=False,
                server_default=sa.text("'{}'"),
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("release_members", schema=None) as batch_op:
        batch_op.drop_column("origin")
