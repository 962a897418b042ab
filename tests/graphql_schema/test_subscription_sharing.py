"""Multiplexed subscriptions against the real server (in-process bus on SQLite; Redis on
PostgreSQL): sockets with the same subscription and visibility share one stream and each
receive every event once, in order; what one role or key may see never reaches another
group; a socket that stops reading is cut off alone while the others get every event."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from app.access.pii import REDACTED
from app.events.topics import release_event, releases_topic
from app.ml.task import TaskSpec
from app.settings import Settings
from tests.support.documents import BATCH, RELEASE_EVENTS
from tests.support.inputs import example_inputs
from tests.support.redis_server import REDIS_URL, require_redis
from tests.support.server import Api, LiveServer, make_key
from tests.support.subscriber import subscribed, until, ws_url

WATCH = """subscription($task: String!) { predictions(task: $task) {
  id input explanationUrl explanation { baseValue } } }"""


@pytest.fixture
def served(request: pytest.FixtureRequest, settings: Settings) -> Iterator[LiveServer]:
    """The server; on PostgreSQL scaled out as in production: events travel over Redis."""
    overrides: dict[str, Any] = dict(getattr(request, "param", {}))
    if not settings.database_url.startswith("sqlite"):
        require_redis()
        overrides |= {"redis_url": REDIS_URL,
                      "redis_namespace": f"sharing-{uuid.uuid4().hex[:8]}"}
    with LiveServer(settings.model_copy(update=overrides)) as server:
        connected = getattr(server.services.events, "connected", None)
        for _ in range(600):  # Redis: until the listener holds its subscription
            if connected is None or connected.is_set():
                break
            time.sleep(0.05)
        yield server


class StalledSocket:
    """A websocket client written out by hand that stops reading once subscribed, with a
    small receive buffer (no autotuning to tens of MB): the server's sends to it block.
    ``read`` then takes every message the server sent, until the subscription ends."""

    def __init__(self, url: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        self.file = self.sock.makefile("rb")
        self.sock.sendall(b"GET /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          b"Sec-WebSocket-Version: 13\r\n"
                          b"Sec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n")
        while self.file.readline() not in (b"\r\n", b""):
            pass  # the 101 answer's headers

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode()  # short: a 7- or 16-bit length, masked
        size = (bytes([0x80 | len(data)]) if len(data) < 126
                else bytes([0x80 | 126]) + len(data).to_bytes(2, "big"))
        mask = b"\x01\x02\x03\x04"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(b"\x81" + size + mask + masked)

    def receive(self) -> dict[str, Any]:
        head = self.file.read(2)
        size = head[1] & 0x7F
        if size == 126:
            size = int.from_bytes(self.file.read(2), "big")
        elif size == 127:
            size = int.from_bytes(self.file.read(8), "big")
        return dict(json.loads(self.file.read(size)))

    def subscribe(self, key: str, query: str) -> None:
        self.send({"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}})
        assert self.receive() == {"type": "connection_ack"}
        self.send({"type": "subscribe", "id": "s", "payload": {"query": query}})

    def read(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Its payloads, and how it ended (the error ``next``, then ``complete``)."""
        payloads, ended = [], []
        while True:
            message = self.receive()
            if message["type"] == "next" and "errors" not in message["payload"]:
                payloads.append(message["payload"]["data"])
            elif message["type"] != "ping":
                ended.append(message)
                if message["type"] == "complete":
                    self.sock.close()
                    return payloads, ended


