"""The review queue on real databases (SQLite and PostgreSQL), driven through its functions."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlmodel import col, func, select

from app.access.roles import Principal, Role
from app.db.tables import Prediction, ReviewItem, TrainingLabel
from app.errors import BadRequestError, LeaseExpiredError, StaleLeaseError
from app.ml.task import TaskSpec
from app.predictions.path import predict_batch
from app.predictions.services import Services
from app.settings import Settings
from review import queue
from review.items import waiting_by_task
from tests.support.inputs import example_inputs
from tests.support.server import make_key
from tests.support.services import run_with

TASK = "loan_default"


async def routed(services: Services, tasks: dict[str, TaskSpec], n: int = 120) -> list[Prediction]:
    rows = await predict_batch(services, None, TASK, example_inputs(tasks[TASK], n, seed=3))
    return [p for p in rows if p.route == "REVIEW"]


async def items(services: Services) -> list[ReviewItem]:
    async with services.sessions() as session:
        return list((await session.exec(select(ReviewItem))).all())


def reviewers(settings: Settings, n: int) -> list[Principal]:
    keys = [make_key(settings, "reviewer", f"r{i}") for i in range(n)]
    assert len(keys) == n
    return [Principal(i + 1, f"r{i}", Role.REVIEWER) for i in range(n)]


def test_routed_predictions_open_items_in_their_transaction(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    async def work(services: Services) -> None:
        review = await routed(services, example_tasks)
        found = await items(services)
        assert len(review) > 5
        assert {i.prediction_id for i in found} == {p.id for p in review}
        by_prediction = {p.id: p for p in review}
        for item in found:
            p = by_prediction[item.prediction_id]
            assert item.status == "PENDING" and item.required_reviews == 1
            assert item.priority == sum(
                {"LOW_CONFIDENCE": 2, "MEMBER_DISAGREEMENT": 2, "AUDIT_SAMPLE": 0,
                 "OUT_OF_DISTRIBUTION": 3, "MEMBER_FAILURE": 3}[r["code"]] for r in p.reasons)
            assert (item.due_at - p.created_at).total_seconds() == pytest.approx(24 * 3600)
        async with services.sessions() as session:
            waiting = await waiting_by_task(session, {TASK, "breast_cancer"})
        assert waiting == {TASK: len(review), "breast_cancer": 0}
    run_with(settings, work)


def test_claims_serve_priority_then_age_and_resolve(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    [alice] = reviewers(settings, 1)

    async def work(services: Services) -> None:
        await routed(services, example_tasks)
        queued = sorted(await items(services), key=lambda i: (-i.priority, i.created_at, i.id))
        lease = await queue.claim(services.sessions, TASK, alice, 60)
        assert lease is not None and lease.item.id == queued[0].id
        assert lease.item.status == "CLAIMED" and lease.item.lease_holder_id == alice.key_id
        done = await queue.submit(services.sessions, lease.token, alice, "late", "looks late",
                                  lambda _: example_tasks[TASK].classes)
        assert done.status == "RESOLVED" and done.final_label == "late"
        assert done.resolution == "AGREEMENT"
        async with services.sessions() as session:
            prediction = await session.get(Prediction, done.prediction_id)
            label = (await session.exec(select(TrainingLabel))).one()
        assert prediction is not None
        assert prediction.final_label == "late" and prediction.status == "REVIEWED"
        assert label.prediction_id == done.prediction_id and label.label == "late"
        with pytest.raises(StaleLeaseError):
            await queue.submit(services.sessions, lease.token, alice, "late", "",
                               lambda _: example_tasks[TASK].classes)
        nxt = await queue.claim(services.sessions, TASK, alice, 60)
        assert nxt is not None and nxt.item.id == queued[1].id
        with pytest.raises(BadRequestError, match="not one of"):
            await queue.submit(services.sessions, nxt.token, alice, "bankrupt", "",
                               lambda _: example_tasks[TASK].classes)
    run_with(settings, work)


def test_concurrent_reviewers_never_share_an_item(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    crowd = reviewers(settings, 30)

    async def work(services: Services) -> None:
        available = len(await routed(services, example_tasks, n=60))
        leases = await asyncio.gather(*(
            queue.claim(services.sessions, TASK, r, 60) for r in crowd))
        held = [lease.item.id for lease in leases if lease is not None]
        assert len(held) == len(set(held)) == min(available, len(crowd))
        claimed = [i for i in await items(services) if i.status == "CLAIMED"]
        assert {i.id for i in claimed} == set(held)
    run_with(settings, work)


def test_expired_lease_is_refused_and_returns_the_item(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    alice, bob = reviewers(settings, 2)

    async def work(services: Services) -> None:
        await routed(services, example_tasks, n=40)
        lease = await queue.claim(services.sessions, TASK, alice, 0.5)
        assert lease is not None
        await asyncio.sleep(0.8)
        with pytest.raises(LeaseExpiredError):
            await queue.submit(services.sessions, lease.token, alice, "late", "",
                               lambda _: example_tasks[TASK].classes)
        assert len(await queue.expire_leases(services.sessions)) == 1
        item = next(i for i in await items(services) if i.id == lease.item.id)
        assert item.status == "PENDING" and item.lease_holder_id is None
        assert item.lease_expires_at is None
        # Swept or not, an expired token still says so (the sweep keeps its hash) ...
        with pytest.raises(LeaseExpiredError):
            await queue.submit(services.sessions, lease.token, alice, "late", "",
                               lambda _: example_tasks[TASK].classes)
        with pytest.raises(LeaseExpiredError):
            await queue.release(services.sessions, lease.token, "tests")
        # ... while a token that never named a lease is stale.
        with pytest.raises(StaleLeaseError):
            await queue.release(services.sessions, "no-such-token", "tests")
        again = await queue.claim(services.sessions, TASK, bob, 60, item_id=lease.item.id)
        assert again is not None and again.item.lease_version == lease.item.lease_version + 1
        with pytest.raises(StaleLeaseError):
            await queue.release(services.sessions, lease.token, "tests")
        back = await queue.release(services.sessions, again.token, "tests")
        assert back.status == "PENDING"
        # The per-lease job is a no-op once the lease it names is gone.
        assert not await queue.expire_lease(services.sessions, item.id, lease.item.lease_version)
    run_with(settings, work)


def test_blind_double_review_agrees_or_escalates_to_a_third_person(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    alice, bob, carol = reviewers(settings, 3)
    classes = example_tasks[TASK].classes

    async def review(services: Services, who: Principal, item_id: str, label: str) -> Any:
        lease = await queue.claim(services.sessions, TASK, who, 60, item_id=item_id)
        assert lease is not None
        return await queue.submit(services.sessions, lease.token, who, label, "",
                                  lambda _: classes)

    async def work(services: Services) -> None:
        first, second = [p.id for p in await routed(services, example_tasks, n=40)][:2]
        by_prediction = {i.prediction_id: i.id for i in await items(services)}
        agreed, split = by_prediction[first], by_prediction[second]
        half = await review(services, alice, agreed, "late")
        assert half.status == "PENDING" and half.reviews_done == 1
        with pytest.raises(Exception, match="already reviewed"):
            await queue.claim(services.sessions, TASK, alice, 60, item_id=agreed)
        done = await review(services, bob, agreed, "late")
        assert (done.status, done.final_label, done.resolution) == ("RESOLVED", "late",
                                                                    "AGREEMENT")
        await review(services, alice, split, "late")
        escalated = await review(services, bob, split, "default")
        assert escalated.status == "ESCALATED" and escalated.needs_adjudication
        assert escalated.final_label is None
        for reviewer in (alice, bob):  # neither reviewer may adjudicate
            with pytest.raises(Exception, match="already reviewed"):
                await queue.claim(services.sessions, TASK, reviewer, 60, item_id=split)
        decided = await review(services, carol, split, "default")
        assert (decided.status, decided.final_label, decided.resolution) == (
            "RESOLVED", "default", "ADJUDICATION")
        async with services.sessions() as session:
            labels = (await session.exec(select(func.count()).select_from(TrainingLabel))).one()
            reviewed = (await session.exec(select(func.count()).select_from(Prediction).where(
                col(Prediction.status) == "REVIEWED"))).one()
        assert labels == reviewed == 2
    run_with(settings, work, review={"required_reviews": 2})


def test_a_lease_lasts_the_requested_seconds(settings: Settings) -> None:
    """A claim's expiry is the claim time plus the task's lease length."""
    [alice] = reviewers(settings, 1)

    async def work(services: Services) -> None:
        tasks = services.registry.tasks
        await predict_batch(services, None, TASK, example_inputs(tasks[TASK], 40, seed=3))
        before = time.time()
        lease = await queue.claim(services.sessions, TASK, alice, 90)
        assert lease is not None
        assert before + 89 <= lease.expires_at.timestamp() <= time.time() + 91
    run_with(settings, work)
