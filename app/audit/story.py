"""A prediction's whole story, for auditors: what was asked, which release answered and
how, where it was routed and why, what people said, what was finally decided, and every
audit event about it. Releases later trained on it come from ``app.releases.lineage``."""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit.events import subject_events
from app.db.tables import AuditEvent, Prediction, Release, Review, ReviewItem
from app.errors import NotFoundError


@dataclass(frozen=True)
class Story:
    """Everything stored about one prediction."""

    prediction: Prediction
    release: Release
    item: ReviewItem | None
    reviews: list[Review]
    events: list[AuditEvent]


async def prediction_story(session: AsyncSession, prediction_id: str) -> Story:
    prediction = await session.get(Prediction, prediction_id)
    if prediction is None:
        raise NotFoundError(f"no prediction {prediction_id!r}")
    release = await session.get(Release, prediction.release_id)
    assert release is not None  # a foreign key
    item = (await session.exec(select(ReviewItem).where(
        ReviewItem.prediction_id == prediction_id))).first()
    reviews: list[Review] = []
    subjects = [("prediction", prediction_id)]
    if item is not None:
        reviews = list((await session.exec(select(Review).where(Review.item_id == item.id)
                                           .order_by(col(Review.created_at),
                                                     col(Review.id)))).all())
        subjects.append(("review_item", item.id))
    return Story(prediction, release, item, reviews, await subject_events(session, subjects))
