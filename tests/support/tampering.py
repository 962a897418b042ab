"""The stored audit log changed behind the application's back, as an intruder would."""

from __future__ import annotations

import asyncio

from sqlalchemy import Connection, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit import merkle, tree
from app.audit.checkpoints import load_signing_key
from app.audit.log import entry_of
from app.audit.sequencer import CheckpointPolicy, Sequencer
from app.audit.verify import Verification, verify_log
from app.db.audit_tree import AuditCheckpoint
from app.db.engine import make_engine
from app.db.tables import AuditEvent
from app.predictions.services import Services
from app.settings import Settings
from tests.support.services import run_with

LOG_TABLES = ("audit_events", "audit_leaves", "audit_nodes", "audit_checkpoints")


def tamper(url: str, statement: str) -> None:
    """Change the stored log behind the application's back, as an intruder with database
    access would: switch the append-only triggers off, run ``statement``, and (PostgreSQL)
    switch the triggers back on, the one that queues new events for the sequencer too."""
    async def work() -> None:
        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                for table in LOG_TABLES:
                    if conn.dialect.name == "postgresql":
                        await conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
                    else:
                        await conn.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_update"))
                        await conn.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_delete"))
                await conn.execute(text(statement))
                if conn.dialect.name == "postgresql":
                    for table in LOG_TABLES:
                        await conn.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER USER"))
        finally:
            await engine.dispose()
    asyncio.run(work())


def rewrite_route(event_id: int) -> str:
    """An UPDATE turning a REVIEW routing decision of a prediction event into AUTO."""
    return (f"UPDATE audit_events SET payload = replace(payload, '\"route\":\"REVIEW\"', "
            f"'\"route\":\"AUTO\"') WHERE id = {event_id}")


async def sequenced_and_verified(sessions: async_sessionmaker[AsyncSession], settings: Settings,
                                 witness: list[AuditCheckpoint] | None = None) -> Verification:
    """The log sequenced (a checkpoint signed) and verified, as ``arbiter audit verify``
    does, with the key of ``settings``."""
    key = load_signing_key(settings.audit_signing_key, settings.data_dir, False)
    await Sequencer(sessions, key, CheckpointPolicy()).drain(force_checkpoint=True)
    return await verify_log(sessions, key.public, witness or [])


def verified(settings: Settings, witness: list[AuditCheckpoint] | None = None) -> Verification:
    """``sequenced_and_verified`` on a fresh set of services."""
    async def work(services: Services) -> Verification:
        return await sequenced_and_verified(services.sessions, settings, witness)
    return run_with(settings, work)


def hold_commits(conn: Connection) -> None:
    """Take the database's write lock in the caller's open transaction, so every other
    transaction can read but none commits a prediction until the caller's ends."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("LOCK TABLE predictions IN SHARE MODE"))
    else:  # DDL takes SQLite's single write lock
        conn.execute(text("CREATE TABLE hold_commits (x INTEGER)"))


def release_commits(conn: Connection) -> None:
    """Undo what ``hold_commits`` wrote (the lock goes with the transaction)."""
    if conn.dialect.name != "postgresql":
        conn.execute(text("DROP TABLE hold_commits"))


def rebuild_tree(url: str, middle: int | None = None) -> None:
    """Recompute the stored tree from the events as they now are, as an intruder covering a
    change would (``middle``: the newest event is put before event ``middle``)."""
    def rebuild(conn: Connection) -> None:
        postgres = conn.dialect.name == "postgresql"
        for table in ("audit_leaves", "audit_nodes"):
            if postgres:
                conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
            else:
                conn.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_delete"))
            conn.execute(text(f"DELETE FROM {table}"))
        conn.execute(text("DELETE FROM audit_pending"))
        rows = list(conn.execute(select(AuditEvent.__table__)  # type: ignore[attr-defined]
                                 .order_by(text("id"))))
        if middle is not None:
            newest = rows.pop()
            at = next(i for i, r in enumerate(rows) if r.id == middle)
            rows.insert(at, newest)
        tree.grow(conn, merkle.Frontier(), [(r.id, merkle.leaf_hash(entry_of(r))) for r in rows])

    async def work() -> None:
        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(rebuild)
        finally:
            await engine.dispose()
    asyncio.run(work())