class Socket:
    """One graphql-transport-ws connection with one subscription; ``read`` collects."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.payloads: list[dict[str, Any]] = []
        self.ended: list[dict[str, Any]] = []  # its errors, then the complete message

    @classmethod
    async def open(cls, url: str, key: str, query: str, **variables: Any) -> Socket:
        ws = await websockets.connect(ws_url(url), subprotocols=["graphql-transport-ws"],
                                      max_size=2**24, ping_interval=None)
        await ws.send(json.dumps({"type": "connection_init",
                                  "payload": {"Authorization": f"Bearer {key}"}}))
        assert json.loads(await ws.recv()) == {"type": "connection_ack"}
        await ws.send(json.dumps({"type": "subscribe", "id": "s", "payload": {
            "query": query, "variables": variables}}))
        return cls(ws)

    async def read(self) -> None:
        """Collect payloads until the subscription completes or the socket closes."""
        async for raw in self.ws:
            message = json.loads(raw)
            if message["type"] == "ping":
                await self.ws.send('{"type": "pong"}')
            elif message["type"] == "next" and "errors" not in message["payload"]:
                self.payloads.append(message["payload"]["data"])
            elif message["type"] in ("next", "error", "complete"):
                self.ended.append(message)
                if message["type"] != "next":
                    return


def _predict(url: str, key: str, rows: list[dict[str, Any]]) -> list[str]:
    with httpx.Client(base_url=url, timeout=120) as http:
        return [p["id"] for p in Api(http, key)(BATCH, i=rows)["data"]["predictBatch"]]


def test_sockets_sharing_a_subscription_each_receive_every_event_once(
        served: LiveServer, settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    keys = [make_key(settings, "admin", f"ops-{n}") for n in range(3)]  # admins see alike
    predictor = make_key(settings, "predictor", "app")
    rows = example_inputs(example_tasks["loan_default"], 12)
    bus = served.services.events

    async def scenario() -> None:
        sockets = [await Socket.open(served.url, keys[n % 3], WATCH, task="loan_default")
                   for n in range(6)]
        readers = [asyncio.create_task(s.read()) for s in sockets]
        await subscribed(served, 6)
        assert bus.feeds() == 1  # one stream for the six sockets
        stored = await asyncio.to_thread(_predict, served.url, predictor, rows[:6])
        stored += await asyncio.to_thread(_predict, served.url, predictor, rows[6:])
        await until(lambda: all(len(s.payloads) >= len(stored) for s in sockets),
                    "every event on every socket")
        for each in sockets:
            await each.ws.close()
        await asyncio.gather(*readers)
        for each in sockets:  # each exactly once, in the order stored
            assert [p["predictions"]["id"] for p in each.payloads] == stored
            assert each.ended == []
        first = sockets[0].payloads
        assert all(s.payloads == first for s in sockets)  # the same answer everywhere
        await until(lambda: bus.subscribers() == 0 and bus.feeds() == 0,
                    "the shared stream ends with its last socket")

    asyncio.run(scenario())


def test_what_a_role_or_key_may_see_never_reaches_another_group(
        served: LiveServer, settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    admins = [make_key(settings, "admin", "ops"), make_key(settings, "admin", "ops-2")]
    auditor = make_key(settings, "auditor", "audit")
    mine = make_key(settings, "predictor", "mine")
    theirs = make_key(settings, "predictor", "theirs")
    rows = example_inputs(example_tasks["loan_default"], 8)
    bus = served.services.events

    async def scenario() -> None:
        keys = [*admins, auditor, mine, theirs]
        sockets = [await Socket.open(served.url, key, WATCH, task="loan_default")
                   for key in keys]
        readers = [asyncio.create_task(s.read()) for s in sockets]
        await subscribed(served, len(keys))
        assert bus.feeds() == 4  # admins share; the auditor and each predictor do not
        own = await asyncio.to_thread(_predict, served.url, mine, rows[:4])
        other = await asyncio.to_thread(_predict, served.url, theirs, rows[4:])
        await until(lambda: all(len(s.payloads) >= 8 for s in sockets[:3])
                    and len(sockets[3].payloads) >= 4 and len(sockets[4].payloads) >= 4,
                    "every event its subscriber may see")
        for each in sockets:
            await each.ws.close()
        await asyncio.gather(*readers)
        seen = [[p["predictions"] for p in s.payloads] for s in sockets]
        for everything in seen[:3]:  # readers: every prediction, personal values and all
            assert [p["id"] for p in everything] == own + other
            assert all(p["input"]["income"] != REDACTED for p in everything)
            assert all(p["explanationUrl"] is not None for p in everything)
        for predictions, ids in ((seen[3], own), (seen[4], other)):  # each only its own
            assert [p["id"] for p in predictions] == ids
            assert all(p["input"]["income"] == REDACTED for p in predictions)
            assert all(p["explanationUrl"] is None for p in predictions)
            assert all(p["explanation"]["baseValue"] is not None for p in predictions)

    asyncio.run(scenario())


@pytest.mark.parametrize("served", [{"subscription_buffer": 8}], indirect=True)
def test_a_socket_that_stops_reading_is_cut_off_alone(
        served: LiveServer, settings: Settings) -> None:
    admin = make_key(settings, "admin", "ops")
    bus = served.services.events
    events = 120  # of 64 KB each: far more than the stalled socket's buffers hold
    text = "x" * 2**16

    async def scenario() -> None:
        stalled = StalledSocket(served.url)
        stalled.subscribe(admin, RELEASE_EVENTS)
        readers = [await Socket.open(served.url, admin, RELEASE_EVENTS) for _ in range(3)]
        reading = [asyncio.create_task(s.read()) for s in readers]
        await subscribed(served, 4)
        assert bus.feeds() == 1
        for n in range(events):  # one at a time: each reaches every reading socket first
            bus.publish_sync(releases_topic("loan_default"), release_event(
                "TRAINING_PROGRESS", "loan_default", version=n, message=text))
            await until(lambda n=n: all(len(s.payloads) > n for s in readers),
                        f"event {n} on the reading sockets")
        for each in readers:
            assert [p["releaseEvents"]["version"] for p in each.payloads] == list(
                range(events))
            assert each.ended == []
        # Only now does it read: what it had, then the cut-off.
        payloads, ended = await asyncio.to_thread(stalled.read)
        versions = [p["releaseEvents"]["version"] for p in payloads]
        assert versions == list(range(len(versions))) and len(versions) < events
        error = ended[0]["payload"]["errors"][0]
        assert error["extensions"]["code"] == "SUBSCRIBER_TOO_SLOW"
        assert error["extensions"]["buffer"] == 8
        assert ended[-1]["type"] == "complete"
        await until(lambda: bus.subscribers() == 3, "the stalled socket left its group")
        for each in readers:
            await each.ws.close()
        await asyncio.gather(*reading)

    asyncio.run(scenario())
