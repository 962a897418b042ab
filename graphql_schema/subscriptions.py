"""Subscriptions over graphql-transport-ws: thin resolvers over ``app.events.feeds``.

The caller was authenticated when the websocket connected (``graphql_schema.websocket``);
each subscription is checked against the permission table like any other operation."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any

import strawberry

from app.events import feeds
from graphql_schema.context import Info
from graphql_schema.enums import ItemStatus, ReleaseEventKind, ReviewChange
from graphql_schema.permissions import GUARDED
from graphql_schema.predictions import Prediction

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
