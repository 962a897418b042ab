"""The review queue over GraphQL: thin resolvers handing off to ``review.queue``."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from enum import Enum
from typing import cast

import strawberry
from strawberry.permission import BasePermission
from strawberry.scalars import JSON

from app.access.roles import Role
from app.db.pagination import check_page_size
from app.db.tables import Prediction as PredictionRow
from app.db.tables import ReviewItem as ReviewItemRow
from app.events.topics import ReviewChange
from graphql_schema.context import Info
from graphql_schema.permissions import Allowed
from graphql_schema.types import PageInfo, Prediction, relay_page_info
from review import notices, queue
from review.history import agreement_report

GUARDED: list[type[BasePermission]] = [Allowed]


@strawberry.enum(description="Where a review item stands.")
class ReviewStatus(Enum):
    PENDING = "PENDING"
    CLAIMED = "CLAIMED"
    RESOLVED = "RESOLVED"
    ESCALATED = "ESCALATED"


@strawberry.type(description="A routed prediction in the review queue.")
class ReviewItem:
    id: strawberry.ID
    task: str
    release: int
    status: ReviewStatus
    priority: int
    due_at: datetime
    required_reviews: int
    reviews_done: int
    needs_adjudication: bool
    final_label: str | None
    resolution: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    resolved_at: datetime | None
    prediction_id: strawberry.Private[str]

    @strawberry.field(description="The prediction under review. When the task hides "
                      "explanations from reviewers, pass revealExplanation: true to see them.")
    async def prediction(self, info: Info, reveal_explanation: bool = False) -> Prediction:
        services = info.context.services
        async with services.sessions() as session:
            row = await session.get(PredictionRow, self.prediction_id)
        assert row is not None
        hidden = (services.registry.task(self.task).review.hide_explanation
                  and not reveal_explanation and info.context.caller().role is Role.REVIEWER)
        return Prediction.from_row(row, hide_explanation=hidden)

    @classmethod
    def from_row(cls, r: ReviewItemRow) -> ReviewItem:
        return cls(id=strawberry.ID(r.id), task=r.task, release=r.release_version,
                   status=ReviewStatus(r.status), priority=r.priority, due_at=r.due_at,
                   required_reviews=r.required_reviews, reviews_done=r.reviews_done,
                   needs_adjudication=r.needs_adjudication, final_label=r.final_label,
                   resolution=r.resolution, lease_expires_at=r.lease_expires_at,
                   created_at=r.created_at, resolved_at=r.resolved_at,
                   prediction_id=r.prediction_id)


@strawberry.type(description="An exclusive, expiring hold on a review item.")
class ReviewLease:
    lease_token: str = strawberry.field(description="Pass to submitReview or releaseReview.")
    expires_at: datetime
    item: ReviewItem


@strawberry.type
class ReviewItemEdge:
    cursor: str
    node: ReviewItem


@strawberry.type(description="A page of review items, newest first.")
class ReviewItemConnection:
    edges: list[ReviewItemEdge]
    page_info: PageInfo
    total_count: int


@strawberry.type
class ReviewQuery:
    @strawberry.field(permission_classes=GUARDED, description="Review items, newest first.")
    async def review_items(self, info: Info, task: str | None = None,
                           status: ReviewStatus | None = None, first: int = 50,
                           after: str | None = None) -> ReviewItemConnection:
        services = info.context.services
        check_page_size(first, services.settings.page_size_max)
        if task is not None:
            services.registry.task(task)
        async with services.sessions() as session:
            page = await queue.list_items(session, task, status.value if status else None,
                                          first, after)
        return ReviewItemConnection(
            edges=[ReviewItemEdge(cursor=c, node=ReviewItem.from_row(r))
                   for r, c in zip(page.items, page.cursors, strict=True)],
            total_count=page.total,
            page_info=relay_page_info(page, after))

    @strawberry.field(permission_classes=GUARDED,
                      description="Reviewer agreement: overall (pairwise, Cohen's and Fleiss' "
                      "kappa), per reviewer, per class and per release.")
    async def review_agreement(self, info: Info, task: str | None = None) -> JSON:
        services = info.context.services
        if task is not None:
            services.registry.task(task)
        async with services.sessions() as session:
            report = await agreement_report(session, task)
        return cast(JSON, asdict(report))

    @strawberry.field(permission_classes=GUARDED, description="One review item by id.")
    async def review_item(self, info: Info, id: strawberry.ID) -> ReviewItem:
        async with info.context.services.sessions() as session:
            return ReviewItem.from_row(await queue.get_item(session, id))


@strawberry.type
class ReviewMutation:
    @strawberry.mutation(permission_classes=GUARDED,
                         description="Lease the next item by priority and age, or the named "
                         "one; null when nothing is waiting for you.")
    async def claim_review(self, info: Info, task: str,
                           item_id: strawberry.ID | None = None) -> ReviewLease | None:
        ctx = info.context
        spec = ctx.services.registry.task(task)
        lease = await queue.claim(ctx.services.sessions, task, ctx.caller(),
                                  spec.review.lease_seconds, item_id)
        if lease is None:
            return None
        ctx.services.wake_relay()
        await notices.announce(ctx.services.events, ctx.services.sessions, lease.item,
                               ReviewChange.CLAIMED)
        return ReviewLease(lease_token=lease.token, expires_at=lease.expires_at,
                           item=ReviewItem.from_row(lease.item))

    @strawberry.mutation(permission_classes=GUARDED,
                         description="Label the leased item; agreement resolves, "
                         "disagreement escalates to an adjudicator.")
    async def submit_review(self, info: Info, lease_token: str, label: str,
                            comment: str = "") -> ReviewItem:
        ctx = info.context
        registry = ctx.services.registry
        item = await queue.submit(ctx.services.sessions, lease_token, ctx.caller(), label,
                                  comment, lambda task: registry.task(task).classes)
        await notices.announce(ctx.services.events, ctx.services.sessions, item,
                               ReviewChange.REVIEWED)
        return ReviewItem.from_row(item)

    @strawberry.mutation(permission_classes=GUARDED,
                         description="Give the leased item back to the queue unreviewed.")
    async def release_review(self, info: Info, lease_token: str) -> ReviewItem:
        services = info.context.services
        item = await queue.release(services.sessions, lease_token, info.context.caller().actor)
        await notices.announce(services.events, services.sessions, item, ReviewChange.RELEASED)
        return ReviewItem.from_row(item)
