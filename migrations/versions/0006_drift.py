"""drift references and stored drift reports

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _json() -> sa.types.TypeEngine[object]:  # JSON, JSONB on PostgreSQL
    json: sa.types.TypeEngine[object] = sa.JSON()
    return json.with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("prediction_reference", _json(), nullable=True))
    with op.batch_alter_table("training_snapshots", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reference", _json(), nullable=True))
    op.create_table(
        "drift_reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(length=100), nullable=False),
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("release_version", sa.Integer(), nullable=False),
        sa.Column("window", sa.String(length=16), nullable=False),
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("verdict", sa.String(length=20), nullable=False),
        sa.Column("drifted", sa.Boolean(), nullable=False),
        sa.Column("share", sa.Float(), nullable=False),
        sa.Column("details", _json(), nullable=False),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task", "bucket", name="uq_drift_reports_task_bucket"),
    )
    op.create_index("ix_drift_reports_task_computed", "drift_reports", ["task", "computed_at"])


def downgrade() -> None:
    op.drop_index("ix_drift_reports_task_computed", table_name="drift_reports")
    op.drop_table("drift_reports")
    with op.batch_alter_table("training_snapshots", schema=None) as batch_op:
        batch_op.drop_column("reference")
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_column("prediction_reference")
