"""audit events get their leaves in the order their changes committed

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05

On PostgreSQL each process numbers its events from a block of ids of its own, so two
transactions that change the same row one after the other (the second waited for the
first's row lock) may hold ids in the other order; the sequencer gave leaves in id order, so
the earlier change's event came last and ``verify`` held the row against the wrong state.
``audit_pending.queued_at`` is the database clock when the event was inserted: after every
row lock its transaction took, so after the commit of any transaction it waited for. The
sequencer orders by it, then by id. SQLite numbers events under its one write lock: id
order is commit order there, and the column stays empty.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    # A plain ADD COLUMN on SQLite too: a batch copy of the table would trip over the
    # audit_events trigger that names it.
    op.add_column("audit_pending", sa.Column(
        "queued_at", sa.DateTime(timezone=True), nullable=True,
        server_default=sa.text("clock_timestamp()") if postgres else None))


def downgrade() -> None:
    op.drop_column("audit_pending", "queued_at")
