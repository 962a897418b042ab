"""Subscriptions over graphql-transport-ws: thin resolvers over ``app.events.feeds``, and the
websocket they travel on: authentication in ``connection_init``, a limit of subscriptions
per connection, and server pings so idle connections stay open through proxies and dead
peers are noticed. Each subscription is checked against the permission table like any
other operation.

Subscriptions are multiplexed (``app.http.shared_streams``): each socket's subscription
starts as any operation does (its own validation, permission, rate and cost checks,
unknown tasks named), then joins the process's shared stream of the same (document,
variables, operation name, visibility), where visibility is what the caller's key changes
in the answer: its role, and its key for roles that see only their own predictions. One
GraphQL execution per event and group renders the ``next`` payload once for every member
socket; an ``EVENTS_MISSED`` end reaches them all."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator
from datetime import datetime, timedelta
from typing import Any

import strawberry
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.subscriptions.protocols.graphql_transport_ws.types import ConnectionInitMessage

from app.db.outage import database_unreachable
from app.errors import ServiceUnavailableError
from app.events import feeds
from app.http import shared_streams
from app.http.authn import Verify
from app.http.shared_streams import SharedStreamHandler
from app.settings import Settings
from graphql_schema.enums import ItemStatus, ReleaseEventKind, ReviewChange, Stage
from graphql_schema.permissions import GUARDED, Context, Info
from graphql_schema.predictions import Prediction

log = logging.getLogger("arbiter.graphql")
CONNECTION_INIT_TIMEOUT = timedelta(seconds=10)
KEY_UNCHECKED_PERIODS = 3  # key-cache periods a socket lives on without its key checked
TRY_AGAIN_LATER = 1013  # the WebSocket close code for a server that cannot serve now


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
    without a valid one the connection is closed with 4403 before any subscription (also
    when the key cannot be checked: the rejection's payload says SERVICE_UNAVAILABLE)."""
    token = _bearer(context.connection_params or {})
    try:
        principal = await verify(token) if token else None
    except Exception as exc:
        if not database_unreachable(exc):
            raise
        log.warning("cannot check a websocket's API key at connect (%r)", exc)
        raise ConnectionRejectionError({"code": ServiceUnavailableError.code}) from None
    if principal is None:
        raise ConnectionRejectionError({"code": "UNAUTHENTICATED"})
    context.principal = principal


class KeepAliveHandler(SharedStreamHandler[Context]):
    """graphql-transport-ws with a ``ping`` every ``keep_alive_interval`` once acknowledged
    (Strawberry pings only on the legacy protocol). Before each ping the connection's key
    is checked again: a revoked key's socket is closed with 4403, ending its subscriptions
    within the keep-alive interval plus the key cache's time. A key that cannot be checked
    (the database is away) keeps its socket for ``ARBITER_KEY_CACHE_SECONDS`` x 3 since its
    last good check, then the socket is closed with 1013 (try again later)."""

    _pinger: asyncio.Task[None] | None = None
    _checked_at = 0.0  # monotonic time of the last check that reached the database

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        await super().handle_connection_init(message)
        if self.connection_acknowledged and self._pinger is None:
            self._checked_at = time.monotonic()
            self._pinger = asyncio.create_task(self._ping())

    async def _ping(self) -> None:
        interval = float(self.view.keep_alive_interval or 15)
        with contextlib.suppress(Exception):  # the socket closed: the handler shuts down
            while True:
                await asyncio.sleep(interval)
                refusal = await self._key_refusal()
                if refusal is not None:
                    await self.websocket.close(code=refusal[0], reason=refusal[1])
                    return
                await self.send_message({"type": "ping"})

    async def _key_refusal(self) -> tuple[int, str] | None:
        """Why the socket must close (close code, reason), or None while the key holds or
        cannot be checked for less than three key-cache periods."""
        token = _bearer(self.context.connection_params or {})
        try:
            valid = token is not None and await self.context.verify(token) is not None
        except Exception as exc:
            unchecked = time.monotonic() - self._checked_at
            settings = self.context.services.settings
            if unchecked <= KEY_UNCHECKED_PERIODS * settings.key_cache_seconds:
                log.warning("cannot check a websocket's API key again (%r); next ping retries",
                            exc)
                return None
            log.warning("closing a websocket whose API key could not be checked for %.0f s "
                        "(%r)", unchecked, exc)
            return TRY_AGAIN_LATER, "API key could not be checked; reconnect later"
        if not valid:
            return 4403, "API key revoked"
        self._checked_at = time.monotonic()
        return None

    async def shutdown(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
        await super().shutdown()


async def _relay(info: Info) -> bool:
    """Serve this subscription from its group's shared stream until it ends (True), or
    return False when not on a websocket operation (the resolver runs its own feed)."""
    caller = info.context.caller()
    visibility = (caller.role, None if caller.reads_everything else caller.key_id)
    # The stream outlives this socket if others share it: it keeps none of the socket.
    shared = dataclasses.replace(info.context, request=None, response=None,
                                 connection_params=None, shared_stream=True)
    return await shared_streams.serve(info.schema, visibility, shared)


_converted = feeds.Recent(Prediction.from_row)  # one GraphQL object per event and process


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _stage(value: str | None) -> Stage | None:
    return Stage(value) if value is not None else None


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
    from_stage: Stage | None
    to_stage: Stage | None
    traffic_percent: float | None
    actor: str | None
    reason: str | None
    at: datetime | None
    job_id: strawberry.ID | None
    status: str | None = strawberry.field(description="The training job's JobStatus, the gate's "
                                          "decision, or the drift verdict, by kind.")
    progress: float | None = strawberry.field(description="Training progress, 0 to 1.")
    message: str | None

    @classmethod
    def from_event(cls, e: dict[str, Any]) -> ReleaseEvent:
        return cls(kind=ReleaseEventKind(e["kind"]), task=e["task"], version=e.get("version"),
                   from_stage=_stage(e.get("fromStage")), to_stage=_stage(e.get("toStage")),
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
        if await _relay(info):
            return
        async for row in feeds.prediction_feed(ctx.services.events, task, ctx.caller(),
                                               only_review, shared_streams.listeners()):
            yield _converted.get(row.id, row)

    @strawberry.subscription(permission_classes=GUARDED,
                             description="Changes of a task's review queue.")
    async def review_events(self, info: Info, task: str) -> AsyncGenerator[ReviewEvent, None]:
        services = info.context.services
        services.registry.task(task)
        if await _relay(info):
            return
        async for event in feeds.review_feed(services.events, task, shared_streams.listeners()):
            yield ReviewEvent.from_event(event)

    @strawberry.subscription(permission_classes=GUARDED, description="Release stage changes, "
                             "training progress and gate decisions of a task.")
    async def release_events(self, info: Info, task: str) -> AsyncGenerator[ReleaseEvent, None]:
        services = info.context.services
        services.registry.task(task)
        if await _relay(info):
            return
        async for event in feeds.release_feed(services.events, task, shared_streams.listeners()):
            yield ReleaseEvent.from_event(event)
