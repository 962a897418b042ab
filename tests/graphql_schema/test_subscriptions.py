"""Subscriptions through a real GraphQL client (gql over websockets, graphql-transport-ws)
against the real server: what subscribers see, who may subscribe, limits, keep-alive and a
slow consumer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from gql.transport.exceptions import TransportQueryError

from app.events.bus import release_event, releases_topic
from app.ml.task import TaskSpec
from app.settings import Settings
from tests.support.documents import BATCH, CLAIM, RELEASE_EVENTS
from tests.support.inputs import example_inputs
from tests.support.redis_server import RedisServer
from tests.support.server import Api, LiveServer, make_key
from tests.support.subscriber import client, follow, take, until, ws_url

PREDICTIONS = """subscription($task: String!, $only: Boolean!) {
  predictions(task: $task, onlyReview: $only) { id task route label status
    explanation { baseValue outputValue } } }"""
REVIEW_EVENTS = """subscription { reviewEvents(task: "loan_default") {
  itemId predictionId task change status waiting at } }"""
PREDICT = """mutation($i: JSON!) { predict(task: "loan_default", input: $i) { id route } }"""
RELEASE = "mutation($t: String!) { releaseReview(leaseToken: $t) { id status } }"
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def live(request: pytest.FixtureRequest, settings: Settings) -> Iterator[LiveServer]:
    overrides = getattr(request, "param", {})
    with LiveServer(settings.model_copy(update=overrides)) as server:
        yield server


async def subscribed(server: LiveServer, n: int) -> None:
    bus = server.services.events
    await until(lambda: bus.subscribers() >= n, f"{n} subscribers on the server")


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
def test_subscriptions_obey_roles_and_name_unknown_tasks(
        live: LiveServer, settings: Settings) -> None:
    reviewer = make_key(settings, "reviewer", "rita")
    predictor = make_key(settings, "predictor", "app")

    async def refused(key: str, query: str, **variables: Any) -> dict[str, Any]:
        async with client(live.url, key) as session:
            with pytest.raises(TransportQueryError) as refused:
                await take(session, query, 1, **variables)
        assert refused.value.errors
        error: dict[str, Any] = refused.value.errors[0]
        return error

    async def scenario() -> None:
        forbidden = await refused(reviewer, RELEASE_EVENTS)
        assert forbidden["extensions"]["code"] == "FORBIDDEN"
        assert "may not use releaseEvents" in forbidden["message"]
        forbidden = await refused(predictor, REVIEW_EVENTS)
        assert forbidden["extensions"]["code"] == "FORBIDDEN"
        unknown = await refused(predictor, PREDICTIONS, task="no_such_task", only=False)
        assert unknown["extensions"]["code"] == "UNKNOWN_TASK"

    asyncio.run(scenario())


async def _handshake(url: str, payload: dict[str, Any]) -> Any:
    ws = await websockets.connect(ws_url(url), subprotocols=["graphql-transport-ws"])
    await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
    return ws


@SQLITE_ONLY
def test_a_bad_or_missing_key_is_refused_at_connect(live: LiveServer, settings: Settings) -> None:
    good = make_key(settings, "admin", "ops")

    async def scenario() -> None:
        for payload in ({"Authorization": "Bearer not-a-key"}, {}, {"Authorization": good}):
            ws = await _handshake(live.url, payload)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 60)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
        ws = await _handshake(live.url, {"Authorization": f"Bearer {good}"})
        assert json.loads(await asyncio.wait_for(ws.recv(), 60)) == {"type": "connection_ack"}
        await ws.close()

    asyncio.run(scenario())


@SQLITE_ONLY
@pytest.mark.parametrize("live", [{"ws_max_subscriptions": 2, "ws_keepalive_seconds": 0.2}],
                         indirect=True)
def test_subscriptions_per_connection_are_limited_and_the_server_pings(
        live: LiveServer, settings: Settings) -> None:
    admin = make_key(settings, "admin", "ops")

    async def scenario() -> None:
        ws = await _handshake(live.url, {"Authorization": f"Bearer {admin}"})
        assert json.loads(await ws.recv()) == {"type": "connection_ack"}
        for n in range(3):
            await ws.send(json.dumps({"type": "subscribe", "id": str(n),
                                      "payload": {"query": RELEASE_EVENTS}}))
        kinds: dict[str, dict[str, Any]] = {}
        while not {"error", "ping"} <= set(kinds):
            message = json.loads(await asyncio.wait_for(ws.recv(), 60))
            kinds[message["type"]] = message
        assert kinds["error"]["id"] == "2"  # the third subscription, over the limit of two
        assert "Subscription limit reached" in kinds["error"]["payload"][0]["message"]
        await ws.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("live", [{"ws_keepalive_seconds": 0.2, "key_cache_seconds": 0.0}],
                         indirect=True)
def test_a_revoked_key_loses_its_open_subscriptions(live: LiveServer, settings: Settings) -> None:
    admin, doomed = make_key(settings, "admin", "ops"), make_key(settings, "predictor", "old")

    def revoke() -> None:
        with httpx.Client(base_url=live.url, timeout=60) as http:
            api = Api(http, admin)
            keys = api("{ apiKeys { id name } }")["data"]["apiKeys"]
            [key_id] = [k["id"] for k in keys if k["name"] == "old"]
            revoked = api("mutation($id: Int!) { revokeApiKey(id: $id) { revokedAt } }",
                          id=key_id)
            assert revoked["data"]["revokeApiKey"]["revokedAt"], revoked

    async def subscribe(key: str) -> Any:
        ws = await _handshake(live.url, {"Authorization": f"Bearer {key}"})
        assert json.loads(await asyncio.wait_for(ws.recv(), 60)) == {"type": "connection_ack"}
        await ws.send(json.dumps({"type": "subscribe", "id": "1", "payload": {
            "query": PREDICTIONS, "variables": {"task": "loan_default", "only": False}}}))
        return ws

    async def pings(ws: Any, n: int) -> None:
        for _ in range(n):
            assert json.loads(await asyncio.wait_for(ws.recv(), 60))["type"] == "ping"

    async def scenario() -> None:
        kept, lost = await subscribe(admin), await subscribe(doomed)
        await subscribed(live, 2)
        await pings(lost, 2)  # checked and still good
        await asyncio.to_thread(revoke)
        gives_up = asyncio.get_running_loop().time() + 60
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while asyncio.get_running_loop().time() < gives_up:
                await asyncio.wait_for(lost.recv(), 60)  # pings, until the socket closes
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
        assert closed.value.rcvd.reason == "API key revoked"
        bus = live.services.events  # the revoked key's subscription is gone from the bus
        await until(lambda: bus.subscribers() == 1, "the revoked key's subscription ended")
        await pings(kept, 3)  # the other key's socket stays open
        await kept.close()

    asyncio.run(scenario())


@SQLITE_ONLY
@pytest.mark.parametrize("live", [{"subscription_buffer": 16}], indirect=True)
def test_a_subscriber_that_falls_a_buffer_behind_is_told_and_can_subscribe_again(
        live: LiveServer, settings: Settings) -> None:
    admin = make_key(settings, "admin", "ops")
    burst = 500  # published at once from a worker thread: far more than 16 can be sent meanwhile
    subscribe = {"type": "subscribe", "payload": {"query": RELEASE_EVENTS}}

    async def next_event_or_error(ws: Any) -> dict[str, Any]:
        while (message := json.loads(await asyncio.wait_for(ws.recv(), 60)))["type"] == "ping":
            pass
        return dict(message)

    async def scenario() -> None:
        ws = await _handshake(live.url, {"Authorization": f"Bearer {admin}"})
        try:
            assert json.loads(await ws.recv()) == {"type": "connection_ack"}
            await ws.send(json.dumps({**subscribe, "id": "1"}))
            await subscribed(live, 1)
            bus = live.services.events
            await asyncio.to_thread(lambda: [bus.publish_sync(
                releases_topic("loan_default"),
                release_event("TRAINING_PROGRESS", "loan_default", progress=n / burst))
                for n in range(burst)])
            received = 0
            while "errors" not in (message := await next_event_or_error(ws))["payload"]:
                assert message["type"] == "next"
                assert message["payload"]["data"]["releaseEvents"]["progress"] == received / burst
                received += 1
            assert received < burst  # told, not silently starved, and memory stayed bounded
            error = message["payload"]["errors"][0]
            assert error["extensions"]["code"] == "SUBSCRIBER_TOO_SLOW"
            assert error["extensions"]["buffer"] == 16
            # what it had was delivered, the rest counted as dropped until it was cut off
            # (events still on their way after the cut-off reach nobody); none counted twice
            dropped = error["extensions"]["dropped"]
            assert received >= 16 and dropped >= 1 and received + dropped <= burst
            assert (await next_event_or_error(ws))["type"] == "complete"
            await until(lambda: bus.subscribers() == 0, "the cut-off subscription is released")

            await ws.send(json.dumps({**subscribe, "id": "2"}))  # the connection lives on
            await subscribed(live, 1)
            bus.publish_sync(releases_topic("loan_default"),
                             release_event("TRAINING_FINISHED", "loan_default", version=3))
            again = await next_event_or_error(ws)
            assert again["id"] == "2"
            assert again["payload"]["data"]["releaseEvents"]["kind"] == "TRAINING_FINISHED"
        finally:
            await ws.close()

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
