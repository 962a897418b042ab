"""outcomes, entity keys of predictions, and the live-quality alarm of a release

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-05

``outcomes`` holds ground truth that arrived after a prediction (one per prediction);
predictions keep their entity key (else idempotency key) so an outcome can name its
prediction by it; ``releases.quality_alarm`` records when live AUTO quality broke the
task's bound (app.quality.alarms).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0008"
branch_labels = None
depends_on = None


def _json() -> sa.types.TypeEngine[object]:  # JSON, JSONB on PostgreSQL
    json: sa.types.TypeEngine[object] = sa.JSON()
    return json.with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("quality_alarm", _json(), nullable=True))
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("entity_key", sa.String(length=200), nullable=True))
    op.create_index("ix_predictions_task_entity", "predictions", ["task", "entity_key"])
    op.create_table(
        "outcomes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prediction_id", sa.String(length=36), nullable=False),
        sa.Column("task", sa.String(length=100), nullable=False),
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(), nullable=False),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_by", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(["prediction_id"], ["predictions.id"]),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("prediction_id"),
    )
    op.create_index("ix_outcomes_task_release", "outcomes", ["task", "release_id"])


def downgrade() -> None:
    op.drop_index("ix_outcomes_task_release", table_name="outcomes")
    op.drop_table("outcomes")
    op.drop_index("ix_predictions_task_entity", table_name="predictions")
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_column("entity_key")
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_column("quality_alarm")
