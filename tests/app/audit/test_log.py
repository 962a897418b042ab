"""The audit log on real databases (SQLite and PostgreSQL): one tree under concurrent
writers from several connections and processes, append-only in the database, events in
the same transaction as the change they record, and exports that re-verify."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import col, select

from app.access.roles import Principal, Role
from app.audit import events as audit_events
from app.audit import log as audit
from app.audit import state
from app.db.engine import make_engine, make_sessionmaker
from app.db.tables import AuditEvent, ReviewItem
from app.db.types import utcnow
from app.errors import BadRequestError, StageChangeError
from app.main import wire_services
from app.ml.task import TaskSpec
from app.predictions.inputs import input_hash
from app.predictions.path import predict, predict_batch
from app.predictions.services import Services
from app.releases import stages
from app.releases.store import set_routing, store_release
from app.settings import Settings
from app.training.jobs import request_retrain
from app.training.triggers import Trigger
from review import queue
from tests.support.inputs import example_inputs
from tests.support.server import make_key
from tests.support.services import run_with
from tests.support.tampering import verified

TASK = "loan_default"
ROOT = Path(__file__).resolve().parents[3]

# A separate OS process appending events through its own engine, as a worker would.
APPENDER = """
import asyncio, sys
from app.audit import events as audit_events
from app.audit import log as audit
from app.db.engine import make_engine, make_sessionmaker

async def main(url, name, n):
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    for i in range(n):
        async with sessions() as session, session.begin():
            audit.append(session, audit.Kind.KEY_CREATED, "system:" + name, "api_key",
                         f"{name}-{i}", {"i": i})
    await engine.dispose()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def all_events(services: Services) -> list[AuditEvent]:
    async with services.sessions() as session:
        return list((await session.exec(select(AuditEvent).order_by(col(AuditEvent.id)))).all())


def kinds(events: list[AuditEvent]) -> list[str]:
    return [e.kind for e in events]


