"""Cost and rate governance over real HTTP: a costly operation is refused before anything
runs, a key over its rate waits (in-process and shared through Redis), a query past its
deadline stops, and an answer over the size cap is replaced by an error."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from app.ml.task import TaskSpec
from app.settings import Settings
from graphql_schema.extensions import rates
from tests.support.documents import BATCH
from tests.support.inputs import example_inputs
from tests.support.processes import scaled  # noqa: F401  (a fixture)
from tests.support.server import Api, LiveServer, make_key
from tests.support.subscriber import ws_url

EXPLAINED = ("predictions(first: 500) { edges { node { id explanation { baseValue "
             "contributions { feature value shap } } } } }")
ABUSIVE = "{ " + " ".join(f"a{i}: {EXPLAINED}" for i in range(30)) + " }"
COUNT = "{ predictions { totalCount } }"


def limited(settings: Settings, **predictor: Any) -> Settings:
    return settings.model_copy(update={"role_limits": {"predictor": predictor}})


@pytest.fixture
def predictor(settings: Settings) -> Iterator[Api]:
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=120) as c:
        yield Api(c, make_key(settings, "predictor", "app"))


def test_the_abusive_query_is_refused_naming_its_cost_and_the_budget(
        predictor: Api, example_tasks: dict[str, TaskSpec]) -> None:
    predictor(BATCH, i=example_inputs(example_tasks["loan_default"], 5))
    refused = predictor(ABUSIVE)
    assert refused["data"] is None
    [error] = refused["errors"]
    extensions = error["extensions"]
    assert extensions["code"] == "QUERY_TOO_COSTLY"
    assert extensions["budget"] == 150_000 and extensions["cost"] > 5 * 150_000
    assert f"cost {extensions['cost']}" in error["message"] and "150000" in error["message"]
    one_page = predictor("{ " + EXPLAINED + " }")  # one full page with explanations is fine
    assert "errors" not in one_page and len(one_page["data"]["predictions"]["edges"]) == 5


def test_a_costly_mutation_is_refused_before_it_writes(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    with LiveServer(limited(settings, query_cost_budget=30)) as server, \
            httpx.Client(base_url=server.url, timeout=120) as client:
        me = Api(client, make_key(settings, "predictor", "app"))
        rows = example_inputs(example_tasks["loan_default"], 10)
        refused = me(BATCH, i=rows)  # 10 rows x (2 + id + route) = 40; 3 rows: 12
        assert refused["errors"][0]["extensions"]["code"] == "QUERY_TOO_COSTLY"
        assert me(COUNT)["data"]["predictions"]["totalCount"] == 0
        assert "errors" not in me(BATCH, i=rows[:3])
        assert me(COUNT)["data"]["predictions"]["totalCount"] == 3


def over_the_rate(me: Api, other: Api) -> None:
    """The key's fourth request within a minute is refused with 429 and Retry-After; the
    other key is not counted with it."""
    answers = [me.post(COUNT) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    refused = answers[-1]
    wait = int(refused.headers["Retry-After"])
    assert 1 <= wait <= 60
    error = refused.json()["errors"][0]
    assert error["extensions"]["code"] == "RATE_LIMITED"
    assert error["extensions"]["retryAfter"] == wait
    assert other.post(COUNT).status_code == 200


def test_a_key_over_its_rate_is_told_when_to_retry(settings: Settings) -> None:
    with LiveServer(limited(settings, rate_limit="3/minute")) as server, \
            httpx.Client(base_url=server.url, timeout=120) as client:
        over_the_rate(Api(client, make_key(settings, "predictor", "app")),
                      Api(client, make_key(settings, "predictor", "other")))
        admin = Api(client, make_key(settings, "admin", "ops"))  # its role's own limits
        assert all(admin.post(COUNT).status_code == 200 for _ in range(5))


@pytest.mark.redis
def test_servers_sharing_redis_count_a_key_together(
        scaled: Settings, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    # A Redis answer slower than 0.25 s makes a server count on its own for a while (by
    # design); a loaded machine must not turn that on here.
    monkeypatch.setattr(rates, "REDIS_TIMEOUT_SECONDS", 5.0)
    shared = limited(scaled, rate_limit="3/minute")
    key, other = (make_key(scaled, "predictor", name) for name in ("app", "other"))
    with LiveServer(shared) as a, LiveServer(shared) as b, \
            httpx.Client(base_url=a.url, timeout=120) as on_a, \
            httpx.Client(base_url=b.url, timeout=120) as on_b:
        assert Api(on_a, key).post(COUNT).status_code == 200
        assert Api(on_a, key).post(COUNT).status_code == 200
        over = [Api(on_b, key).post(COUNT).status_code for _ in range(2)]
        assert over == [200, 429]  # the third on b was the key's third overall
        assert Api(on_b, other).post(COUNT).status_code == 200


def test_a_query_past_its_deadline_stops_and_mutations_run_to_the_end(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    with LiveServer(limited(settings, deadline_seconds=1e-6)) as server, \
            httpx.Client(base_url=server.url, timeout=120) as client:
        me = Api(client, make_key(settings, "predictor", "app"))
        stored = me(BATCH, i=example_inputs(example_tasks["loan_default"], 3))
        assert len(stored["data"]["predictBatch"]) == 3
        stopped = me(COUNT)
        assert stopped["data"] is None
        assert stopped["errors"][0]["extensions"]["code"] == "DEADLINE_EXCEEDED"
        admin = Api(client, make_key(settings, "admin", "ops"))
        assert admin(COUNT)["data"]["predictions"]["totalCount"] == 3


def test_a_websocket_query_past_its_deadline_is_answered_and_frees_its_slot(
        settings: Settings) -> None:
    """Over graphql-transport-ws too: the query ends with DEADLINE_EXCEEDED and `complete`
    (it used to end without a word, its operation id still taken)."""
    async def run(url: str, key: str) -> list[dict[str, Any]]:
        async with websockets.connect(ws_url(url), subprotocols=["graphql-transport-ws"]) as ws:
            await ws.send(json.dumps({"type": "connection_init",
                                      "payload": {"Authorization": f"Bearer {key}"}}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            seen = []
            for _ in range(2):  # the same operation id again: the first one's slot is free
                await ws.send(json.dumps({"id": "1", "type": "subscribe",
                                          "payload": {"query": COUNT}}))
                seen += [json.loads(await asyncio.wait_for(ws.recv(), 60)) for _ in range(2)]
            return seen

    with LiveServer(limited(settings, deadline_seconds=1e-6)) as server:
        seen = asyncio.run(run(server.url, make_key(settings, "predictor", "app")))
    assert [m["type"] for m in seen] == ["next", "complete"] * 2, seen
    for answer in seen[::2]:
        assert answer["payload"]["errors"][0]["extensions"]["code"] == "DEADLINE_EXCEEDED"


def test_an_answer_over_the_size_cap_is_replaced_by_an_error(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    with LiveServer(limited(settings, max_response_bytes=2000)) as server, \
            httpx.Client(base_url=server.url, timeout=120) as client:
        me = Api(client, make_key(settings, "predictor", "app"))
        me(BATCH, i=example_inputs(example_tasks["loan_default"], 20))
        assert "errors" not in me(COUNT)
        big = me("{ " + EXPLAINED + " }")
        assert big["data"] is None
        error = big["errors"][0]
        assert error["extensions"]["code"] == "RESPONSE_TOO_LARGE"
        assert error["extensions"]["cap"] == 2000 and error["extensions"]["bytes"] > 2000
