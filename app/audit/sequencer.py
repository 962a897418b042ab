"""The sequencer: gives committed events consecutive leaves, in batches, and signs
checkpoints of the tree every few seconds or N events.

One sequencer works at a time across every process: on PostgreSQL the one holding a
transaction-scoped advisory lock (the others skip the round), on SQLite the database's one
writer. A batch is one transaction (read the pending events, add their leaves and the
subtrees they complete, drop their pending marks, maybe sign), so a sequencer that dies
leaves the events pending for the next: nothing is lost and nothing is sequenced twice.
Servers run it every ``ARBITER_AUDIT_SEQUENCE_SECONDS``; the CLI runs it before it
verifies or proves."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, select, text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit import merkle, tree
from app.audit.checkpoints import SigningKey, sign
from app.audit.log import entry_of
from app.db.audit_tree import AuditCheckpoint, AuditPending
from app.db.tables import AuditEvent
from app.db.types import utcnow

log = logging.getLogger("arbiter.audit")
PG_LOCK_KEY = 0x41524249544552  # "ARBITER": any fixed 64-bit number
BATCH_EVENTS = 5_000
PENDING = AuditPending.__table__  # type: ignore[attr-defined]
EVENTS = AuditEvent.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class CheckpointPolicy:
    """Sign when the tree grew and this long passed, or this many leaves were added."""

    every_seconds: float = 5.0
    every_events: int = 10_000


def _take_turn(conn: Connection) -> bool:
    if conn.dialect.name == "postgresql":
        return bool(conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"),
                                 {"k": PG_LOCK_KEY}).scalar())
    conn.execute(text("UPDATE audit_pending SET event_id = event_id WHERE 0 = 1"))
    return True


def _due(last: AuditCheckpoint | None, size: int, policy: CheckpointPolicy,
         force: bool) -> bool:
    if size == 0:
        return False
    if last is None:
        return True
    if size <= last.tree_size:
        return False
    waited = (utcnow() - last.at).total_seconds()
    return force or waited >= policy.every_seconds or size - last.tree_size >= policy.every_events


def sequence_batch(conn: Connection, key: SigningKey | None, policy: CheckpointPolicy,
                   limit: int = BATCH_EVENTS, force_checkpoint: bool = False) -> int:
    """One round: up to ``limit`` pending events get leaves (in commit order, see
    ``tree.COMMIT_ORDER``); a checkpoint is signed when due. Returns the number sequenced (0
    when another process holds the turn)."""
    if not _take_turn(conn):
        return 0
    # The pending events with their rows, in one query (an outer join: a pending mark
    # whose event is gone comes back with an empty row).
    pending = PENDING.outerjoin(EVENTS, EVENTS.c.id == PENDING.c.event_id)
    found = conn.execute(select(PENDING.c.event_id, EVENTS).select_from(pending)
                         .order_by(*tree.COMMIT_ORDER).limit(limit)).all()
    ids = [r.event_id for r in found]
    size = tree.tree_size(conn)
    edge = tree.frontier(conn, size)
    if ids:
        lost = [r.event_id for r in found if r.id is None]
        if lost:  # only someone with database access removes a pending event
            log.error("audit events %s were pending and are gone from the log", lost[:10])
        tree.grow(conn, edge, [(r.id, merkle.leaf_hash(entry_of(r)))
                               for r in found if r.id is not None])
        conn.execute(delete(AuditPending).where(PENDING.c.event_id.in_(ids)))
    if key is not None and _due(tree.latest_checkpoint(conn), edge.size, policy,
                                force_checkpoint):
        conn.execute(tree.CHECKPOINTS.insert().values(
            **_values(sign(key.key, edge.size, edge.root().hex(), utcnow()))))
    return len(ids)


def work_waiting(conn: Connection, signs: bool, policy: CheckpointPolicy) -> bool:
    """Whether a round has anything to do: events pending, or a checkpoint due."""
    if conn.execute(select(PENDING.c.event_id).limit(1)).first() is not None:
        return True
    return signs and _due(tree.latest_checkpoint(conn), tree.tree_size(conn), policy, False)


def _values(c: AuditCheckpoint) -> dict[str, Any]:
    return {"tree_size": c.tree_size, "root_hash": c.root_hash, "at": c.at,
            "signature": c.signature, "key_id": c.key_id}


class Sequencer:
    """Runs ``sequence_batch`` over a session factory: once, until nothing is pending, or
    every ``interval_seconds`` until cancelled."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], key: SigningKey | None,
                 policy: CheckpointPolicy, interval_seconds: float = 0.2) -> None:
        self.sessions = sessions
        self.key = key
        self.policy = policy
        self.interval_seconds = interval_seconds

    async def once(self, force_checkpoint: bool = False) -> int:
        """One round, in one transaction with its look for work on PostgreSQL (an idle
        round takes no lock and writes nothing). On SQLite the look is a transaction of its
        own before it: an idle round takes no write lock (SQLite has but one), and a read
        transaction that then writes fails when another writer moved the database on."""
        async with self.sessions() as session:
            sqlite = session.get_bind().dialect.name == "sqlite"
            if sqlite and not force_checkpoint:
                conn = await session.connection()
                if not await conn.run_sync(work_waiting, self.key is not None, self.policy):
                    return 0
                await session.rollback()
            async with session.begin():
                conn = await session.connection()
                return await conn.run_sync(self._round, force_checkpoint or sqlite,
                                           force_checkpoint)

    def _round(self, conn: Connection, looked: bool, force_checkpoint: bool) -> int:
        if not looked and not work_waiting(conn, self.key is not None, self.policy):
            return 0
        return sequence_batch(conn, self.key, self.policy, BATCH_EVENTS, force_checkpoint)

    async def drain(self, force_checkpoint: bool = False) -> None:
        """Sequence everything pending now, then sign a checkpoint of the whole tree."""
        while await self.once() == BATCH_EVENTS:
            pass
        await self.once(force_checkpoint)

    async def run(self) -> None:
        while True:
            try:
                full = await self.once() == BATCH_EVENTS
            except asyncio.CancelledError:
                raise
            except Exception:  # a lost connection: the next round retries
                log.exception("the audit sequencer's round failed; retrying")
                full = False
            if not full:
                await asyncio.sleep(self.interval_seconds)
