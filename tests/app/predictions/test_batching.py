"""Micro-batching on the prediction path: concurrent predictions share ensemble calls and
commits, on real databases with real models, and every caller still gets exactly its own
answer, its own errors and its own audit event."""

from __future__ import annotations

import asyncio
import gc
import os
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY
from sqlmodel import func, select
from threadpoolctl import threadpool_info

from app.access.roles import Principal, Role
from app.audit import log as audit
from app.db.tables import ApiKey, AuditEvent, Prediction, ReviewItem
from app.errors import IdempotencyConflictError
from app.ml.contract import to_matrix, validate_inputs
from app.ml.task import TaskSpec
from app.predictions.batching import PARALLEL_ROWS, Batcher, collector_paused
from app.predictions.path import LARGE_BATCH, predict, predict_batch
from app.predictions.services import Services
from app.settings import Settings
from tests.support.inputs import example_inputs
from tests.support.server import make_key
from tests.support.services import run_with
from tests.support.tampering import hold_commits, release_commits, sequenced_and_verified

TASK = "loan_default"


def batches(batcher: str) -> tuple[float, float]:
    """(batches run, items in them) so far by the named batcher, from /metrics' registry."""
    count = REGISTRY.get_sample_value("arbiter_batch_size_count", {"batcher": batcher})
    total = REGISTRY.get_sample_value("arbiter_batch_size_sum", {"batcher": batcher})
    return count or 0.0, total or 0.0


# --- the batcher itself --------------------------------------------------------------------


def test_concurrent_submissions_run_together_and_each_gets_its_own_outcome() -> None:
    calls: list[list[int]] = []

    async def run(items: list[int]) -> list[Any]:
        calls.append(items)
        await asyncio.sleep(0.01)  # a batch in flight: later submissions queue up
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]

    async def main() -> list[Any]:
        batcher: Batcher[int] = Batcher("test", run, max_size=8, window=0.0)
        return await asyncio.gather(*[batcher.submit(i) for i in range(20)],
                                    return_exceptions=True)

    outcomes = asyncio.run(main())
    for i, outcome in enumerate(outcomes):
        if i % 2:
            assert isinstance(outcome, ValueError) and str(outcome) == f"odd {i}"
        else:
            assert outcome == i * 10
    assert sorted(i for c in calls for i in c) == list(range(20))  # each item run once
    assert len(calls) == 3 and max(len(c) for c in calls) == 8  # closed at max_size


def test_a_caller_that_goes_away_does_not_disturb_the_batch() -> None:
    ran: list[int] = []

    async def run(items: list[int]) -> list[Any]:
        await asyncio.sleep(0.02)
        ran.extend(items)
        return items

    async def main() -> list[Any]:
        batcher: Batcher[int] = Batcher("test", run, max_size=64, window=0.001)
        leaving = asyncio.ensure_future(batcher.submit(0))
        staying = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 4)]
        await asyncio.sleep(0.005)
        leaving.cancel()
        return await asyncio.gather(*staying)

    assert asyncio.run(main()) == [1, 2, 3]
    assert ran == [0, 1, 2, 3]  # the work of the caller that left was still done


def test_drain_waits_for_the_batch_of_a_caller_that_went_away() -> None:
    """A stopped ``predict-file`` left its chunk's commit running, and the event loop closed
    under it mid-query (asyncpg's cancel request then outlived the loop)."""
    finished: list[int] = []

    async def run(items: list[int]) -> list[Any]:
        await asyncio.sleep(0.05)
        finished.extend(items)
        return items

    async def main() -> None:
        batcher: Batcher[int] = Batcher("test", run, max_size=64, window=0.001)
        leaving = asyncio.ensure_future(batcher.submit(7))
        await asyncio.sleep(0.01)
        leaving.cancel()
        await batcher.drain()
        assert finished == [7]  # ran to its end, although its only caller left
        await batcher.drain()  # nothing in flight: returns at once

    asyncio.run(main())


def test_a_failing_run_fails_its_callers_and_the_next_batch_runs() -> None:
    async def run(items: list[int]) -> list[Any]:
        if 0 in items:
            raise RuntimeError("bug in run")
        return items

    async def main() -> tuple[BaseException | None, int]:
        batcher: Batcher[int] = Batcher("test", run, max_size=64, window=0.0)
        try:
            await batcher.submit(0)
            failed = None
        except RuntimeError as exc:
            failed = exc
        return failed, await batcher.submit(5)

    failed, later = asyncio.run(main())
    assert str(failed) == "bug in run" and later == 5


