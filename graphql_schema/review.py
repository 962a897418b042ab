"""The review queue over GraphQL: thin resolvers handing off to ``review.desk`` (claims,
reviews, releases: committed and announced) and ``review.queue`` (reads)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import cast

import strawberry
from strawberry.scalars import JSON

from app.db.engine import read
from app.db.pagination import check_page_size
from app.db.tables import ReviewItem as ReviewItemRow
from graphql_schema.context import Info
from graphql_schema.enums import ItemStatus
from graphql_schema.permissions import GUARDED
from graphql_schema.predictions import Prediction
from graphql_schema.relay import Connection
from review import desk, queue
from review.history import agreement_report


@strawberry.type(description="A routed prediction in the review queue.")
class ReviewItem:
    id: strawberry.ID
    task: str
    release: int
    status: ItemStatus
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
    row: strawberry.Private[ReviewItemRow]

    @strawberry.field(description="The prediction under review. When the task hides "
                      "explanations from reviewers, pass revealExplanation: true to see them.")
    async def prediction(self, info: Info, reveal_explanation: bool = False) -> Prediction:
        services = info.context.services
        row = await read(services.sessions, desk.item_prediction, self.row)
        hidden = desk.explanation_hidden(services.registry.task(self.task),
                                         info.context.caller().role, reveal_explanation)
        return Prediction.from_row(row, hide_explanation=hidden)

    @classmethod
    def from_row(cls, r: ReviewItemRow) -> ReviewItem:
        return cls(id=strawberry.ID(r.id), task=r.task, release=r.release_version,
                   status=ItemStatus(r.status), priority=r.priority, due_at=r.due_at,
                   required_reviews=r.required_reviews, reviews_done=r.reviews_done,
                   needs_adjudication=r.needs_adjudication, final_label=r.final_label,
                   resolution=r.resolution, lease_expires_at=r.lease_expires_at,
                   created_at=r.created_at, resolved_at=r.resolved_at, row=r)


@strawberry.type(description="An exclusive, expiring hold on a review item.")
class ReviewLease:
    lease_token: str = strawberry.field(description="Pass to submitReview or releaseReview.")
    expires_at: datetime
    item: ReviewItem


@strawberry.type(description="A page of review items, newest first.")
class ReviewItemConnection(Connection[ReviewItem]):
    pass


@strawberry.type
class ReviewQuery:
    @strawberry.field(permission_classes=GUARDED, description="Review items, newest first.")
    async def review_items(self, info: Info, task: str | None = None,
                           status: ItemStatus | None = None, first: int = 50,
                           after: str | None = None) -> ReviewItemConnection:
        services = info.context.services
        check_page_size(first, services.settings.page_size_max)
        if task is not None:
            services.registry.task(task)
        page = await read(services.sessions, queue.list_items, task, status, first, after)
        return ReviewItemConnection.of(page, after, ReviewItem.from_row)

    @strawberry.field(permission_classes=GUARDED,
                      description="Reviewer agreement: overall (pairwise, Cohen's and Fleiss' "
                      "kappa), per reviewer, per class and per release.")
    async def review_agreement(self, info: Info, task: str | None = None) -> JSON:
        services = info.context.services
        if task is not None:
            services.registry.task(task)
        return cast(JSON, asdict(await read(services.sessions, agreement_report, task)))

    @strawberry.field(permission_classes=GUARDED, description="One review item by id.")
    async def review_item(self, info: Info, id: strawberry.ID) -> ReviewItem:
        return ReviewItem.from_row(await read(info.context.services.sessions, queue.get_item, id))


@strawberry.type
class ReviewMutation:
    @strawberry.mutation(permission_classes=GUARDED,
                         description="Lease the next item by priority and age, or the named "
                         "one; null when nothing is waiting for you.")
    async def claim_review(self, info: Info, task: str,
                           item_id: strawberry.ID | None = None) -> ReviewLease | None:
        ctx = info.context
        lease = await desk.claim(ctx.services, ctx.services.registry.task(task), ctx.caller(),
                                 item_id)
        if lease is None:
            return None
        return ReviewLease(lease_token=lease.token, expires_at=lease.expires_at,
                           item=ReviewItem.from_row(lease.item))

    @strawberry.mutation(permission_classes=GUARDED,
                         description="Label the leased item; agreement resolves, "
                         "disagreement escalates to an adjudicator.")
    async def submit_review(self, info: Info, lease_token: str, label: str,
                            comment: str = "") -> ReviewItem:
        ctx = info.context
        registry = ctx.services.registry
        item = await desk.submit(ctx.services, lease_token, ctx.caller(), label, comment,
                                 lambda task: registry.task(task).classes)
        return ReviewItem.from_row(item)

    @strawberry.mutation(permission_classes=GUARDED,
                         description="Give the leased item back to the queue unreviewed.")
    async def release_review(self, info: Info, lease_token: str) -> ReviewItem:
        ctx = info.context
        return ReviewItem.from_row(await desk.release(ctx.services, lease_token,
                                                      ctx.caller().actor))
