"""audit log: pin the rows older than the commitments to the state

Revision ID: 0017
Revises: 0012
Create Date: 2026-12-05

Until now ``arbiter audit verify`` took any row no event commits to as legacy when it was
dated before 0011's seal, and the date is whatever an intruder writes
(``INSERT INTO api_keys (..., created_at) VALUES (..., '2020-01-01')`` added a working admin
key unnoticed). This migration names the legacy rows instead: ``audit.legacy_pinned``
events (up to ``PIN_ROWS`` row keys each, ``{"rows": ["api_keys/1", ...]}``) list

- the rows of the tables committed since 0011 dated before its seal, and
- every existing row of what the log commits to from now on (a release's decision state:
  calibration, gate, quality alarm; release members; training labels; outcomes),

and ``verify`` flags any row that no event commits to and no pin names. A database with
nothing to pin (a fresh install) gets no event: there, nothing is legacy. The events wait
for the sequencer like any other; the log's tables stay append-only (nothing to undo on a
downgrade: the events stay, harmless to the older code).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0012"
branch_labels = None
depends_on = None

PIN_ROWS = 5_000
# The tables committed since 0011 and the column telling when a row was made.
SEALED_TABLES = {"predictions": "created_at", "review_items": "created_at",
                 "reviews": "created_at", "releases": "created_at", "stage_changes": "at",
                 "api_keys": "created_at"}
# What the log commits to from now on (``app.audit.state.FIELDS``) and its table.
NEW_COMMITMENTS = {"release_state": "releases", "release_members": "release_members",
                   "training_labels": "training_labels", "outcomes": "outcomes"}
TIME = sa.DateTime(timezone=True)


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def _legacy_keys(bind: sa.Connection) -> list[str]:
    events = sa.table("audit_events", sa.column("id"), sa.column("kind"), sa.column("at", TIME))
    sealed = bind.execute(sa.select(events.c.at).where(events.c.kind == "audit.sealed")
                          .order_by(events.c.id).limit(1)).scalar()
    keys: list[str] = []
    if sealed is not None:
        for name, made in SEALED_TABLES.items():
            t = sa.table(name, sa.column("id"), sa.column(made, TIME))
            keys += [f"{name}/{i}" for (i,) in bind.execute(
                sa.select(t.c.id).where(t.c[made] < sealed).order_by(t.c.id))]
    for name, table in NEW_COMMITMENTS.items():
        t = sa.table(table, sa.column("id"))
        keys += [f"{name}/{i}" for (i,) in bind.execute(sa.select(t.c.id).order_by(t.c.id))]
    return keys


def _event_id(bind: sa.Connection) -> int:
    if bind.dialect.name == "postgresql":
        return int(bind.execute(sa.text("SELECT nextval('audit_events_id_seq')")).scalar_one())
    return int(bind.execute(sa.text("SELECT coalesce(max(id), 0) + 1 FROM audit_events"))
               .scalar_one())


def upgrade() -> None:
    bind = op.get_bind()
    keys = _legacy_keys(bind)
    events = sa.table("audit_events", *[sa.column(c) for c in (
        "id", "kind", "actor", "task", "subject_type", "subject_id", "payload", "prev_hash",
        "hash")], sa.column("at", TIME))
    parts = [keys[i:i + PIN_ROWS] for i in range(0, len(keys), PIN_ROWS)]
    for n, part in enumerate(parts, start=1):
        at = datetime.now(UTC)
        values: dict[str, object] = {
            "id": _event_id(bind), "at": at, "kind": "audit.legacy_pinned",
            "actor": "system:migration", "task": None, "subject_type": "audit_log",
            "subject_id": "0017",
            "payload": _canonical({"part": n, "parts": len(parts), "rows": part})}
        # The leaf entry as ``app.audit.log.entry_text`` spells it.
        entry = _canonical({**values, "at": at.isoformat(timespec="microseconds")})
        values["hash"] = hashlib.sha256(b"\x00" + entry.encode()).hexdigest()
        bind.execute(sa.insert(events).values(**values, prev_hash=None))  # marked pending


def downgrade() -> None:
    """Nothing to undo: the pins stay in the append-only log."""
