"""idempotency keys of predictions made without an API key are unique too

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

``uq_predictions_idempotency`` (caller, task, key) counts every NULL caller as different, so
two ``arbiter predict-file`` runs of the same file at once could store a row twice. A
partial unique index covers those rows; no table is rebuilt.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

KEYLESS = sa.text("caller_key_id IS NULL")
DUPLICATES = sa.text(
    "SELECT task, idempotency_key, count(*) FROM predictions "
    "WHERE caller_key_id IS NULL AND idempotency_key IS NOT NULL "
    "GROUP BY task, idempotency_key HAVING count(*) > 1 ORDER BY task, idempotency_key LIMIT 5"
)


def upgrade() -> None:
    repeated = op.get_bind().execute(DUPLICATES).all()
    if repeated:
        listed = ", ".join(f"{task}/{key!r} x{n}" for task, key, n in repeated)
        raise RuntimeError(
            f"predictions made without an API key repeat idempotency keys ({listed}; at most "
            f"5 shown), so their keys cannot be made unique. Decide which prediction each key "
            f"names and clear the key of the others (UPDATE predictions SET idempotency_key = "
            f"NULL WHERE id IN (...)), then migrate again.")
    op.create_index("uq_predictions_idempotency_keyless", "predictions",
                    ["task", "idempotency_key"], unique=True,
                    sqlite_where=KEYLESS, postgresql_where=KEYLESS)


def downgrade() -> None:
    op.drop_index("uq_predictions_idempotency_keyless", table_name="predictions")
