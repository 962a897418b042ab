"""audit log as a Merkle tree: leaves, nodes, signed checkpoints, pending events; salted
input commitments

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05

Events are now written without a lock and given their leaf by the sequencer
(``app.audit.sequencer``). The existing hash chain is sealed: an ``audit.sealed`` event
naming the chain's length and head hash is appended, and every existing event (oldest
first) then the seal wait for the sequencer, whose first signed checkpoint covers them. The
old events keep their ``prev_hash`` and chain hash, which ``arbiter audit verify`` still
checks. On PostgreSQL event ids come from the sequence ``audit_events_id_seq``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

TREE_TABLES = ("audit_leaves", "audit_nodes", "audit_checkpoints")
SQLITE_EVENT_TRIGGERS = [
    """
    CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
    BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused'); END
    """,
    """
    CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: DELETE refused'); END
    """,
]


def _sqlite_triggers(table: str) -> list[str]:
    return [f"""
    CREATE TRIGGER {table}_no_{op_name.lower()} BEFORE {op_name} ON {table}
    BEGIN SELECT RAISE(ABORT, '{table} is append-only: {op_name} refused'); END
    """ for op_name in ("UPDATE", "DELETE")]


def _pg_triggers(table: str) -> list[str]:
    return [
        f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change()",
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change()",
    ]


# Every event inserted is pending for the sequencer: the database marks it, so a writer
# spends no round trip on it.
PG_PENDING = [
    """
    CREATE FUNCTION audit_events_mark_pending() RETURNS trigger AS $$
    BEGIN
        INSERT INTO audit_pending (event_id) SELECT id FROM new_events;
        RETURN NULL;
    END
    $$ LANGUAGE plpgsql
    """,
    """
    CREATE TRIGGER audit_events_pending AFTER INSERT ON audit_events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_mark_pending()
    """,
]
SQLITE_PENDING = [
    """
    CREATE TRIGGER audit_events_pending AFTER INSERT ON audit_events
    BEGIN INSERT INTO audit_pending (event_id) VALUES (NEW.id); END
    """,
]


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def _seal_values(bind: sa.Connection) -> dict[str, object]:
    """The ``audit.sealed`` event after the existing chain (``app.audit.log.entry_bytes``
    spells its entry the same way)."""
    head = bind.execute(sa.text(
        "SELECT id, hash FROM audit_events ORDER BY id DESC LIMIT 1")).first()
    last_id, last_hash = (0, None) if head is None else (head[0], head[1])
    count = bind.execute(sa.text("SELECT count(*) FROM audit_events")).scalar_one()
    at = datetime.now(UTC)
    payload = _canonical({"legacyEvents": count, "legacyHead": last_hash})
    values: dict[str, object] = {
        "id": last_id + 1, "at": at, "kind": "audit.sealed", "actor": "system:migration",
        "task": None, "subject_type": "audit_log", "subject_id": "0011", "payload": payload}
    document = {**values, "at": at.isoformat(timespec="microseconds")}
    entry = _canonical(document).encode()
    values["hash"] = hashlib.sha256(b"\x00" + entry).hexdigest()
    return values


def _create_tables() -> None:
    op.create_table(
        "audit_leaves",
        sa.Column("leaf_index", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("leaf_hash", sa.String(length=64), nullable=False),
        sa.Column("sequenced_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("leaf_index"), sa.UniqueConstraint("event_id"))
    op.create_table(
        "audit_nodes",
        sa.Column("level", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("level", "idx"))
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tree_size", sa.BigInteger(), nullable=False),
        sa.Column("root_hash", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id"))
    op.create_index("ix_audit_checkpoints_size", "audit_checkpoints", ["tree_size"])
    op.create_table(
        "audit_pending",
        sa.Column("event_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("event_id"))


def upgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("input_salt", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("input_commitment", sa.String(length=64), nullable=True))
    if postgres:
        op.alter_column("audit_events", "prev_hash", nullable=True)
    else:  # the table is copied: its triggers are made again after
        with op.batch_alter_table("audit_events") as batch:
            batch.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=True)
        for statement in SQLITE_EVENT_TRIGGERS:
            op.execute("DROP TRIGGER IF EXISTS " + statement.split()[2])
            op.execute(statement)
    _create_tables()
    seal = _seal_values(bind)
    bind.execute(sa.text(  # before the pending trigger: every event is marked below
        "INSERT INTO audit_events (id, at, kind, actor, task, subject_type, subject_id, "
        "payload, prev_hash, hash) VALUES (:id, :at, :kind, :actor, :task, :subject_type, "
        ":subject_id, :payload, NULL, :hash)"), seal)
    bind.execute(sa.text("INSERT INTO audit_pending (event_id) SELECT id FROM audit_events"))
    for statement in PG_PENDING if postgres else SQLITE_PENDING:
        op.execute(statement)
    for table in TREE_TABLES:
        for statement in _pg_triggers(table) if postgres else _sqlite_triggers(table):
            op.execute(statement)
    if postgres:
        op.execute(f"CREATE SEQUENCE audit_events_id_seq START WITH {int(seal['id']) + 1}")  # type: ignore[call-overload]


def downgrade() -> None:
    bind = op.get_bind()
    op.execute("DROP TRIGGER IF EXISTS audit_events_pending" + (
        " ON audit_events" if bind.dialect.name == "postgresql" else ""))
    if bind.dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS audit_events_mark_pending()")
        op.execute("DROP SEQUENCE IF EXISTS audit_events_id_seq")
    for table in ("audit_pending", *TREE_TABLES):
        op.drop_table(table)
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("input_commitment")
        batch.drop_column("input_salt")
