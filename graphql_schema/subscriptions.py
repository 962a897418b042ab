"""Subscriptions over graphql-transport-ws: thin resolvers over ``app.events.feeds``, and the
websocket they travel on: authentication in ``connection_init``, a limit of subscriptions
per connection, and server pings so idle connections stay open through proxies and dead
peers are noticed. Each subscription is checked against the permission table like any
other operation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from datetime import datetime, timedelta
from typing import Any

import strawberry
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import ConnectionInitMessage

from app.events import feeds
from app.http.authn import Verify
from app.settings import Settings
from graphql_schema.context import Context, Info
from graphql_schema.enums import ItemStatus, ReleaseEventKind, ReviewChange
from graphql_schema.permissions import GUARDED
from graphql_schema.predictions import Prediction

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


_converted = feeds.Recent(Prediction.from_row)  # one GraphQL object per event and process


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


@strawberry.type(description="A change of one review item, after it was committed.")
class ReviewEvent:
    item_id: strawberry.ID
    prediction_id: strawberry.ID
    task: str
    change: ReviewChange
    status: ItemStatus
    priority: int
    reviews_done: int
    required_reviews: int
    final_label: str | None
    waiting: int | None = strawberry.field(
        description="Items of the task waiting for a reviewer after this change.")
    at: datetime

    @classmethod
    def from_event(cls, e: dict[str, Any]) -> ReviewEvent:
        return cls(item_id=strawberry.ID(e["itemId"]), prediction_id=strawberry.ID(
            e["predictionId"]), task=e["task"], change=ReviewChange(e["change"]),
            status=ItemStatus(e["status"]), priority=e["priority"],
            reviews_done=e["reviewsDone"], required_reviews=e["requiredReviews"],
            final_label=e["finalLabel"], waiting=e["waiting"],
            at=datetime.fromisoformat(e["at"]))


@strawberry.type(description="A release stage change, training progress, or gate decision.")
class ReleaseEvent:
    kind: ReleaseEventKind
    task: str
    version: int | None
    from_stage: str | None
    to_stage: str | None
    traffic_percent: float | None
    actor: str | None
    reason: str | None
    at: datetime | None
    job_id: str | None
    status: str | None
    progress: float | None = strawberry.field(description="Training progress, 0 to 1.")
    message: str | None

    @classmethod
    def from_event(cls, e: dict[str, Any]) -> ReleaseEvent:
        return cls(kind=ReleaseEventKind(e["kind"]), task=e["task"], version=e.get("version"),
                   from_stage=e.get("fromStage"), to_stage=e.get("toStage"),
                   traffic_percent=e.get("trafficPercent"), actor=e.get("actor"),
                   reason=e.get("reason"), at=_time(e.get("at")), job_id=e.get("jobId"),
                   status=e.get("status"), progress=e.get("progress"),
                   message=e.get("message"))


@strawberry.type
class Subscription:
    @strawberry.subscription(permission_classes=GUARDED, description="Predictions of a task "
                             "as they are stored (onlyReview: those routed to review); "
                             "predictors see their own.")
    async def predictions(self, info: Info, task: str,
                          only_review: bool = False) -> AsyncGenerator[Prediction, None]:
        ctx = info.context
        ctx.services.registry.task(task)  # an unknown task is an error, not silence
        async for row in feeds.prediction_feed(ctx.services.events, task, ctx.caller(),
                                               only_review):
            yield _converted.get(row.id, row)

    @strawberry.subscription(permission_classes=GUARDED,
                             description="Changes of a task's review queue.")
    async def review_events(self, info: Info, task: str) -> AsyncGenerator[ReviewEvent, None]:
        services = info.context.services
        services.registry.task(task)
        async for event in feeds.review_feed(services.events, task):
            yield ReviewEvent.from_event(event)

    @strawberry.subscription(permission_classes=GUARDED, description="Release stage changes, "
                             "training progress and gate decisions of a task.")
    async def release_events(self, info: Info, task: str) -> AsyncGenerator[ReleaseEvent, None]:
        services = info.context.services
        services.registry.task(task)
        async for event in feeds.release_feed(services.events, task):
            yield ReleaseEvent.from_event(event)
