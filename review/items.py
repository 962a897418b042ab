"""Review items: their statuses, opening one for a prediction routed to review, how many
wait for a reviewer, and reading them."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db.pagination import Page, paginate
from app.db.rows import built
from app.db.tables import Prediction, ReviewItem
from app.errors import NotFoundError
from app.ml.task import ReviewPolicy


class ItemStatus(StrEnum):
    """Where a review item stands in the queue."""

    PENDING = "PENDING"
    CLAIMED = "CLAIMED"
    RESOLVED = "RESOLVED"
    ESCALATED = "ESCALATED"


class ReviewKind(StrEnum):
    """An independent review, or an adjudication that decided a disagreement."""

    REVIEW = "review"
    ADJUDICATION = "adjudication"


# How strongly each reason suggests the model may be wrong: the queue serves higher first.
REASON_PRIORITY = {
    "MEMBER_FAILURE": 3,
    "OUT_OF_DISTRIBUTION": 3,
    "LOW_CONFIDENCE": 2,
    "MEMBER_DISAGREEMENT": 2,
    # the class could not be certified: says nothing of this row, more than a random draw
    "NOT_CERTIFIED": 1,
    "AUDIT_SAMPLE": 0,
}


def open_review_item(policy: ReviewPolicy, p: Prediction) -> ReviewItem:
    """The review item of a prediction routed to REVIEW, under its release's policy."""
    return built(ReviewItem, {
        "id": str(uuid.uuid4()),
        "prediction_id": p.id,
        "task": p.task,
        "release_version": p.release_version,
        "status": ItemStatus.PENDING,
        "priority": sum(REASON_PRIORITY.get(r["code"], 1) for r in p.reasons),
        "due_at": p.created_at + timedelta(hours=policy.sla_hours),
        "created_at": p.created_at,
        "required_reviews": policy.required_reviews,
    })


async def waiting_by_task(session: AsyncSession, tasks: Collection[str]) -> dict[str, int]:
    """Items waiting for a reviewer (pending or escalated) in each of ``tasks``, in one
    grouped query over the queue index; no query when ``tasks`` is empty."""
    if not tasks:
        return {}
    query = (select(ReviewItem.task, func.count())
             .where(col(ReviewItem.task).in_(tasks),
                    col(ReviewItem.status).in_([ItemStatus.PENDING, ItemStatus.ESCALATED]))
             .group_by(ReviewItem.task))
    counts = {task: int(n) for task, n in (await session.exec(query)).all()}
    return {task: counts.get(task, 0) for task in tasks}


async def list_items(session: AsyncSession, task: str | None, status: str | None, first: int,
                     after: str | None) -> Page[ReviewItem]:
    """Review items, newest first."""
    filters: list[Any] = []
    if task is not None:
        filters.append(ReviewItem.task == task)
    if status is not None:
        filters.append(ReviewItem.status == status)
    return await paginate(session, ReviewItem, filters, first, after)


async def get_item(session: AsyncSession, item_id: str) -> ReviewItem:
    item = await session.get(ReviewItem, item_id)
    if item is None:
        raise NotFoundError(f"no review item {item_id!r}")
    return item
