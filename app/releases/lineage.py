"""Lineage both ways: from a release to the snapshot, parent and job it came from;
from a prediction to the releases that later learned from its label."""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db.tables import Release, SnapshotLabel, TrainingJob, TrainingSnapshot

HOLDOUT = "holdout"  # the split a release was judged on, never trained on


async def snapshot_of(session: AsyncSession, release: Release) -> TrainingSnapshot | None:
    """The snapshot a release was trained on (None for releases trained before snapshots)."""
    if release.snapshot_id is None:
        return None
    return await session.get(TrainingSnapshot, release.snapshot_id)


async def parent_of(session: AsyncSession, release: Release) -> Release | None:
    """The LIVE release this one was compared with when it was trained."""
    return None if release.parent_id is None else await session.get(Release, release.parent_id)


async def job_of(session: AsyncSession, release: Release) -> TrainingJob | None:
    """The training job that made a release (None for releases stored by hand)."""
    return None if release.job_id is None else await session.get(TrainingJob, release.job_id)


async def made_by(session: AsyncSession, job: TrainingJob) -> Release | None:
    """The release a training job made (None while it runs, or when it failed)."""
    return None if job.release_id is None else await session.get(Release, job.release_id)


@dataclass
class LearnedBy:
    """A release that holds a prediction's label, and what it did with it."""

    release: Release
    split: str  # train / calibration: learned from it; holdout: judged on it only


async def releases_using_label(session: AsyncSession, prediction_id: str) -> list[LearnedBy]:
    """Every release whose training snapshot holds this prediction's label, oldest first."""
    rows = (
        await session.exec(
            select(Release, SnapshotLabel.split)
            .join(SnapshotLabel, col(SnapshotLabel.snapshot_id) == col(Release.snapshot_id))
            .where(SnapshotLabel.prediction_id == prediction_id)
            .order_by(col(Release.id))
        )
    ).all()
    return [LearnedBy(release, split) for release, split in rows]


async def trained_on_label(session: AsyncSession, prediction_id: str) -> list[LearnedBy]:
    """The releases that trained or calibrated on a prediction's label, oldest first."""
    return [u for u in await releases_using_label(session, prediction_id) if u.split != HOLDOUT]
