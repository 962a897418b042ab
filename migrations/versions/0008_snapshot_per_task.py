"""a training snapshot per task: shared snapshots split

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05

Snapshot ids were the hash of the content alone, so two tasks with the same data shared the
first task's snapshot and the lineage of the other's releases named the wrong task. Ids now
hash the task with the content (``app.training.snapshots.snapshot_id``). Each snapshot a
release of another task points at is copied, with its labels, under that task and the id
the task would give it (the hash of ``<task>:<old id>``, the old id being the content
hash); the release then points at its copy. No table changes; the downgrade keeps the
copies (they are true under both schemes).
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SHARED = sa.text(
    "SELECT DISTINCT r.task, s.id FROM releases r JOIN training_snapshots s "
    "ON r.snapshot_id = s.id WHERE r.task <> s.task ORDER BY r.task, s.id"
)
COPY_SNAPSHOT = sa.text(
    "INSERT INTO training_snapshots (id, task, path, source_hash, source_rows, reviewed_rows, "
    "labels_until, created_at, created_by, reference) SELECT :new, :task, path, source_hash, "
    "source_rows, reviewed_rows, labels_until, created_at, created_by, reference "
    "FROM training_snapshots WHERE id = :old"
)
COPY_LABELS = sa.text(
    "INSERT INTO snapshot_labels (snapshot_id, training_label_id, prediction_id, split) "
    "SELECT :new, training_label_id, prediction_id, split FROM snapshot_labels "
    "WHERE snapshot_id = :old"
)
REPOINT = sa.text(
    "UPDATE releases SET snapshot_id = :new WHERE task = :task AND snapshot_id = :old"
)
EXISTS = sa.text("SELECT count(*) FROM training_snapshots WHERE id = :new")


def upgrade() -> None:
    bind = op.get_bind()
    for task, old in bind.execute(SHARED).all():
        ids = {"task": task, "old": old,
               "new": hashlib.sha256(f"{task}:{old}".encode()).hexdigest()}
        if not bind.execute(EXISTS, ids).scalar():  # a snapshot the task took since
            bind.execute(COPY_SNAPSHOT, ids)
            bind.execute(COPY_LABELS, ids)
        bind.execute(REPOINT, ids)


def downgrade() -> None:
    pass  # the copies name their own task, which the old scheme read just as well
