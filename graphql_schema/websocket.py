"""Websockets (graphql-transport-ws only): authentication in ``connection_init``, a limit
of subscriptions per connection, and server pings so idle connections stay open through
proxies and dead peers are noticed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import Any

from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import ConnectionInitMessage

from app.http.authn import Verify
from app.settings import Settings
from graphql_schema.context import Context

log = logging.getLogger("arbiter.graphql")
CONNECTION_INIT_TIMEOUT = timedelta(seconds=10)


def websocket_options(settings: Settings) -> dict[str, Any]:
    """Strawberry view options; the legacy graphql-ws protocol stays off."""
    return {"subscription_protocols": (GRAPHQL_TRANSPORT_WS_PROTOCOL,),
            "keep_alive": True, "keep_alive_interval": settings.ws_keepalive_seconds,
            "max_subscriptions_per_connection": settings.ws_max_subscriptions,
            "connection_init_wait_timeout": CONNECTION_INIT_TIMEOUT}


def _bearer(params: dict[str, Any]) -> str | None:
    header = params.get("Authorization", params.get("authorization"))
    if not isinstance(header, str):
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def authenticate(context: Context, verify: Verify) -> None:
    """The key travels as ``{"Authorization": "Bearer <key>"}`` in ``connection_init``;
    without a valid one the connection is closed with 4403 before any subscription."""
    token = _bearer(context.connection_params or {})
    principal = await verify(token) if token else None
    if principal is None:
        raise ConnectionRejectionError({"code": "UNAUTHENTICATED"})
    context.principal = principal


class KeepAliveHandler(BaseGraphQLTransportWSHandler[Context, None]):
    """graphql-transport-ws with a ``ping`` every ``keep_alive_interval`` once acknowledged
    (Strawberry pings only on the legacy protocol). Before each ping the connection's key
    is checked again: a revoked key's socket is closed with 4403, ending its subscriptions
    within the keep-alive interval plus the key cache's time."""

    _pinger: asyncio.Task[None] | None = None

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        await super().handle_connection_init(message)
        if self.connection_acknowledged and self._pinger is None:
            self._pinger = asyncio.create_task(self._ping())

    async def _ping(self) -> None:
        interval = float(self.view.keep_alive_interval or 15)
        with contextlib.suppress(Exception):  # the socket closed: the handler shuts down
            while True:
                await asyncio.sleep(interval)
                if not await self._key_still_valid():
                    await self.websocket.close(code=4403, reason="API key revoked")
                    return
                await self.send_message({"type": "ping"})

    async def _key_still_valid(self) -> bool:
        """False once the key is revoked; True while it cannot be checked (the database is
        away: the next ping checks again, and the connection is not cut for that)."""
        token = _bearer(self.context.connection_params or {})
        if token is None:
            return False
        try:
            return await self.context.verify(token) is not None
        except Exception as exc:
            log.warning("cannot check a websocket's API key again (%s); next ping retries", exc)
            return True

    async def shutdown(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
        await super().shutdown()
