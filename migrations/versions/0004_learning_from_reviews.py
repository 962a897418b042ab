"""learning from reviews

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "training_snapshots",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("task", sa.String(length=100), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("source_hash", sa.String(length=64), nullable=False),
        sa.Column("source_rows", sa.Integer(), nullable=False),
        sa.Column("reviewed_rows", sa.Integer(), nullable=False),
        sa.Column("labels_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("training_snapshots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_training_snapshots_task"), ["task"], unique=False)

    op.create_table(
        "training_jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("task", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=32), nullable=False),
        sa.Column("requested_by", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("message", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("release_id", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["release_id"],
            ["releases.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.create_index("ix_training_jobs_task_created", ["task", "created_at"], unique=False)
        batch_op.create_index(
            "uq_training_jobs_one_active",
            ["task"],
            unique=True,
            sqlite_where=sa.text("status IN ('QUEUED', 'RUNNING')"),
            postgresql_where=sa.text("status IN ('QUEUED', 'RUNNING')"),
        )

    op.create_table(
        "shadow_outputs",
        sa.Column("prediction_id", sa.String(length=36), nullable=False),
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column(
            "probabilities",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
        ),
        sa.ForeignKeyConstraint(
            ["release_id"],
            ["releases.id"],
        ),
        sa.PrimaryKeyConstraint("prediction_id", "release_id"),
    )
    with op.batch_alter_table("shadow_outputs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_shadow_outputs_release", ["release_id", "created_at"], unique=False
        )

    op.create_table(
        "snapshot_labels",
        sa.Column("snapshot_id", sa.String(length=64), nullable=False),
        sa.Column("training_label_id", sa.Integer(), nullable=False),
        sa.Column("prediction_id", sa.String(length=36), nullable=False),
        sa.Column("split", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["snapshot_id"],
            ["training_snapshots.id"],
        ),
        sa.ForeignKeyConstraint(
            ["training_label_id"],
            ["training_labels.id"],
        ),
        sa.PrimaryKeyConstraint("snapshot_id", "training_label_id"),
    )
    with op.batch_alter_table("snapshot_labels", schema=None) as batch_op:
        batch_op.create_index("ix_snapshot_labels_prediction", ["prediction_id"], unique=False)

    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("snapshot_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("parent_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("job_id", sa.String(length=36), nullable=True))
        batch_op.add_column(
            sa.Column(
                "gate",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                server_default=sa.text("'{}'"),
                nullable=False,
            )
        )
        batch_op.create_index(batch_op.f("ix_releases_snapshot_id"), ["snapshot_id"], unique=False)
        batch_op.create_foreign_key(
            "fk_releases_snapshot_id", "training_snapshots", ["snapshot_id"], ["id"]
        )
        batch_op.create_foreign_key("fk_releases_parent_id", "releases", ["parent_id"], ["id"])

    with op.batch_alter_table("stage_changes", schema=None) as batch_op:
        batch_op.create_index("ix_stage_changes_task_at", ["task", "at"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("stage_changes", schema=None) as batch_op:
        batch_op.drop_index("ix_stage_changes_task_at")

    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_constraint("fk_releases_parent_id", type_="foreignkey")
        batch_op.drop_constraint("fk_releases_snapshot_id", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_releases_snapshot_id"))
        batch_op.drop_column("gate")
        batch_op.drop_column("job_id")
        batch_op.drop_column("parent_id")
        batch_op.drop_column("snapshot_id")

    with op.batch_alter_table("snapshot_labels", schema=None) as batch_op:
        batch_op.drop_index("ix_snapshot_labels_prediction")

    op.drop_table("snapshot_labels")
    with op.batch_alter_table("shadow_outputs", schema=None) as batch_op:
        batch_op.drop_index("ix_shadow_outputs_release")

    op.drop_table("shadow_outputs")
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_training_jobs_one_active",
            sqlite_where=sa.text("status IN ('QUEUED', 'RUNNING')"),
            postgresql_where=sa.text("status IN ('QUEUED', 'RUNNING')"),
        )
        batch_op.drop_index("ix_training_jobs_task_created")

    op.drop_table("training_jobs")
    with op.batch_alter_table("training_snapshots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_training_snapshots_task"))

    op.drop_table("training_snapshots")
