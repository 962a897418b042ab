"""Alembic migrations: they run both ways on both backends and match the table models."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, inspect, update
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel, col, select

from app.audit import log as audit
from app.audit.checkpoints import load_signing_key
from app.audit.sequencer import CheckpointPolicy, Sequencer
from app.audit.verify import Verification, verify_log
from app.db.engine import make_engine, make_sessionmaker
from app.db.migrate import alembic_config, upgrade
from app.db.rows import values_of
from app.db.tables import ApiKey, AuditEvent, Prediction, Release, TrainingSnapshot
from app.main import build_services
from app.ml.task import TaskSpec
from app.predictions.path import predict_batch
from app.releases.lineage import snapshot_of
from app.settings import Settings
from app.training.snapshots import SnapshotData, load_snapshot, snapshot_id, take_snapshot
from tests.support.inputs import example_inputs
from tests.support.tampering import tamper


def _inspect(url: str, check: object) -> object:
    async def work() -> object:
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(check)  # type: ignore[arg-type]
        finally:
            await engine.dispose()
    return asyncio.run(work())


def _diff(conn: Connection) -> list[object]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, SQLModel.metadata))


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def test_migrations_match_the_models(database_url: str) -> None:
    assert _inspect(database_url, _diff) == []


def test_downgrade_and_upgrade_again(database_url: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(database_url), "base")
    assert _inspect(database_url, _tables) == {"alembic_version"}
    upgrade(database_url)
    upgrade(database_url)  # idempotent at head
    assert {"predictions", "releases", "release_members", "api_keys", "stage_changes"} <= set(
        _inspect(database_url, _tables)  # type: ignore[call-overload]
    )


def test_repeated_keyless_keys_stop_the_upgrade_naming_them(
    settings: Settings, example_tasks: dict[str, TaskSpec],
) -> None:
    """Before 0007 two keyless predictions could share a key: the upgrade names them and
    changes nothing until they are sorted out."""
    from alembic import command

    url = settings.resolved_database_url
    inputs = example_inputs(example_tasks["loan_default"], 1)

    async def predict() -> Prediction:
        services, engine = build_services(settings)
        try:
            await services.registry.load_all()
            [p] = await predict_batch(services, None, "loan_default", inputs, actor="cli:t",
                                      idempotency_keys=["row-1"])
            return p
        finally:
            services.close()
            await engine.dispose()

    async def execute(statement: Any, *params: dict[str, Any]) -> None:
        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(statement, list(params) or None)
        finally:
            await engine.dispose()

    p = asyncio.run(predict())
    command.downgrade(alembic_config(url), "0006")
    as_of_0006 = {k: v for k, v in values_of(p).items()
                  if k not in ("entity_key", "input_salt", "input_commitment")}  # 0010, 0011
    asyncio.run(execute(insert(Prediction), {**as_of_0006, "id": "copy-1"}))
    with pytest.raises(RuntimeError, match=r"loan_default/'row-1' x2"):
        upgrade(url)

    asyncio.run(execute(update(Prediction).where(col(Prediction.id) == "copy-1")
                        .values(idempotency_key=None)))
    upgrade(url)
    assert _inspect(url, _diff) == []


def test_a_snapshot_shared_by_two_tasks_is_split_by_the_upgrade(
    settings: Settings, example_tasks: dict[str, TaskSpec],
) -> None:
    """Before 0008 snapshot ids hashed the content alone and two tasks with the same data
    shared one: the upgrade gives the other task's releases a copy naming their task."""
    from alembic import command

    url = settings.resolved_database_url
    owner, other = "breast_cancer", "loan_default"

    async def shared() -> tuple[str, SnapshotData]:
        """A snapshot of ``owner`` stored as before 0008, v1 of both tasks trained on it."""
        services, engine = build_services(settings)
        try:
            taken, data = await take_snapshot(services.sessions, example_tasks[owner],
                                              settings.artifacts_dir, "me")
            legacy = data.content_hash()
            async with services.sessions() as session, session.begin():
                session.add(TrainingSnapshot(**{**values_of(taken), "id": legacy}))
                await session.flush()
                await session.exec(update(Release).where(  # type: ignore[call-overload]
                    col(Release.task).in_([owner, other]), col(Release.version) == 1,
                ).values(snapshot_id=legacy))
            return legacy, data
        finally:
            services.close()
            await engine.dispose()

    async def snapshots() -> dict[str, TrainingSnapshot | None]:
        engine = make_engine(url)
        try:
            async with make_sessionmaker(engine)() as session:
                releases = (await session.exec(select(Release).where(
                    col(Release.task).in_([owner, other]), col(Release.version) == 1))).all()
                return {r.task: await snapshot_of(session, r) for r in releases}
        finally:
            await engine.dispose()

    command.downgrade(alembic_config(url), "0007")
    legacy, data = asyncio.run(shared())
    upgrade(url)
    after = asyncio.run(snapshots())
    assert {t: s.task for t, s in after.items() if s} == {owner: owner, other: other}
    assert after[owner] is not None and after[owner].id == legacy
    moved = after[other]
    assert moved is not None and moved.id == snapshot_id(other, data)
    assert load_snapshot(settings.artifacts_dir, moved).source_rows == data.source_rows


