"""Subscriptions through a real GraphQL client (gql over websockets, graphql-transport-ws)
against the real server: what subscribers see of predictions, review and release events,
lease expiries from the embedded worker, and a Redis restart they ride through."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from gql.transport.exceptions import TransportQueryError

from app.events.topics import release_event, releases_topic
from app.ml.task import TaskSpec
from app.settings import Settings
from tests.support.databases import SQLITE_ONLY
from tests.support.documents import BATCH, CLAIM, PREDICTIONS, RELEASE_EVENTS, REVIEW_EVENTS
from tests.support.inputs import example_inputs
from tests.support.redis_server import RedisServer
from tests.support.server import Api, LiveServer, make_key
from tests.support.subscriber import client, follow, subscribed, take, until

PREDICT = """mutation($i: JSON!) { predict(task: "loan_default", input: $i) { id route } }"""
RELEASE = "mutation($t: String!) { releaseReview(leaseToken: $t) { id status } }"



def ids(payloads: list[dict[str, Any]], field: str = "predictions") -> list[str]:
    return [p[field]["id"] for p in payloads]


def test_predictions_reach_subscribers_filtered_for_each_caller(
        live: LiveServer, settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    admin, mine = make_key(settings, "admin", "ops"), make_key(settings, "predictor", "mine")
    other = make_key(settings, "predictor", "other")
    rows = example_inputs(example_tasks["loan_default"], 40)

    def predict() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        with httpx.Client(base_url=live.url, timeout=120) as http:
            batch = Api(http, other)(BATCH, i=rows[1:])["data"]["predictBatch"]
            own = Api(http, mine)(PREDICT, i=rows[0])["data"]["predict"]
        return batch, own

    async def scenario() -> None:
        every: list[dict[str, Any]] = []
        routed: list[dict[str, Any]] = []
        own: list[dict[str, Any]] = []
        async with client(live.url, admin) as a, client(live.url, admin) as b, \
                client(live.url, mine) as c:
            tasks = [asyncio.create_task(follow(a, PREDICTIONS, every, task="loan_default",
                                                only=False)),
                     asyncio.create_task(follow(b, PREDICTIONS, routed, task="loan_default",
                                                only=True)),
                     asyncio.create_task(follow(c, PREDICTIONS, own, task="loan_default",
                                                only=False))]
            await subscribed(live, 3)
            batch, mine_stored = await asyncio.to_thread(predict)
            stored = [*batch, mine_stored]
            to_review = [p["id"] for p in stored if p["route"] == "REVIEW"]
            assert to_review, "the sample routes some predictions to review"
            await until(lambda: len(every) >= len(stored) and len(own) >= 1
                        and len(routed) >= len(to_review), "every event")
            for task in tasks:
                task.cancel()
        assert ids(every) == [p["id"] for p in stored]  # in the order they were stored
        assert all(p["predictions"]["explanation"]["baseValue"] is not None for p in every)
        assert ids(routed) == to_review
        assert ids(own) == [mine_stored["id"]]  # a predictor follows only its own

    asyncio.run(scenario())


def test_review_events_follow_the_queue(
        live: LiveServer, settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    reviewer = make_key(settings, "reviewer", "rita")
    predictor = make_key(settings, "predictor", "app")
    rows = example_inputs(example_tasks["loan_default"], 40)

    def work() -> tuple[list[str], dict[str, Any]]:
        with httpx.Client(base_url=live.url, timeout=120) as http:
            batch = Api(http, predictor)(BATCH, i=rows)["data"]["predictBatch"]
            lease = Api(http, reviewer)(CLAIM)["data"]["claimReview"]
            Api(http, reviewer)(RELEASE, t=lease["leaseToken"])
        return [p["id"] for p in batch if p["route"] == "REVIEW"], lease

    async def scenario() -> None:
        seen: list[dict[str, Any]] = []
        async with client(live.url, reviewer) as session:
            following = asyncio.create_task(follow(session, REVIEW_EVENTS, seen))
            await subscribed(live, 1)
            routed, lease = await asyncio.to_thread(work)
            await until(lambda: len(seen) >= len(routed) + 2, "every queue change")
            following.cancel()
        events = [e["reviewEvents"] for e in seen]
        opened, (claimed, released) = events[:-2], events[-2:]
        assert [e["predictionId"] for e in opened] == routed
        assert {(e["change"], e["status"], e["task"]) for e in opened} == {
            ("OPENED", "PENDING", "loan_default")}
        waiting = [e["waiting"] for e in opened]  # counted once per commit, after it
        assert waiting == sorted(waiting) and waiting[-1] == len(routed) and waiting[0] >= 1
        item = lease["item"]["id"]
        assert (claimed["itemId"], claimed["change"], claimed["status"]) == (
            item, "CLAIMED", "CLAIMED")
        assert claimed["waiting"] == len(routed) - 1
        assert (released["itemId"], released["change"], released["status"]) == (
            item, "RELEASED", "PENDING")
        assert released["waiting"] == len(routed)

    asyncio.run(scenario())


@SQLITE_ONLY
def test_release_events_published_on_the_bus_reach_subscribers(
        live: LiveServer, settings: Settings) -> None:
    admin = make_key(settings, "admin", "ops")
    progress = release_event("TRAINING_PROGRESS", "loan_default", job_id="job-7",
                             status="RUNNING", progress=0.25, message="fitting logistic")
    promoted = release_event("STAGE_CHANGED", "loan_default", version=2, from_stage="CANARY",
                             to_stage="LIVE", traffic_percent=100.0, actor="key:1:ops",
                             reason="gate passed")
    elsewhere = release_event("STAGE_CHANGED", "breast_cancer", version=9)

    async def scenario() -> None:
        async with client(live.url, admin) as session:
            events = asyncio.create_task(take(session, RELEASE_EVENTS, 2))
            await subscribed(live, 1)
            bus = live.services.events

            def from_a_worker_thread() -> None:
                bus.publish_sync(releases_topic("breast_cancer"), elsewhere)
                bus.publish_sync(releases_topic("loan_default"), progress)
                bus.publish_sync(releases_topic("loan_default"), promoted)

            await asyncio.to_thread(from_a_worker_thread)
            first, second = [e["releaseEvents"] for e in await events]
        assert first["kind"] == "TRAINING_PROGRESS" and first["progress"] == 0.25
        assert (first["jobId"], first["status"], first["version"]) == ("job-7", "RUNNING", None)
        assert second["kind"] == "STAGE_CHANGED" and second["version"] == 2
        assert (second["fromStage"], second["toStage"], second["trafficPercent"]) == (
            "CANARY", "LIVE", 100.0)
        assert (second["actor"], second["reason"]) == ("key:1:ops", "gate passed")
        assert second["at"] is not None

    asyncio.run(scenario())


@SQLITE_ONLY
def test_embedded_worker_threads_publish_expiries_to_subscribers(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    reviewer = make_key(settings, "reviewer", "rita")
    predictor = make_key(settings, "predictor", "app")
    rows = example_inputs(example_tasks["loan_default"], 40)
    fast_sweep = settings.model_copy(update={"lease_sweep_seconds": 1.0})

    with LiveServer(fast_sweep, {"lease_seconds": 1.0}) as live:
        def claim() -> str:
            with httpx.Client(base_url=live.url, timeout=120) as http:
                Api(http, predictor)(BATCH, i=rows)
                return str(Api(http, reviewer)(CLAIM)["data"]["claimReview"]["item"]["id"])

        async def scenario() -> None:
            seen: list[dict[str, Any]] = []
            async with client(live.url, reviewer) as session:
                following = asyncio.create_task(follow(session, REVIEW_EVENTS, seen))
                await subscribed(live, 1)
                item = await asyncio.to_thread(claim)
                # The in-process Dramatiq worker expires the lease on a thread of its own.
                await until(lambda: any(e["reviewEvents"]["itemId"] == item and e[
                    "reviewEvents"]["change"] == "EXPIRED" for e in seen), "the expiry")
                following.cancel()
            expired = [e["reviewEvents"] for e in seen if e["reviewEvents"]["change"] == "EXPIRED"]
            assert [(e["itemId"], e["status"]) for e in expired] == [(item, "PENDING")]

        asyncio.run(scenario())


@pytest.mark.redis
@SQLITE_ONLY
def test_a_redis_restart_ends_subscriptions_with_events_missed_and_they_resume(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    redis_server = RedisServer().start()
    scaled = settings.model_copy(update={"redis_url": redis_server.url,
                                         "redis_namespace": "restart"})
    admin, predictor = make_key(settings, "admin", "ops"), make_key(settings, "predictor", "app")
    rows = example_inputs(example_tasks["loan_default"], 3)

    def predict(row: dict[str, Any]) -> str:
        with httpx.Client(base_url=live.url, timeout=120) as http:
            return str(Api(http, predictor)(PREDICT, i=row)["data"]["predict"]["id"])

    async def scenario() -> None:
        seen: list[dict[str, Any]] = []
        async with client(live.url, admin) as session:
            following = asyncio.create_task(follow(session, PREDICTIONS, seen,
                                                   task="loan_default", only=False))
            await subscribed(live, 1)
            bus = live.services.events
            await until(lambda: bus.connected.is_set(), "the server's Redis subscription")
            before = await asyncio.to_thread(predict, rows[0])
            await until(lambda: len(seen) == 1, "the event before the restart")

            redis_server.kill()
            # The subscriber is told that events may be missing, not left waiting.
            with pytest.raises(TransportQueryError) as told:
                await asyncio.wait_for(following, 60)
            assert told.value.errors is not None
            assert told.value.errors[0]["extensions"]["code"] == "EVENTS_MISSED"
            during = await asyncio.to_thread(predict, rows[1])  # stored; its event is lost

            # Subscribed again during the outage: ended again once the server is back (it
            # missed `during`), then subscribed for good.
            again = asyncio.create_task(follow(session, PREDICTIONS, seen,
                                               task="loan_default", only=False))
            await subscribed(live, 1)
            await asyncio.to_thread(redis_server.start)
            with pytest.raises(TransportQueryError) as retold:
                await asyncio.wait_for(again, 60)
            assert retold.value.errors is not None
            assert retold.value.errors[0]["extensions"]["code"] == "EVENTS_MISSED"
            await until(lambda: bus.connected.is_set(), "the server subscribes again")
            resumed = asyncio.create_task(follow(session, PREDICTIONS, seen,
                                                 task="loan_default", only=False))
            await subscribed(live, 1)

            # The publisher skips Redis for a second after a failure, dropping what it
            # publishes meanwhile; its notice then ends the subscription that missed those
            # events, and the client subscribes again, as after any EVENTS_MISSED.
            after: list[str] = []
            for _ in range(120):
                if any(p["predictions"]["id"] in after for p in seen):
                    break
                if resumed.done():
                    with pytest.raises(TransportQueryError) as dropped:
                        resumed.result()
                    assert dropped.value.errors is not None
                    assert dropped.value.errors[0]["extensions"]["code"] == "EVENTS_MISSED"
                    resumed = asyncio.create_task(follow(session, PREDICTIONS, seen,
                                                         task="loan_default", only=False))
                    await subscribed(live, 1)
                after.append(await asyncio.to_thread(predict, rows[2]))
                await asyncio.sleep(0.5)
            else:
                raise AssertionError("no prediction after the restart reached a subscriber")
            resumed.cancel()
        assert seen[0]["predictions"]["id"] == before
        assert during not in [p["predictions"]["id"] for p in seen]
        assert seen[-1]["predictions"]["id"] in after

    try:
        with LiveServer(scaled) as live:
            asyncio.run(scenario())
    finally:
        redis_server.kill()
