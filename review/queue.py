"""The review queue: leases, blind multi-review, escalation, resolution.

Every state change is one compare-and-set UPDATE on the item, guarded by ``lease_version``
(incremented on each claim) and, for submissions, the lease token's hash. Two reviewers
can therefore never hold the same item and a stale token can never change it, on SQLite
(one writer) as on PostgreSQL, where a claim also locks its candidate row and skips the
rows other claimers hold, so concurrent claims do not queue behind one another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import case, func, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.access.roles import Principal
from app.audit import log as audit
from app.db.tables import Prediction, Review, ReviewItem, Status, TrainingLabel
from app.db.types import utcnow
from app.errors import (
    BadRequestError,
    LeaseExpiredError,
    NotFoundError,
    ReviewConflictError,
    StaleLeaseError,
)
from app.metrics import LEASE_EXPIRIES, REVIEW_OUTCOMES
from review import leases
from review.consolidation import Consolidation
from review.items import ItemStatus
from review.leases import Lease, token_hash

ESCALATION_PRIORITY_BOOST = 5


class Resolution(StrEnum):
    AGREEMENT = "AGREEMENT"
    ADJUDICATION = "ADJUDICATION"


OPEN_STATUSES = (ItemStatus.PENDING, ItemStatus.CLAIMED, ItemStatus.ESCALATED)


@dataclass(frozen=True)
class QueueCount:
    """How many items of a task wait in one open status, and since when the oldest."""

    task: str
    status: str
    items: int
    oldest: datetime


async def open_item_counts(session: AsyncSession) -> list[QueueCount]:
    """Unresolved items by task and status (one grouped query over the queue index)."""
    rows = await session.exec(
        select(ReviewItem.task, ReviewItem.status, func.count(), func.min(ReviewItem.created_at))
        .where(col(ReviewItem.status).in_(OPEN_STATUSES))
        .group_by(ReviewItem.task, ReviewItem.status))
    return [QueueCount(task, status, int(n), oldest) for task, status, n, oldest in rows.all()]


async def claim(sessions: async_sessionmaker[AsyncSession], task: str, reviewer: Principal,
                lease_seconds: float, item_id: str | None = None) -> Lease | None:
    """Lease the next item by priority and age, or the named one (``review.leases.claim``);
    None only when no item is claimable by this reviewer. A named item that cannot be
    claimed is an error saying why."""
    lease = await leases.claim(sessions, task, reviewer, lease_seconds, item_id)
    if lease is None and item_id is not None:
        await _explain_unclaimable(sessions, task, item_id, reviewer)
    return lease


_audit = leases.audit_item
__all__ = ["Lease", "token_hash"]  # re-exported: callers name them queue.Lease, ...


async def _explain_unclaimable(sessions: async_sessionmaker[AsyncSession], task: str,
                               item_id: str, reviewer: Principal) -> None:
    async with sessions() as session:
        item = await session.get(ReviewItem, item_id)
        reviewed = (await session.exec(select(Review.id).where(
            Review.item_id == item_id, Review.reviewer_id == reviewer.key_id))).first()
    if item is None or item.task != task:
        raise NotFoundError(f"no review item {item_id!r} in task {task!r}")
    if reviewed is not None:
        raise ReviewConflictError(f"you already reviewed item {item_id}; reviews are independent")
    raise BadRequestError(f"item {item_id} is {item.status} and cannot be claimed now")


async def _item_for_token(session: AsyncSession, token: str) -> ReviewItem:
    """The item a lease token holds or last held (expired, swept or not); StaleLeaseError
    when none: never issued, or superseded by a release, a submission or a newer claim."""
    item = (await session.exec(select(ReviewItem).where(
        ReviewItem.lease_token_hash == token_hash(token)))).first()
    if item is None:
        raise StaleLeaseError(
            "this lease is no longer valid (submitted, released, or expired and claimed "
            "again); claim the item anew")
    return item


async def _leased(session: AsyncSession, token: str) -> ReviewItem:
    item = await _item_for_token(session, token)
    expires = item.lease_expires_at
    if expires is None or expires <= utcnow():  # None: swept back, the token's hash kept
        at = f" at {expires}" if expires is not None else ""
        raise LeaseExpiredError(f"the lease on item {item.id} expired{at}; claim it again")
    return item


def _cas(item: ReviewItem) -> Any:
    return update(ReviewItem).where(col(ReviewItem.id) == item.id,
                                    col(ReviewItem.lease_version) == item.lease_version,
                                    col(ReviewItem.lease_token_hash) == item.lease_token_hash)


_NO_LEASE = {"lease_token_hash": None, "lease_holder_id": None, "lease_expires_at": None}


async def release(sessions: async_sessionmaker[AsyncSession], token: str,
                  actor: str) -> ReviewItem:
    """Give the item back to the queue unreviewed."""
    async with sessions() as session, session.begin():
        item = await _leased(session, token)
        back = ItemStatus.ESCALATED if item.needs_adjudication else ItemStatus.PENDING
        result = await session.exec(_cas(item).values(status=back, **_NO_LEASE))
        if result.rowcount != 1:
            raise StaleLeaseError("the lease changed while releasing it; claim the item anew")
        _audit(session, audit.Kind.REVIEW_RELEASED, actor, item,
                     leaseVersion=item.lease_version, status=back.value)
        fresh = await session.get(ReviewItem, item.id, populate_existing=True)
    assert fresh is not None
    return fresh


def _consolidate(item: ReviewItem, labels: list[str], adjudicating: bool) -> Consolidation:
    """The item's next state after one more review (labels: all independent reviews)."""
    if adjudicating:
        return Consolidation(ItemStatus.RESOLVED, resolution=Resolution.ADJUDICATION)
    if len(labels) < item.required_reviews:
        return Consolidation(ItemStatus.PENDING)
    if len(set(labels)) == 1:
        return Consolidation(ItemStatus.RESOLVED, resolution=Resolution.AGREEMENT)
    return Consolidation(ItemStatus.ESCALATED, needs_adjudication=True,
                         priority=item.priority + ESCALATION_PRIORITY_BOOST)


