"""Reading submitted reviews back as records for the agreement statistics."""

from __future__ import annotations

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db.tables import Prediction, Review, ReviewItem
from review.agreement import AgreementReport, ReviewRecord, summarize_agreement


async def review_records(session: AsyncSession, task: str | None) -> list[ReviewRecord]:
    """Every review (of one task, or all), with its item's model label, release and outcome."""
    query = (select(Review, ReviewItem, Prediction)
             .join(ReviewItem, col(Review.item_id) == col(ReviewItem.id))
             .join(Prediction, col(ReviewItem.prediction_id) == col(Prediction.id))
             .order_by(col(Review.id)))
    if task is not None:
        query = query.where(ReviewItem.task == task)
    return [
        ReviewRecord(item_id=item.id, reviewer=f"{review.reviewer_name}#{review.reviewer_id}",
                     label=review.label, model_label=prediction.label,
                     release=item.release_version, final_label=item.final_label,
                     adjudication=review.adjudication, submitted_at=review.created_at)
        for review, item, prediction in (await session.exec(query)).all()
    ]


async def agreement_report(session: AsyncSession, task: str | None) -> AgreementReport:
    return summarize_agreement(await review_records(session, task))