def test_a_legacy_hash_chain_is_sealed_into_the_first_checkpoint(
    database_url: str, tmp_path: Path,
) -> None:
    """Before 0011 the log was a hash chain: the upgrade seals it (``audit.sealed`` names
    its length and head), the sequencer puts it in the tree and signs it, and it verifies;
    a legacy event changed afterwards is named."""
    from alembic import command

    url = database_url
    command.downgrade(alembic_config(url), "base")
    upgrade(url, "0008")
    prev, rows = audit.GENESIS_HASH, []
    at = datetime(2026, 11, 30, 12, tzinfo=UTC)
    for i in range(1, 8):
        payload = audit.canonical({"name": f"k{i}"})
        entry = audit.entry_text(i, at, "key.created", "cli:old", None, "api_key", str(i),
                                 payload, prev)
        digest = hashlib.sha256(entry.encode()).hexdigest()
        rows.append({"id": i, "at": at, "kind": "key.created", "actor": "cli:old",
                     "task": None, "subject_type": "api_key", "subject_id": str(i),
                     "payload": payload, "prev_hash": prev, "hash": digest})
        prev = digest
    key = ApiKey(id=1, name="old", role="admin", key_hash="1" * 64, prefix="arb_old",
                 created_at=at)

    async def legacy() -> None:
        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(insert(AuditEvent), rows)
                await conn.execute(insert(ApiKey), [values_of(key)])
        finally:
            await engine.dispose()

    async def check() -> Verification:
        engine = make_engine(url)
        try:
            sessions = make_sessionmaker(engine)
            signing = load_signing_key(None, tmp_path, False)
            await Sequencer(sessions, signing, CheckpointPolicy()).drain(force_checkpoint=True)
            return await verify_log(sessions, signing.public)
        finally:
            await engine.dispose()

    asyncio.run(legacy())
    upgrade(url)
    sealed = asyncio.run(check())
    assert sealed.ok, sealed.problems
    # 7 legacy events, the seal (0011), the pin of the legacy key (0017)
    assert (sealed.leaves, sealed.checkpoints, sealed.legacy_rows) == (9, 1, 1)
    # A key dated before the seal is not legacy for all that: 0017 pinned the rows that were.
    tamper(url, "INSERT INTO api_keys (id, name, role, key_hash, prefix, created_at) VALUES "
           f"(2, 'planted', 'admin', '{'2' * 64}', 'arb_pl', '2020-01-01 00:00:00')")
    planted = asyncio.run(check())
    assert any("api_keys/2 was added behind the log's back" in p for p in planted.problems), (
        planted.problems)
    tamper(url, "DELETE FROM api_keys WHERE id = 2")
    tamper(url, "UPDATE audit_events SET actor = 'cli:someone' WHERE id = 3")
    broken = asyncio.run(check())
    assert not broken.ok and broken.first_broken_event_id == 3, broken.problems
    assert any("legacy hash chain breaks" in p for p in broken.problems)