async def submit(sessions: async_sessionmaker[AsyncSession], token: str, reviewer: Principal,
                 label: str, comment: str,
                 classes_of: Callable[[str], Sequence[str]]) -> ReviewItem:
    """Record the reviewer's label; agreement resolves, disagreement escalates, and an
    adjudicator's label decides. All of it, and the resolution, in one transaction.
    ``classes_of`` gives a task's classes, to check the label against."""
    model_label: str | None = None
    try:
        async with sessions() as session, session.begin():
            item = await _leased(session, token)
            if item.lease_holder_id != reviewer.key_id:
                raise StaleLeaseError("this lease belongs to another reviewer")
            classes = classes_of(item.task)
            if label not in classes:
                raise BadRequestError(f"label {label!r} is not one of {', '.join(classes)}")
            adjudicating = item.needs_adjudication
            session.add(Review(item_id=item.id, reviewer_id=reviewer.key_id,
                               reviewer_name=reviewer.name, label=label, comment=comment,
                               adjudication=adjudicating))
            await session.flush()
            labels = list((await session.exec(select(Review.label).where(
                Review.item_id == item.id, col(Review.adjudication).is_(False)))).all())
            change = _consolidate(item, labels, adjudicating)
            if change.status == ItemStatus.RESOLVED:
                change = change.resolved_with(label, utcnow())
                model_label = await _settle(session, item, label)
            result = await session.exec(_cas(item).values(
                reviews_done=len(labels), **_NO_LEASE, **change.columns()))
            if result.rowcount != 1:
                raise StaleLeaseError("the lease changed while submitting; claim the item anew")
            _audit_submission(session, item, reviewer, label, comment, adjudicating,
                                    change)
            fresh = await session.get(ReviewItem, item.id, populate_existing=True)
    except IntegrityError:
        raise ReviewConflictError("you already reviewed this item") from None
    assert fresh is not None
    if model_label is not None:  # resolved, and committed
        outcome = "confirmed" if model_label == label else "overturned"
        REVIEW_OUTCOMES.labels(item.task, outcome).inc()
    return fresh


