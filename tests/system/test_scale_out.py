"""The scale-out recipe, as the README gives it: two `arbiter serve` processes and an
`arbiter worker` process on PostgreSQL and Redis. A prediction made through one server
reaches a GraphQL subscriber of the other; a lease expired by the worker process reaches
it too."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.ml.task import TaskSpec
from app.settings import Settings
from tests.support.databases import POSTGRES_ONLY
from tests.support.documents import BATCH, CLAIM
from tests.support.inputs import example_inputs
from tests.support.processes import process_env, servers, short_leases
from tests.support.redis_server import require_redis
from tests.support.server import Api, make_key
from tests.support.subscriber import client, follow, until

PREDICTIONS = 'subscription { predictions(task: "loan_default") { id route } }'
REVIEW_EVENTS = """subscription { reviewEvents(task: "loan_default") {
  itemId change status } }"""
PREDICT = 'mutation($i: JSON!) { predict(task: "loan_default", input: $i) { id } }'


@pytest.fixture
def cluster(settings: Settings, tmp_path: Path) -> Iterator[list[str]]:
    """Two servers and one worker; yields the servers' URLs."""
    require_redis()
    env = process_env(settings, f"arbiter-test-{tmp_path.name[-12:]}", short_leases(tmp_path))
    with servers(env, 2, worker=True) as urls:
        yield urls


async def subscribe_until_live(sink: list[dict[str, Any]], probe: Any) -> None:
    """Subscriptions start asynchronously on another process: probe until one arrives."""
    for _ in range(60):
        await asyncio.to_thread(probe)
        try:
            await until(lambda: bool(sink), "a probe event")
            return
        except AssertionError:
            continue
    raise AssertionError("the subscription never received a probe")


@pytest.mark.redis
@POSTGRES_ONLY
def test_an_event_published_anywhere_reaches_subscribers_of_every_server(
        cluster: list[str], settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    one, other = cluster
    admin, reviewer = make_key(settings, "admin", "ops"), make_key(settings, "reviewer", "rita")
    predictor = make_key(settings, "predictor", "app")
    rows = example_inputs(example_tasks["loan_default"], 60)

    def call(url: str, key: str, query: str, **variables: Any) -> dict[str, Any]:
        with httpx.Client(base_url=url, timeout=120) as http:
            result: dict[str, Any] = Api(http, key)(query, **variables)["data"]
            return result

    async def scenario() -> None:
        predictions: list[dict[str, Any]] = []
        queue: list[dict[str, Any]] = []
        async with client(other, admin) as a, client(other, reviewer) as b:
            following = [asyncio.create_task(follow(a, PREDICTIONS, predictions)),
                         asyncio.create_task(follow(b, REVIEW_EVENTS, queue))]
            await subscribe_until_live(predictions,
                                       lambda: call(one, predictor, PREDICT, i=rows[0]))
            seen = len(predictions)
            batch = (await asyncio.to_thread(call, one, predictor, BATCH, i=rows[1:]))[
                "predictBatch"]
            await until(lambda: len(predictions) >= seen + len(batch), "the batch")
            assert [p["predictions"]["id"] for p in predictions[seen:]] == [
                p["id"] for p in batch]

            # Claimed through one server, expired by the worker process a second later.
            lease = (await asyncio.to_thread(call, one, reviewer, CLAIM))["claimReview"]
            item = lease["item"]["id"]
            await until(lambda: any(e["reviewEvents"]["itemId"] == item and
                                    e["reviewEvents"]["change"] == "EXPIRED" for e in queue),
                        "the worker's expiry event")
            for task in following:
                task.cancel()
        mine = [e["reviewEvents"] for e in queue if e["reviewEvents"]["itemId"] == item]
        assert [(e["change"], e["status"]) for e in mine][-2:] == [
            ("CLAIMED", "CLAIMED"), ("EXPIRED", "PENDING")]

    asyncio.run(scenario())
