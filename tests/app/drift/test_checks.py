"""Drift references and the periodic check against a real database (SQLite, PostgreSQL):
the snapshot stores its reference, an older snapshot's reference is computed from its file,
and a check run twice, or twice at once, stores one report per period."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, update
from sqlmodel import col, select

from app.db.engine import make_engine, make_sessionmaker
from app.db.monitoring import DriftReport
from app.db.tables import Release, TrainingSnapshot
from app.drift import checks as drift_checks
from app.errors import NoDriftReferenceError
from app.events.bus import LocalBus
from app.ml.task import TaskSpec
from app.ml.training import TrainedRelease
from app.settings import Settings
from app.training.jobs import JobContext
from app.training.snapshots import take_snapshot
from tests.support.releases import store_with_snapshots

TASK = "loan_default"
NOW = datetime(2026, 11, 30, 12, 0, 30, tzinfo=UTC)


@pytest.fixture
def stored(database_url: str, tmp_path: Path, trained: dict[str, TrainedRelease]) -> Settings:
    s = Settings(data_dir=tmp_path / "data", database_url=database_url)
    s.data_dir.mkdir(parents=True)
    asyncio.run(store_with_snapshots(s, trained, [TASK]))
    return s


def test_references_stored_recomputed_and_missing(
        stored: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    task = example_tasks[TASK]

    async def work() -> None:
        engine = make_engine(stored.resolved_database_url)
        sessions = make_sessionmaker(engine)
        try:
            async with sessions() as session:
                release = (await session.exec(select(Release))).one()
                snapshot = await session.get(TrainingSnapshot, release.snapshot_id)
            assert snapshot is not None and snapshot.reference is not None
            assert set(snapshot.reference["features"]) == {f.name for f in task.features}
            assert release.prediction_reference is not None
            assert release.prediction_reference["rows"] == release.rows["test"]
            _, first = await drift_checks.compute_report(sessions, stored.artifacts_dir, task,
                                                         "1h")
            assert first.verdict == "INSUFFICIENT_DATA" and first.rows == 0

            # a snapshot taken before references existed: computed from its file
            async with sessions() as session, session.begin():
                await session.exec(update(TrainingSnapshot).values(reference=None))
            _, again = await drift_checks.compute_report(sessions, stored.artifacts_dir, task,
                                                         "1h")
            assert again.verdict == "INSUFFICIENT_DATA"
            # taking the same snapshot again stores the reference it lacked
            await take_snapshot(sessions, task, stored.artifacts_dir, "tests")
            async with sessions() as session:
                refreshed = await session.get(TrainingSnapshot, snapshot.id)
            assert refreshed is not None and refreshed.reference == snapshot.reference

            changed = task.model_copy(update={"classes": (*task.classes, "written_off")})
            with pytest.raises(NoDriftReferenceError, match="another feature contract"):
                await drift_checks.compute_report(sessions, stored.artifacts_dir, changed, "1h")

            async with sessions() as session, session.begin():
                await session.exec(update(TrainingSnapshot).values(reference=None))
            (stored.artifacts_dir / snapshot.path).unlink()
            with pytest.raises(NoDriftReferenceError, match="predates stored drift references"):
                await drift_checks.compute_report(sessions, stored.artifacts_dir, task, "1h")
        finally:
            await engine.dispose()

    asyncio.run(work())


def test_a_check_run_twice_or_at_once_stores_one_report_per_period(
        stored: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    task = example_tasks[TASK]

    async def work() -> None:
        engine = make_engine(stored.resolved_database_url)
        sessions = make_sessionmaker(engine)
        ctx = JobContext(sessions, {TASK: task}, stored.artifacts_dir, LocalBus())
        try:
            first = await drift_checks.check_task(ctx, task, NOW)
            assert first is not None and first.stored and first.job is None
            assert await drift_checks.check_task(ctx, task, NOW + timedelta(seconds=20)) is None
            later = NOW + timedelta(hours=1)
            both = await asyncio.gather(drift_checks.check_task(ctx, task, later),
                                        drift_checks.check_task(ctx, task, later))
            assert sorted(o.stored for o in both if o is not None) in ([False, True], [True])
            async with sessions() as session:
                count = (await session.exec(select(func.count()).select_from(DriftReport))).one()
                latest = await drift_checks.latest_report(session, TASK)
                buckets = (await session.exec(select(DriftReport.bucket).order_by(
                    col(DriftReport.bucket)))).all()
            assert count == 2
            assert latest is not None and latest.computed_at == later
            assert buckets == [datetime(2026, 11, 30, 12, tzinfo=UTC),
                               datetime(2026, 11, 30, 13, tzinfo=UTC)]
        finally:
            await engine.dispose()

    asyncio.run(work())


def test_a_check_deletes_the_reports_older_than_the_task_keeps(
        stored: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    """Reports 10, 20 and 40 days old under keep_reports_days = 30: the next check that
    stores one deletes the 40-day-old one and keeps the rest; 0 keeps every one."""
    task = example_tasks[TASK]
    keeping = task.model_copy(update={"drift": task.drift.model_copy(
        update={"keep_reports_days": 30.0})})

    async def work() -> None:
        engine = make_engine(stored.resolved_database_url)
        sessions = make_sessionmaker(engine)
        ctx = JobContext(sessions, {TASK: keeping}, stored.artifacts_dir, LocalBus())

        async def ages() -> list[int]:
            async with sessions() as session:
                times = (await session.exec(select(DriftReport.computed_at))).all()
            return sorted(round((NOW - t).total_seconds() / 86400) for t in times)

        try:
            for days in (40, 20, 10):
                await drift_checks.check_task(ctx, task, NOW - timedelta(days=days))
            assert await ages() == [10, 20, 40]  # stored under the default of 90 days
            outcome = await drift_checks.check_task(ctx, keeping, NOW)
            assert outcome is not None and outcome.stored
            assert await ages() == [0, 10, 20]
            forever = keeping.model_copy(update={"drift": keeping.drift.model_copy(
                update={"keep_reports_days": 0.0})})
            later = NOW + timedelta(days=900)
            assert await drift_checks.prune_reports(sessions, forever, later) == 0
            assert await ages() == [0, 10, 20]
        finally:
            await engine.dispose()

    asyncio.run(work())