def _audit_submission(session: AsyncSession, item: ReviewItem, reviewer: Principal,
                      label: str, comment: str, adjudicating: bool,
                      change: Consolidation) -> None:
    """The review, and what it did to the item: resolved it (final label) or escalated it."""
    entries = [audit.Entry(audit.Kind.REVIEW_SUBMITTED, reviewer.actor, "review_item", item.id,
                           {"prediction": item.prediction_id, "reviewer": reviewer.name,
                            "label": label, "comment": comment,
                            "kind": "adjudication" if adjudicating else "review"}, item.task)]
    status = change.status
    if status == ItemStatus.RESOLVED:
        entries.append(audit.Entry(audit.Kind.REVIEW_RESOLVED, reviewer.actor, "review_item",
                                   item.id, {"prediction": item.prediction_id,
                                             "finalLabel": label,
                                             "resolution": change.resolution},
                                   item.task))
    elif status == ItemStatus.ESCALATED:
        entries.append(audit.Entry(audit.Kind.REVIEW_ESCALATED, reviewer.actor, "review_item",
                                   item.id, {"prediction": item.prediction_id}, item.task))
    audit.record(session, entries)


async def _settle(session: AsyncSession, item: ReviewItem, label: str) -> str:
    """The final label becomes the prediction's and a training row; the model's label."""
    prediction = await session.get(Prediction, item.prediction_id)
    assert prediction is not None
    prediction.final_label = label
    prediction.status = Status.REVIEWED
    session.add(prediction)
    learned = await session.exec(select(TrainingLabel.id).where(
        TrainingLabel.prediction_id == item.prediction_id))
    if learned.first() is None:  # else an outcome came first: the truth stays the label
        session.add(TrainingLabel(prediction_id=item.prediction_id, task=item.task,
                                  label=label, source="review"))
    return prediction.label


EXPIRY_ACTOR = "system:review.expire_lease"


def _audit_expired(session: AsyncSession, rows: Sequence[Any]) -> None:
    audit.record(session, [
        audit.Entry(audit.Kind.LEASE_EXPIRED, EXPIRY_ACTOR, "review_item", r.id,
                    {"prediction": r.prediction_id, "leaseVersion": r.lease_version,
                     "status": r.status}, r.task) for r in rows])


def _expired_columns() -> tuple[Any, ...]:
    return (col(ReviewItem.id), col(ReviewItem.task), col(ReviewItem.prediction_id),
            col(ReviewItem.lease_version), col(ReviewItem.status))


async def expire_lease(sessions: async_sessionmaker[AsyncSession], item_id: str,
                       lease_version: int) -> bool:
    """Return one lapsed lease's item to the queue; a no-op when it was already settled."""
    async with sessions() as session, session.begin():
        rows = (await session.exec(_expire().where(
            col(ReviewItem.id) == item_id, col(ReviewItem.lease_version) == lease_version)
            .returning(*_expired_columns()))).all()
        _audit_expired(session, rows)
    _count_expiries([r.task for r in rows])
    return len(rows) == 1


async def expire_leases(sessions: async_sessionmaker[AsyncSession]) -> list[str]:
    """Return every lapsed lease's item to the queue (the periodic safety net); their ids."""
    async with sessions() as session, session.begin():
        rows = (await session.exec(_expire().returning(*_expired_columns()))).all()
        _audit_expired(session, rows)
    _count_expiries([r.task for r in rows])
    return [r.id for r in rows]


def _count_expiries(tasks: list[str]) -> None:
    for task in tasks:
        LEASE_EXPIRIES.labels(task).inc()


def _expire() -> Any:
    """Return lapsed leases' items to the queue. The token's hash stays until the next claim
    replaces it, so that the expired token answers LEASE_EXPIRED rather than LEASE_STALE."""
    back = case((col(ReviewItem.needs_adjudication), ItemStatus.ESCALATED.value),
                else_=ItemStatus.PENDING.value)
    return (update(ReviewItem)
            .where(col(ReviewItem.status) == ItemStatus.CLAIMED,
                   col(ReviewItem.lease_expires_at) <= utcnow())
            .values(status=back, lease_holder_id=None, lease_expires_at=None))
