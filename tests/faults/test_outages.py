"""Faults under load on the scaled-out deployment (two servers and a worker on PostgreSQL
and Redis): Redis hung (SIGSTOP) and killed, PostgreSQL backends terminated, a server
SIGKILLed. Predictions keep being acknowledged throughout; afterwards every acknowledged
prediction is stored exactly once with its audit event, no review item was leased twice,
and the outbox's jobs all reached the broker. While Redis is away both servers stay ready
(degraded) and a subscriber is told EVENTS_MISSED while Redis is still away."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.ml.task import TaskSpec
from app.settings import Settings
from tests.faults.cluster import (
    Cluster,
    Load,
    check_stored_once,
    database,
    live_subscriber,
    retryable,
    wait_until,
)
from tests.support.databases import POSTGRES_ONLY
from tests.support.documents import CLAIM
from tests.support.inputs import example_inputs
from tests.support.processes import process_env
from tests.support.redis_server import RedisServer
from tests.support.server import make_key

pytestmark = [pytest.mark.faults, pytest.mark.redis, POSTGRES_ONLY]


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.resume()
    server.kill()


@pytest.fixture
def env(settings: Settings, redis_server: RedisServer) -> dict[str, str]:
    env = process_env(settings, f"arbiter-faults-{uuid.uuid4().hex[:8]}", settings.tasks_dir)
    return {**env, "ARBITER_REDIS_URL": redis_server.url}


class Reviewer:
    """Claims items through any server (retrying retryable failures); remembers them."""

    def __init__(self, urls: list[str], key: str) -> None:
        self.urls, self.key = urls, key
        self.claimed: list[str] = []

    def claim(self) -> None:
        for n in range(100):
            response = None
            with contextlib.suppress(httpx.TransportError):
                response = httpx.post(f"{self.urls[n % len(self.urls)]}/graphql", timeout=60,
                                      json={"query": CLAIM, "variables": {}},
                                      headers={"Authorization": f"Bearer {self.key}"})
            if not retryable(response):
                assert response is not None
                lease = response.json()["data"]["claimReview"]
                if lease is not None:
                    self.claimed.append(lease["item"]["id"])
                return
        raise AssertionError("no claim got through")


def degraded(cluster: Cluster, n: int) -> dict[str, Any] | None:
    response = cluster.readyz(n)
    body: dict[str, Any] = response.json()
    return body if response.status_code == 200 and body["status"] == "degraded" else None


def check_leases_and_outbox(settings: Settings, reviewers: list[Reviewer]) -> None:
    claimed = [item for r in reviewers for item in r.claimed]
    assert claimed, "no item was claimed: the check below would prove nothing"
    assert len(claimed) == len(set(claimed)), "an item was leased to two reviewers"
    unsent = "SELECT id, actor, attempts, created_at FROM outbox WHERE sent_at IS NULL"
    open_transactions = ("SELECT pid, state, xact_start, left(query, 120) AS query "
                         "FROM pg_stat_activity WHERE datname = current_database() "
                         "AND state LIKE 'idle in transaction%'")
    try:
        wait_until(lambda: database(settings, "SELECT count(*) AS n FROM outbox "
                                              "WHERE sent_at IS NULL")[0]["n"] == 0,
                   "every outbox job sent to the broker")
    except AssertionError as exc:  # say which jobs, and whether a process holds them
        raise AssertionError(f"{exc}; unsent: {database(settings, unsent)}; open "
                             f"transactions: {database(settings, open_transactions)}") from None


def test_redis_hung_then_killed_under_load(
        settings: Settings, env: dict[str, str], redis_server: RedisServer,
        example_tasks: dict[str, TaskSpec]) -> None:
    rows = example_inputs(example_tasks["loan_default"], 50)
    predictor, admin = make_key(settings, "predictor", "load"), make_key(settings, "admin", "ops")
    with Cluster(env) as cluster:
        reviewer = Reviewer(cluster.urls, make_key(settings, "reviewer", "rita"))
        with Load(cluster.urls, predictor, rows) as load:
            load.flowing()
            for fault, recover in ((redis_server.pause, redis_server.resume),
                                   (redis_server.kill, redis_server.start)):
                subscriber = live_subscriber(cluster.urls[1], admin)
                fault()
                # Told while Redis is still away, not once it is back.
                assert wait_until(lambda s=subscriber: s.ended, "told") == ["EVENTS_MISSED"]
                for n in (0, 1):
                    body = wait_until(lambda n=n: degraded(cluster, n), "degraded")
                    assert body["database"] == "ok" and body["broker"] != "ok", body
                    assert set(body["tasks"].values()) == {"serving"}, body
                load.flowing()  # predictions are still acknowledged, Redis still away
                reviewer.claim()  # its lease's expiry job waits in the outbox
                recover()
                for n in (0, 1):
                    wait_until(lambda n=n: cluster.readyz(n).json()["status"] == "ready",
                               "ready again")
            load.flowing()
        # While the relays run: a job still waiting when the servers stop is sent by the
        # next process to start, not lost, but this checks it is sent without one.
        check_leases_and_outbox(settings, [reviewer])
    assert load.count() > 0
    check_stored_once(settings, load)


TERMINATE = ("SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity "
             "WHERE datname = current_database() AND pid <> pg_backend_pid()")


def test_database_backends_terminated_and_a_server_killed_under_load(
        settings: Settings, env: dict[str, str], example_tasks: dict[str, TaskSpec]) -> None:
    rows = example_inputs(example_tasks["loan_default"], 50)
    predictor = make_key(settings, "predictor", "load")
    with Cluster(env) as cluster:
        reviewers = [Reviewer(cluster.urls, make_key(settings, "reviewer", f"r{n}"))
                     for n in range(2)]
        with Load(cluster.urls, predictor, rows) as load:
            load.flowing()
            for round_ in range(3):
                terminated = database(settings, TERMINATE)
                assert any(r["done"] for r in terminated)  # the servers' and worker's backends
                reviewers[round_ % 2].claim()
                load.flowing()  # acknowledged again after every wave of terminations
            cluster.kill_server(0)
            reviewers[1].claim()
            load.flowing()  # the other server carries on alone
            cluster.restart_server(0)
            reviewers[0].claim()
            load.flowing()
        check_leases_and_outbox(settings, reviewers)  # while the relays run (as above)
    assert load.retries > 0, "no request met a fault: the test proved nothing"
    check_stored_once(settings, load)