# --- the prediction path, on SQLite and PostgreSQL ------------------------------------------


def test_concurrent_predictions_share_model_calls_and_commits(
    settings: Settings, example_tasks: dict[str, TaskSpec]
) -> None:
    task = example_tasks[TASK]
    rows = example_inputs(task, 48, seed=21)
    # The release stages read once, as a server does between refreshes: with the suite's
    # re-read on every call, each prediction first waited its turn for the registry's lock
    # and a database round trip, and how many arrived within the window depended on how
    # busy the machine was (CI once saw 24 model calls for 48 rows). Now all 48 reach the
    # batcher before its first batch runs, whatever the load.
    gathering = settings.model_copy(update={"release_refresh_seconds": 3600.0})

    async def work(services: Services) -> None:
        await services.registry.load_all()
        live = (await services.registry.deployment(TASK)).live
        calls_before, commits_before = batches("inference"), batches("commit")
        stored = await asyncio.gather(*[predict(services, None, TASK, row) for row in rows])
        calls_after, commits_after = batches("inference"), batches("commit")

        # One model call and one commit for all 48 predictions: the rows were gathered.
        assert calls_after[1] - calls_before[1] == len(rows)
        assert commits_after[1] - commits_before[1] == len(rows)
        assert calls_after[0] - calls_before[0] == 1
        assert commits_after[0] - commits_before[0] == 1

        # Each caller got the answer for its own row: the same as the row predicted alone.
        X = to_matrix(task, validate_inputs(task, rows, batch=True))
        for i, p in enumerate(stored):
            [alone], _ = live.predict(X[i:i + 1])
            assert p.input == rows[i]
            assert np.allclose([c["probability"] for c in p.probabilities], alone.probabilities,
                               atol=1e-9), i
            assert p.label == task.classes[alone.label]

        async with services.sessions() as session:
            ids = set((await session.exec(select(Prediction.id))).all())
            items = (await session.exec(select(func.count()).select_from(ReviewItem))).one()
            events = (await session.exec(select(AuditEvent.subject_id).where(
                AuditEvent.kind == audit.Kind.PREDICTION_MADE.value))).all()
        assert ids == {p.id for p in stored}
        assert items == sum(p.route == "REVIEW" for p in stored)
        assert sorted(events) == sorted(ids)  # one audit event per prediction, no more
        assert (await sequenced_and_verified(services.sessions, settings)).ok

    run_with(gathering, work)


def test_a_keyed_batch_that_lost_a_race_stores_the_rest_without_running_models_again(
    settings: Settings, example_tasks: dict[str, TaskSpec]
) -> None:
    """Two keyed batches sharing five keys both look their keys up before either commits
    (commits wait for the database's write lock, held by the test until both have run their
    models).
    One commits; the other's commit is refused, and its retry answers the shared keys with
    the stored predictions and stores the rest with the predictions it already made."""
    rows = example_inputs(example_tasks[TASK], 15, seed=24)
    keys = [f"order-{i}" for i in range(15)]

    async def work(services: Services) -> None:
        await services.registry.load_all()
        before = batches("inference")
        async with services.sessions() as holder, holder.begin():
            await (await holder.connection()).run_sync(hold_commits)
            calls = [asyncio.ensure_future(predict_batch(
                services, None, TASK, rows[a:b], actor="test", idempotency_keys=keys[a:b]))
                for a, b in ((0, 10), (5, 15))]
            for _ in range(6_000):  # both lookups done: both batches reached the models
                if batches("inference")[1] - before[1] >= 20:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the two batches never reached the models")
            await (await holder.connection()).run_sync(release_commits)
        first, second = await asyncio.gather(*calls)
        # Both ran their models once (10 + 10 rows); the retry ran none.
        assert batches("inference")[1] - before[1] == 20
        assert [p.id for p in first[5:]] == [p.id for p in second[:5]]
        assert [p.idempotency_key for p in first + second[5:]] == keys
        async with services.sessions() as session:
            ids = set((await session.exec(select(Prediction.id))).all())
            events = (await session.exec(select(AuditEvent.subject_id).where(
                AuditEvent.kind == audit.Kind.PREDICTION_MADE.value))).all()
        assert ids == {p.id for p in first + second}
        assert sorted(events) == sorted(ids)
        assert (await sequenced_and_verified(services.sessions, settings)).ok

    run_with(settings, work)