def test_concurrent_writers_from_connections_and_processes_make_one_chain(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    reviewer_keys = [make_key(settings, "reviewer", f"r{i}") for i in range(3)]
    assert len(reviewer_keys) == 3
    before = run_with(settings, all_events)
    per_process, processes = 40, 2
    appenders = [subprocess.Popen([sys.executable, "-c", APPENDER,
                                   settings.resolved_database_url, f"p{i}", str(per_process)],
                                  cwd=ROOT) for i in range(processes)]

    async def work(services: Services) -> None:
        # A second engine: predictions and claims race over two connection pools as well.
        other_engine = make_engine(settings.resolved_database_url)
        other = wire_services(settings, make_sessionmaker(other_engine), services.registry)
        try:
            await services.registry.load_all()
            rows = example_inputs(example_tasks[TASK], 50, seed=8)
            stored = await asyncio.gather(*[
                predict(services if i % 2 else other, None, TASK, row) for i, row in
                enumerate(rows)])
            assert len(stored) == 50
            people = [Principal(i + 1, f"r{i}", Role.REVIEWER) for i in range(3)]
            claims = await asyncio.gather(*[
                queue.claim(services.sessions if i % 2 else other.sessions, TASK,
                            people[i % 3], 60) for i in range(12)])
            assert any(c is not None for c in claims)
        finally:
            await other_engine.dispose()

    run_with(settings, work)
    assert [p.wait(timeout=300) for p in appenders] == [0] * processes
    events = run_with(settings, all_events)
    made = [e for e in events if e.id > before[-1].id]
    assert kinds(made).count("prediction.made") == 50
    assert kinds(made).count("key.created") == per_process * processes
    assert kinds(made).count("review.claimed") >= 1
    assert len({e.id for e in events}) == len(events)
    check = verified(settings)  # every event got exactly one leaf, in one tree
    assert check.ok and check.leaves == len(events) and check.pending == 0, check.problems
    assert check.checkpoints >= 1


def _refused(exc: BaseException) -> bool:
    return "append-only" in str(exc)


def test_the_database_refuses_to_change_or_delete_events(settings: Settings) -> None:
    async def work(services: Services) -> None:
        for statement in ("UPDATE audit_events SET actor = 'someone else'",
                          "DELETE FROM audit_events"):
            with pytest.raises((IntegrityError, DBAPIError)) as refused:
                async with services.sessions() as session, session.begin():
                    await session.exec(text(statement))  # type: ignore[call-overload]
            assert _refused(refused.value), refused.value
        assert len(await all_events(services)) >= 4  # the releases and their stages

    run_with(settings, work)


def test_events_commit_with_their_change_or_not_at_all(settings: Settings) -> None:
    async def work(services: Services) -> None:
        before = await all_events(services)
        with pytest.raises(StageChangeError):
            async with services.sessions() as session, session.begin():
                audit.append(session, audit.Kind.ROUTING_CHANGED, "tests", "release", "1")
                await stages.promote(session, TASK, 99, "LIVE", None, "tests", "no such")
        assert await all_events(services) == before
        # an explicit rollback drops staged events as well
        async with services.sessions() as session:
            await session.exec(select(AuditEvent.id))
            audit.append(session, audit.Kind.ROUTING_CHANGED, "tests", "release", "1")
            await session.rollback()
            await session.commit()
        assert await all_events(services) == before

    run_with(settings, work)


def test_domain_changes_are_recorded_with_actor_and_subject(
        settings: Settings, example_tasks: dict[str, TaskSpec],
        trained: dict[str, Any]) -> None:
    admin = "key:1:ops"

    async def work(services: Services) -> None:
        spec = example_tasks[TASK]
        second = await store_release(services.sessions, settings.artifacts_dir, trained[TASK],
                                     "tests")
        async with services.sessions() as session, session.begin():
            await stages.promote(session, TASK, second.version, "LIVE", None, admin, "better")
        async with services.sessions() as session, session.begin():
            await stages.rollback(session, TASK, admin, "worse in production")
        async with services.sessions() as session, session.begin():
            await set_routing(session, spec, second.version, {"audit_rate": 0.5}, admin)
        job, created = await request_retrain(services.sessions, spec, Trigger.MANUAL, admin, "x")
        assert created
        await services.registry.load_all()
        routed = [p for p in await predict_batch(services, None, TASK,
                                                 example_inputs(spec, 60, seed=3))
                  if p.route == "REVIEW"]
        lease = await queue.claim(services.sessions, TASK,
                                  Principal(1, "ops", Role.ADMIN), 60, None)
        assert lease is not None and routed
        async with services.sessions() as session, session.begin():
            await session.exec(  # type: ignore[call-overload]
                text("UPDATE review_items SET lease_expires_at = :t WHERE id = :i"),
                params={"t": utcnow() - timedelta(seconds=1), "i": lease.item.id})
        assert await queue.expire_leases(services.sessions) == [lease.item.id]
        events = await all_events(services)
        by_kind = {e.kind: e for e in events}
        assert {"release.stored", "release.stage_changed", "release.rolled_back",
                "release.routing_changed", "training.requested", "prediction.made",
                "review.claimed", "review.lease_expired"} <= set(by_kind)
        rolled = by_kind["release.rolled_back"]
        assert (rolled.actor, rolled.task) == (admin, TASK)
        assert json.loads(rolled.payload)["to"] == 1
        assert by_kind["training.requested"].subject_id == job.id
        expired = by_kind["review.lease_expired"]
        assert (expired.actor, expired.subject_type, expired.subject_id) == (
            queue.EXPIRY_ACTOR, "review_item", lease.item.id)
        made = [e for e in events if e.kind == "prediction.made"]
        assert len(made) == 60
        payload = json.loads(made[0].payload)
        assert {"release", "route", "reasons", "inputCommitment", "state"} <= set(payload)
        assert "inputHash" not in payload  # unsalted: an erased input could be guessed
        async with services.sessions() as session:
            item = await session.get(ReviewItem, lease.item.id)
        assert item is not None and item.status == "PENDING"

    run_with(settings, work)
    check = verified(settings)
    assert check.ok and check.rows > 60, check.problems


def test_an_export_reverifies_and_names_what_was_changed() -> None:
    entries = [audit.Entry(audit.Kind.KEY_CREATED, "tests", "api_key", str(i), {"i": i})
               for i in range(1, 6)]
    values = audit.event_values(entries, range(1, 6), [{}] * 5)
    lines = [audit_events.export_line(AuditEvent(**v)) for v in values]
    assert audit_events.verify_lines(lines).ok and audit_events.verify_lines(lines[2:]).checked == 3

    edited = json.loads(lines[2])
    edited["payload"]["i"] = 99
    changed = [*lines[:2], json.dumps(edited), *lines[3:]]
    check = audit_events.verify_lines(changed)
    assert (check.broken_event_id, check.checked) == (3, 2)
    assert "does not match its hash" in (check.reason or "")


def test_stored_spellings_do_not_change() -> None:
    """Hashes already stored (the chain, predictions' input hashes) were computed over these
    exact spellings: a faster encoder must produce the same bytes."""
    payload = {"z": [1.5, None, True], "a": "é\n\u2028", "m": {"b": 1e-07, "a": 10**20}}
    assert audit.canonical(payload) == (
        '{"a":"é\\n\u2028","m":{"a":100000000000000000000,"b":1e-07},"z":[1.5,null,true]}')
    with pytest.raises(ValueError):
        audit.canonical({"x": float("nan")})
    # sha256 of '{"a": "\\u00e9", "b": 2.5}' (json.dumps(sort_keys=True)'s spelling)
    assert input_hash({"b": 2.5, "a": "é"}) == (
        "28ab9ce69b0b5de73a83651d4d3d7a7b988bf9637780f0bf4dc63792dcedaab0")


@pytest.mark.parametrize("text", ["plain", 'é\n\u2028\x00\x1f\x7f"\\ \t/', '{"a":"b\\""}'])
def test_an_entry_is_the_canonical_json_of_its_event(text: str) -> None:
    """Entries are spelled out by hand for speed; every stored leaf hash was computed over
    ``canonical`` of the event's fields, so the two must give the same bytes."""
    at = utcnow()
    for task, prev_hash in ((None, None), (text, None), (text, "ab" * 32)):
        document: dict[str, Any] = {
            "id": 7, "at": audit.stamp(at), "kind": text, "actor": text, "task": task,
            "subject_type": text, "subject_id": text, "payload": text}
        if prev_hash is not None:
            document["prev_hash"] = prev_hash
        assert audit.entry_text(7, at, text, text, task, text, text, text, prev_hash) == (
            audit.canonical(document))


def test_a_negative_zero_commits_as_zero_wherever_it_stands() -> None:
    """PostgreSQL's jsonb drops the sign of -0.0: a row must commit the same either way."""
    def row(zero: float) -> dict[str, Any]:
        return {"id": 1, "calibration": {"a": [zero, zero], "b": zero}, "gate": zero,
                "quality_alarm": {"detail": "-0.0, kept in text", "x": [-0.05, zero]}}
    assert state.digest("release_state", row(-0.0)) == state.digest("release_state", row(0.0))
    assert state.digest("release_state", {**row(0.0), "gate": -0.01}) != (
        state.digest("release_state", row(0.0)))


def test_free_text_longer_than_the_bound_is_refused_and_nothing_is_written(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    make_key(settings, "reviewer", "rita")
    rita = Principal(1, "rita", Role.REVIEWER)
    spec = example_tasks[TASK]

    async def work(services: Services) -> None:
        await services.registry.load_all()
        await predict_batch(services, None, TASK, example_inputs(spec, 60, seed=3))
        lease = await queue.claim(services.sessions, TASK, rita, 60)
        assert lease is not None
        before = await all_events(services)
        with pytest.raises(BadRequestError, match="comment is 2001 characters long; the "
                           "audit log keeps at most 2000"):
            await queue.submit(services.sessions, lease.token, rita, "late", "x" * 2001,
                               lambda _: spec.classes)
        assert await all_events(services) == before
        async with services.sessions() as session:
            item = await session.get(ReviewItem, lease.item.id)
            assert item is not None and item.reviews_done == 0
        done = await queue.submit(services.sessions, lease.token, rita, "late", "x" * 2000,
                                  lambda _: spec.classes)
        assert done.reviews_done == 1

    run_with(settings, work)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SQLite has no blocks
def test_two_commits_on_one_loop_refilling_event_ids_both_finish(database_url: str) -> None:
    """Two commits on one event loop that both need a new block of event ids (PostgreSQL)
    each finish: the block is fetched without holding the thread lock that guards it (held
    across the query, the second commit blocked the loop's thread and the first never
    finished). Run in a thread of its own, so a hang fails the test instead of the run."""
    blocks = audit.IdBlocks()
    taken: list[list[int]] = []

    async def both() -> None:
        engine = make_engine(database_url)
        try:
            async def one() -> None:
                async with engine.connect() as conn:
                    taken.append(await conn.run_sync(blocks.take, audit.IDS_PER_BLOCK))
            await asyncio.gather(one(), one())
        finally:
            await engine.dispose()

    runner = threading.Thread(target=asyncio.run, args=(both(),), daemon=True)
    runner.start()
    runner.join(timeout=60)
    assert not runner.is_alive(), "the two commits deadlocked on the event id lock"
    assert len(taken) == 2 and len(set(taken[0]) | set(taken[1])) == 2 * audit.IDS_PER_BLOCK


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SQLite: one writer
def test_a_row_changed_by_two_processes_is_held_against_the_later_commit(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    """Two processes number events from id blocks of their own, so the later change of a
    row may hold the smaller id: its leaf still comes last and verify holds the row against
    it (leaves in id order named the row "changed behind the log's back")."""
    spec = example_tasks[TASK]
    # Another URL of the same database: another block of ids, as another process has.
    elsewhere = settings.model_copy(update={
        "database_url": settings.resolved_database_url + "?prepared_statement_cache_size=99"})

    def routing(on: Settings, rate: float) -> None:
        async def work(services: Services) -> None:
            async with services.sessions() as session, session.begin():
                await set_routing(session, spec, 1, {"audit_rate": rate}, "key:1:ops")
        run_with(on, work)

    routing(elsewhere, 0.1)  # takes the first block: ids n, n+1, ...
    routing(settings, 0.2)  # the next block: n + 200
    routing(elsewhere, 0.3)  # committed last, with id n + 1
    result = verified(settings)
    assert result.ok, result.problems
