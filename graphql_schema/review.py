"""The review queue over GraphQL: thin resolvers handing off to ``review.desk`` (claims,
reviews, releases: committed and announced) and ``review.items`` (reads)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import cast

import strawberry
from strawberry.scalars import JSON

from app.db.engine import read
from app.db.pagination import check_page_size
from app.db.tables import ReviewItem as ReviewItemRow
from graphql_schema.enums import ItemStatus, Resolution
from graphql_schema.permissions import GUARDED, Info
from graphql_schema.predictions import Prediction
from graphql_schema.relay import Connection
from review import agreement as stats
from review import desk, items
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
    resolution: Resolution | None
    lease_expires_at: datetime | None
    created_at: datetime
    resolved_at: datetime | None
    row: strawberry.Private[ReviewItemRow]

    @strawberry.field(description="The prediction under review. When the task hides "
                      "explanations from reviewers, pass revealExplanation: true to see them.")
    async def prediction(self, info: Info, reveal_explanation: bool = False) -> Prediction:
        services = info.context.services
        row = await read(services.sessions, desk.item_prediction, self.row)
        hidden = await read(services.sessions, desk.explanation_hidden,
                            services.registry.task(self.task), self.row,
                            info.context.caller().role, reveal_explanation)
        return Prediction.from_row(row, hide_explanation=hidden)

    @classmethod
    def from_row(cls, r: ReviewItemRow) -> ReviewItem:
        return cls(id=strawberry.ID(r.id), task=r.task, release=r.release_version,
                   status=ItemStatus(r.status), priority=r.priority, due_at=r.due_at,
                   required_reviews=r.required_reviews, reviews_done=r.reviews_done,
                   needs_adjudication=r.needs_adjudication, final_label=r.final_label,
                   resolution=Resolution(r.resolution) if r.resolution else None,
                   lease_expires_at=r.lease_expires_at,
                   created_at=r.created_at, resolved_at=r.resolved_at, row=r)


@strawberry.type(description="An exclusive, expiring hold on a review item.")
class ReviewLease:
    lease_token: str = strawberry.field(description="Pass to submitReview or releaseReview.")
    expires_at: datetime
    item: ReviewItem


@strawberry.type(description="A page of review items, newest first.")
class ReviewItemConnection(Connection[ReviewItem]):
    pass


@strawberry.type(description="Fleiss' kappa over the items with exactly ratersPerItem "
                 "independent reviews.")
class FleissKappa:
    raters_per_item: int
    items: int
    kappa: float | None

    @classmethod
    def of(cls, f: stats.FleissKappa) -> FleissKappa:
        return cls(raters_per_item=f.raters_per_item, items=f.items, kappa=f.kappa)


@strawberry.type(description="Agreement between independent reviewers over the items with two "
                 "or more reviews (adjudications never count). Undefined rates are null.")
class OverallAgreement:
    items: int = strawberry.field(description="Items with at least two independent reviews.")
    pairs: int = strawberry.field(description="Pairs of independent reviews of the same item.")
    pairwise_agreement: float | None = strawberry.field(description="Agreeing pairs / pairs.")
    cohen_items: int = strawberry.field(description="Items with exactly two independent "
                                        "reviews, those Cohen's kappa is taken over.")
    cohen_kappa: float | None
    fleiss: FleissKappa | None = strawberry.field(
        description="The group of fleissGroups with the most items.")
    fleiss_groups: list[FleissKappa] = strawberry.field(
        description="One per number of reviews per item, ascending.")

    @classmethod
    def of(cls, o: stats.OverallAgreement) -> OverallAgreement:
        return cls(items=o.items, pairs=o.pairs, pairwise_agreement=o.pairwise_agreement,
                   cohen_items=o.cohen_items, cohen_kappa=o.cohen_kappa,
                   fleiss=FleissKappa.of(o.fleiss) if o.fleiss else None,
                   fleiss_groups=[FleissKappa.of(g) for g in o.fleiss_groups])


@strawberry.type(description="How one reviewer's independent reviews compare with final "
                 "labels, their peers and the model.")
class ReviewerAgreement:
    reviewer: str
    reviews: int = strawberry.field(description="Independent reviews.")
    adjudications: int
    resolved_reviews: int = strawberry.field(
        description="Independent reviews of items that have a final label.")
    final_agreement: float | None
    peer_pairs: int
    peer_agreement: float | None
    overturn_rate: float | None = strawberry.field(
        description="Share of independent reviews whose label differs from the model's.")


@strawberry.type(description="Resolved items of one final label: the model's accuracy and "
                 "how the reviewers agreed.")
class ClassAgreement:
    label: str
    items: int
    model_accuracy: float
    reviews: int
    final_agreement: float | None
    pairs: int
    pairwise_agreement: float | None


@strawberry.type(description="Items one release predicted: how often reviewers overturned "
                 "it and agreed with each other.")
class ReleaseAgreement:
    release: int
    items: int
    reviews: int
    overturn_rate: float | None
    resolved_items: int
    final_overturn_rate: float | None = strawberry.field(
        description="Share of resolved items whose final label differs from the model's.")
    pairs: int
    pairwise_agreement: float | None


@strawberry.type(description="Reviewer agreement: overall, per reviewer, per class (final "
                 "label) and per release.")
class ReviewAgreement:
    overall: OverallAgreement
    reviewers: list[ReviewerAgreement]
    classes: list[ClassAgreement]
    releases: list[ReleaseAgreement]

    @classmethod
    def of(cls, r: stats.AgreementReport) -> ReviewAgreement:
        return cls(overall=OverallAgreement.of(r.overall),
                   reviewers=[ReviewerAgreement(**asdict(x)) for x in r.reviewers],
                   classes=[ClassAgreement(**asdict(x)) for x in r.classes],
                   releases=[ReleaseAgreement(**asdict(x)) for x in r.releases])


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
        page = await read(services.sessions, items.list_items, task, status, first, after)
        return ReviewItemConnection.of(page, after, ReviewItem.from_row)

    @strawberry.field(permission_classes=GUARDED,
                      description="Reviewer agreement: overall (pairwise, Cohen's and Fleiss' "
                      "kappa), per reviewer, per class and per release.")
    async def review_agreement(self, info: Info, task: str | None = None) -> ReviewAgreement:
        return ReviewAgreement.of(await _agreement(info, task))

    @strawberry.field(permission_classes=GUARDED,
                      deprecation_reason="Use reviewAgreement, typed with camelCase fields; "
                      "this snake_case JSON copy of it goes in the next release.",
                      description="reviewAgreement as snake_case JSON (the old spelling).")
    async def review_agreement_json(self, info: Info, task: str | None = None) -> JSON:
        return cast(JSON, asdict(await _agreement(info, task)))

    @strawberry.field(permission_classes=GUARDED, description="One review item by id.")
    async def review_item(self, info: Info, id: strawberry.ID) -> ReviewItem:
        return ReviewItem.from_row(await read(info.context.services.sessions, items.get_item, id))


async def _agreement(info: Info, task: str | None) -> stats.AgreementReport:
    services = info.context.services
    if task is not None:
        services.registry.task(task)
    return await read(services.sessions, agreement_report, task)


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
