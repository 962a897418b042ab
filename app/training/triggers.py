"""When a task is due for a retraining by its own settings: enough new labels since the
last training snapshot, or long enough since the last job; and who or what asked."""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db.tables import TrainingJob, TrainingLabel, TrainingSnapshot
from app.db.types import utcnow
from app.ml.task import TaskSpec


class Trigger(StrEnum):
    """Who or what asked for a retraining."""

    MANUAL = "manual"
    CLI = "cli"
    LABELS = "labels"
    SCHEDULE = "schedule"
    DRIFT = "drift"


async def _labels_since_last_snapshot(session: AsyncSession, task: str) -> int:
    last = (
        await session.exec(
            select(func.max(TrainingSnapshot.labels_until)).where(TrainingSnapshot.task == task)
        )
    ).one()
    query = select(func.count()).select_from(TrainingLabel).where(TrainingLabel.task == task)
    if last is not None:
        query = query.where(col(TrainingLabel.created_at) > last)
    return int((await session.exec(query)).one())


async def _hours_since_last_job(session: AsyncSession, task: str) -> float | None:
    last = (
        await session.exec(
            select(func.max(TrainingJob.created_at)).where(TrainingJob.task == task)
        )
    ).one()
    if last is None:
        return None
    return (utcnow() - last).total_seconds() / 3600


async def due_trigger(session: AsyncSession, task: TaskSpec) -> tuple[str, str] | None:
    """(trigger, reason) when the task's own settings call for a retraining now."""
    s = task.training
    if s.retrain_after_labels:
        new = await _labels_since_last_snapshot(session, task.name)
        if new >= s.retrain_after_labels:
            return Trigger.LABELS, f"{new} new labels (threshold {s.retrain_after_labels})"
    if s.retrain_every_hours:
        hours = await _hours_since_last_job(session, task.name)
        if hours is None or hours >= s.retrain_every_hours:
            since = "never trained by a job" if hours is None else f"{hours:.1f} h since"
            return Trigger.SCHEDULE, f"every {s.retrain_every_hours:g} h ({since})"
    return None
