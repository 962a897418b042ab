"""Claims under contention on real databases: many reviewers at once never share an item,
and nobody is told "nothing waits" while an item they may take still waits."""

from __future__ import annotations

import asyncio
import json

import pytest
from prometheus_client import REGISTRY
from sqlmodel import select

from app.audit import log as audit_log
from app.db.tables import AuditEvent, OutboxMessage
from app.db.types import utcnow
from app.ml.task import TaskSpec
from app.predictions.services import Services
from app.releases.store import change_routing
from app.settings import Settings
from review import queue
from tests.review.test_queue import TASK, items, reviewers, routed
from tests.support.services import run_with

CLAIMERS = 40


def test_every_concurrent_claim_gets_a_distinct_item_until_the_queue_is_empty(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    crowd = reviewers(settings, CLAIMERS)

    async def work(services: Services) -> None:
        sessions = services.sessions
        # At least two full waves of claimers. The 2 % random audit sample (drawn from each
        # prediction's random id) moves the count: 400 rows once gave exactly 80.
        available = len(await routed(services, example_tasks, n=480))
        assert available >= 2 * CLAIMERS, available
        held: list[str] = []
        while (left := available - len(held)) > 0:
            wave = crowd[:min(left, CLAIMERS)]  # the last wave takes exactly what is left
            leases = await asyncio.gather(*(queue.claim(sessions, TASK, r, 60) for r in wave))
            assert all(lease is not None for lease in leases), "a false empty"
            held += [lease.item.id for lease in leases if lease is not None]
        assert len(held) == len(set(held)) == available, "an item was leased twice"
        assert await queue.claim(sessions, TASK, crowd[0], 60) is None
        claimed = {i.id for i in await items(services) if i.status == "CLAIMED"}
        assert claimed == set(held)
    run_with(settings, work)


def test_a_claim_lasts_as_long_as_its_release_says(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    alice, bob = reviewers(settings, 2)

    async def work(services: Services) -> None:
        sessions = services.sessions
        await routed(services, example_tasks)
        default = await queue.claim(sessions, TASK, alice, 600)
        assert default is not None
        assert (default.expires_at - utcnow()).total_seconds() > 590
        task = example_tasks[TASK]
        await change_routing(sessions, task, default.item.release_version,
                             {"lease_seconds": 45}, "tests")
        claimed_at = utcnow()
        short = await queue.claim(sessions, TASK, bob, 600)
        assert short is not None
        lease = (short.expires_at - claimed_at).total_seconds()
        assert 45 <= lease <= 45 + (utcnow() - claimed_at).total_seconds() + 0.01, lease
        (stored,) = [i for i in await items(services) if i.id == short.item.id]
        assert stored.lease_expires_at == short.expires_at
    run_with(settings, work)


@pytest.mark.timeout(120, method="thread")  # a deadlocked loop answers no signal
def test_concurrent_claims_that_each_need_new_audit_ids_all_commit(
        settings: Settings, example_tasks: dict[str, TaskSpec],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every claim's audit event takes a fresh id block (PostgreSQL): while one commit reads
    its block, the others of the same thread must not block the event loop (they did: the
    block's lock was held across the query, and the whole server hung)."""
    crowd = reviewers(settings, 20)

    async def work(services: Services) -> None:
        available = len(await routed(services, example_tasks, n=200))
        assert available >= len(crowd)
        monkeypatch.setattr(audit_log, "_BLOCKS", audit_log.IdBlocks())  # none in hand
        monkeypatch.setattr(audit_log, "IDS_PER_BLOCK", 1)  # each commit reads its own
        leases = await asyncio.gather(*(queue.claim(services.sessions, TASK, r, 60)
                                        for r in crowd))
        held = {lease.item.id for lease in leases if lease is not None}
        assert len(held) == len(crowd)
        async with services.sessions() as session:
            claimed = (await session.exec(select(AuditEvent.subject_id).where(
                AuditEvent.kind == audit_log.Kind.REVIEW_CLAIMED))).all()
        assert sorted(claimed) == sorted(held)
    run_with(settings, work)


def _expiries() -> float:
    return REGISTRY.get_sample_value("arbiter_lease_expiries_total", {"task": TASK}) or 0.0


def test_a_claim_returns_the_row_it_wrote_and_counts_only_a_lapsed_lease_taken_over(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    """The lease's item is the row the UPDATE wrote; its expiry job and audit event name the
    version it wrote; an expiry is counted only when a claim takes over a lapsed lease."""
    alice, bob = reviewers(settings, 2)

    async def work(services: Services) -> None:
        sessions = services.sessions
        await routed(services, example_tasks)
        before = _expiries()
        first = await queue.claim(sessions, TASK, alice, 0.3)
        assert first is not None and _expiries() == before  # a waiting item: no expiry
        await asyncio.sleep(0.5)
        second = await queue.claim(sessions, TASK, bob, 60, item_id=first.item.id)
        assert second is not None and _expiries() == before + 1
        (stored,) = [i for i in await items(services) if i.id == second.item.id]
        assert second.item.model_dump() == stored.model_dump()
        for lease, who in ((first, alice), (second, bob)):
            assert lease.item.status == "CLAIMED" and lease.item.lease_holder_id == who.key_id
            assert lease.item.lease_token_hash == queue.token_hash(lease.token)
        assert second.item.lease_version == first.item.lease_version + 1
        async with sessions() as session:
            jobs = (await session.exec(select(OutboxMessage).where(
                OutboxMessage.actor == "review.expire_lease"))).all()
            claimed = (await session.exec(select(AuditEvent).where(
                AuditEvent.kind == audit_log.Kind.REVIEW_CLAIMED))).all()
        assert sorted(j.payload["lease_version"] for j in jobs) == [
            first.item.lease_version, second.item.lease_version]
        assert sorted(json.loads(e.payload)["leaseVersion"] for e in claimed) == [
            first.item.lease_version, second.item.lease_version]
        # The job of the lapsed lease is a no-op; the current lease's would expire it.
        assert not await queue.expire_lease(sessions, first.item.id, first.item.lease_version)
        third = await queue.claim(sessions, TASK, alice, 60)
        assert third is not None and third.item.id != first.item.id
        assert _expiries() == before + 1
    run_with(settings, work)