def test_one_callers_conflict_in_a_shared_commit_fails_that_caller_alone(
    settings: Settings, example_tasks: dict[str, TaskSpec]
) -> None:
    task = example_tasks[TASK]
    rows = example_inputs(task, 12, seed=22)
    make_key(settings, "predictor", "shop")

    async def work(services: Services) -> None:
        await services.registry.load_all()
        async with services.sessions() as session:
            key = (await session.exec(select(ApiKey).where(ApiKey.name == "shop"))).one()
        assert key.id is not None
        caller = Principal(key.id, "shop", Role.PREDICTOR)
        # The same idempotency key five times with one input, and once with another input,
        # among six plain predictions, all at once: they land in shared commits.
        same = [predict(services, caller, TASK, rows[0], idempotency_key="order-1")
                for _ in range(5)]
        other = predict(services, caller, TASK, rows[1], idempotency_key="order-1")
        plain = [predict(services, caller, TASK, row) for row in rows[2:8]]
        outcomes = await asyncio.gather(*same, other, *plain, return_exceptions=True)

        keyed = outcomes[:6]
        stored_ids = {o.id for o in keyed if isinstance(o, Prediction)}
        assert len(stored_ids) == 1  # one prediction for the key, replayed to the others
        conflicts = [o for o in keyed if isinstance(o, IdempotencyConflictError)]
        # The odd input out conflicts, unless it won the race, then the five others do.
        assert len(conflicts) in (1, 5), outcomes
        assert all(isinstance(o, Prediction) for o in outcomes[6:]), outcomes[6:]
        async with services.sessions() as session:
            count = (await session.exec(select(func.count()).select_from(Prediction))).one()
        assert count == 1 + 6
        assert (await sequenced_and_verified(services.sessions, settings)).ok

    run_with(settings, work)


def test_a_batch_longer_than_a_model_call_comes_back_whole_and_in_order(
    settings: Settings, example_tasks: dict[str, TaskSpec]
) -> None:
    task = example_tasks[TASK]
    rows = example_inputs(task, 300, seed=23)
    small = settings.model_copy(update={"batch_max_rows": 64})

    async def work(services: Services) -> None:
        await services.registry.load_all()
        live = (await services.registry.deployment(TASK)).live
        calls_before = batches("inference")
        stored = await predict_batch(services, None, TASK, rows)
        calls = batches("inference")[0] - calls_before[0]
        assert calls == 5  # 300 rows in calls of at most 64
        alone, _ = live.predict(to_matrix(task, validate_inputs(task, rows, batch=True)))
        assert [p.label for p in stored] == [task.classes[r.label] for r in alone]
        assert [p.input for p in stored] == rows

    run_with(small, work)


def test_models_run_on_one_openmp_thread_unless_the_call_is_large(settings: Settings) -> None:
    async def work(services: Services) -> tuple[list[int], list[int]]:
        small = await services.inference.run(1, threadpool_info)
        large = await services.inference.run(PARALLEL_ROWS, threadpool_info)
        return ([p["num_threads"] for p in small if p["user_api"] == "openmp"],
                [p["num_threads"] for p in large if p["user_api"] == "openmp"])

    small, large = run_with(settings, work)
    assert small and set(small) == {1}  # scikit-learn's OpenMP is loaded and limited
    if (os.cpu_count() or 1) > 1:
        assert set(large) == {os.cpu_count()}
    else:
        pytest.skip("one core: nothing to lift")


def test_the_collector_pauses_for_a_large_batch_only_and_always_resumes(
    settings: Settings, example_tasks: dict[str, TaskSpec]
) -> None:
    task = example_tasks[TASK]
    large = example_inputs(task, LARGE_BATCH, seed=24)

    async def watch(batch: list[dict[str, Any]], services: Services) -> set[bool]:
        seen: set[bool] = set()
        running = asyncio.ensure_future(predict_batch(services, None, TASK, batch))
        while not running.done():
            seen.add(gc.isenabled())
            await asyncio.sleep(0)
        await running
        return seen

    async def work(services: Services) -> tuple[set[bool], set[bool], bool]:
        await services.registry.load_all()
        during_large = await watch(large, services)
        during_small = await watch(large[:50], services)
        return during_large, during_small, gc.isenabled()

    assert gc.isenabled()
    during_large, during_small, after = run_with(settings, work)
    assert False in during_large and during_small == {True} and after


def test_nested_pauses_resume_once_and_never_enable_a_collector_that_was_off() -> None:
    with collector_paused():
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer batch still runs
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
