"""A real GraphQL subscriber for tests: gql over websockets (graphql-transport-ws)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from gql import Client, GraphQLRequest
from gql.transport.websockets import WebsocketsTransport

from tests.support.server import LiveServer

WAIT_SECONDS = 60


def ws_url(http_url: str) -> str:
    """The server's GraphQL websocket URL."""
    return http_url.replace("http://", "ws://", 1) + "/graphql"


def client(http_url: str, key: str, **transport: Any) -> Client:
    """A gql client that sends the key in ``connection_init`` as the API asks."""
    return Client(transport=WebsocketsTransport(
        url=ws_url(http_url), init_payload={"Authorization": f"Bearer {key}"},
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL], **transport))


async def take(session: Any, query: str, n: int, **variables: Any) -> list[dict[str, Any]]:
    """The first ``n`` payloads of a subscription, then unsubscribe."""
    results: list[dict[str, Any]] = []
    request = GraphQLRequest(query, variable_values=variables)
    async for result in session.subscribe(request):
        results.append(result)
        if len(results) == n:
            break
    return results


async def follow(session: Any, query: str, sink: list[dict[str, Any]],
                 **variables: Any) -> None:
    """Append every payload of a subscription to ``sink`` until cancelled."""
    async for result in session.subscribe(GraphQLRequest(query, variable_values=variables)):
        sink.append(result)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for a condition another process or thread makes true (no timing asserted)."""
    for _ in range(WAIT_SECONDS * 20):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"gave up waiting: {what}")


async def subscribed(server: LiveServer, n: int) -> None:
    """Wait until ``n`` subscriptions are live on the server's bus."""
    bus = server.services.events
    await until(lambda: bus.subscribers() >= n, f"{n} subscribers on the server")
