"""Who may subscribe and for how long, through a real GraphQL client against the real
server: roles and unknown tasks, keys checked at connect and revoked later, subscriptions per
connection, keep-alive pings, and a subscriber that falls a buffer behind."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets
from gql.transport.exceptions import TransportQueryError

from app.events.topics import release_event, releases_topic
from app.settings import Settings
from tests.support.databases import SQLITE_ONLY
from tests.support.documents import PREDICTIONS, RELEASE_EVENTS, REVIEW_EVENTS
from tests.support.server import Api, LiveServer, make_key
from tests.support.subscriber import client, subscribed, take, until, ws_url

PREDICT = """mutation($i: JSON!) { predict(task: "loan_default", input: $i) { id route } }"""
RELEASE = "mutation($t: String!) { releaseReview(leaseToken: $t) { id status } }"


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
            revoked = api("mutation($id: ID!) { revokeApiKey(id: $id) { revokedAt } }",
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
