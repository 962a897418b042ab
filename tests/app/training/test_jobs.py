"""Retraining jobs, snapshots and triggers, called directly on both databases: one job per
task at a time, run once, taken over when its worker died, failed cleanly on bad data."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from sqlmodel import col, select

from app.db.tables import (
    AuditEvent,
    OutboxMessage,
    Release,
    TrainingJob,
    TrainingLabel,
    TrainingSnapshot,
)
from app.db.types import utcnow
from app.errors import ModelLoadError
from app.main import build_services
from app.ml.task import TaskSpec
from app.predictions import path as predictions
from app.releases import lineage
from app.settings import Settings
from app.training import jobs as retraining
from app.training.snapshots import (
    Split,
    load_snapshot,
    reviewed_split,
    snapshot_id,
    take_snapshot,
)
from tests.support.inputs import example_inputs

TASK = "breast_cancer"


class World:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.services, self.engine = build_services(settings)
        self.sessions = self.services.sessions
        self.tasks = self.services.registry.tasks

    def context(self, tasks: dict[str, TaskSpec] | None = None) -> retraining.JobContext:
        return retraining.JobContext(self.sessions, tasks or self.tasks,
                                     self.settings.artifacts_dir)

    async def label(self, n: int, seed: int = 3) -> list[str]:
        """n stored predictions with a settled label each (the model's own label)."""
        rows = await predictions.predict_batch(
            self.services, None, TASK, example_inputs(self.tasks[TASK], n, seed=seed))
        async with self.sessions() as session, session.begin():
            session.add_all(TrainingLabel(prediction_id=p.id, task=TASK, label=p.label,
                                          source="review") for p in rows)
        return [p.id for p in rows]

    async def audited(self, subject_id: str) -> list[tuple[str, str]]:
        """(kind, actor) of the audit events about one subject, in chain order."""
        async with self.sessions() as session:
            return [(e.kind, e.actor) for e in (await session.exec(
                select(AuditEvent).where(AuditEvent.subject_id == subject_id)
                .order_by(col(AuditEvent.id)))).all()]

    async def jobs(self) -> list[TrainingJob]:
        async with self.sessions() as session:
            return list((await session.exec(select(TrainingJob))).all())


def run(settings: Settings, test: Callable[[World], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        world = World(settings)
        try:
            return await test(world)
        finally:
            await world.engine.dispose()
    return asyncio.run(main())


def test_requests_while_a_job_is_active_join_it(settings: Settings) -> None:
    async def test(w: World) -> None:
        task = w.tasks[TASK]
        results = await asyncio.gather(*(
            retraining.request_retrain(w.sessions, task, "manual", f"key:{i}") for i in range(5)))
        assert sum(created for _, created in results) == 1
        assert len({job.id for job, _ in results}) == 1
        [job] = await w.jobs()
        assert job.requests == 5 and job.status == "QUEUED"
        async with w.sessions() as session:
            sent = (await session.exec(select(OutboxMessage).where(
                OutboxMessage.actor == "training.run"))).all()
        assert [m.payload for m in sent] == [{"job_id": job.id}]
    run(settings, test)


def test_a_job_runs_once_and_records_its_lineage(settings: Settings) -> None:
    async def test(w: World) -> None:
        await w.label(30)
        job, _ = await retraining.request_retrain(w.sessions, w.tasks[TASK], "manual", "me")
        seen: list[float] = []

        async def watch(j: TrainingJob) -> None:
            seen.append(j.progress)
        ctx = w.context()
        ctx.watch = watch
        release = await retraining.run_job(ctx, job.id)
        assert release is not None and release.version == 2
        assert await retraining.run_job(w.context(), job.id) is None  # a duplicate message
        [done] = await w.jobs()
        assert (done.status, done.progress, done.release_id) == ("SUCCEEDED", 1.0, release.id)
        assert seen == sorted(seen) and len(seen) >= 3 and seen[-1] == 1.0
        async with w.sessions() as session:
            snapshot = await session.get(TrainingSnapshot, release.snapshot_id)
            parent = await session.get(Release, release.parent_id)
        assert snapshot is not None and snapshot.reviewed_rows == 30
        assert parent is not None and parent.version == 1
        assert release.job_id == job.id and release.gate["liveVersion"] == 1
        assert await w.audited(job.id) == [
            ("training.requested", "me"), ("training.started", retraining.WORKER_ACTOR),
            ("training.finished", retraining.WORKER_ACTOR)]
        assert [k for k, _ in await w.audited(str(release.id))][:3] == [
            "release.stored", "release.stage_changed", "release.gate_decided"]
        # a new job on the same data reuses the snapshot: it is content-addressed
        job2, created = await retraining.request_retrain(w.sessions, w.tasks[TASK], "cli", "me")
        assert created
        again = await retraining.run_job(w.context(), job2.id)
        assert again is not None and again.snapshot_id == release.snapshot_id
    run(settings, test)


def test_a_job_whose_worker_died_is_taken_over(settings: Settings) -> None:
    async def test(w: World) -> None:
        job, _ = await retraining.request_retrain(w.sessions, w.tasks[TASK], "manual", "me")

        async def set_running(beat_seconds_ago: float) -> None:
            async with w.sessions() as session, session.begin():
                row = await session.get(TrainingJob, job.id)
                assert row is not None
                row.status, row.heartbeat_at = "RUNNING", utcnow() - timedelta(
                    seconds=beat_seconds_ago)
                session.add(row)

        await set_running(1)  # alive elsewhere: leave it alone
        assert await retraining.run_job(w.context(), job.id) is None
        assert await retraining.resend_stalled(w.sessions, 60.0) == []
        await set_running(65)  # its worker stopped beating
        assert await retraining.resend_stalled(w.sessions, 60.0) == [job.id]
        release = await retraining.run_job(w.context(), job.id)
        assert release is not None
        [done] = await w.jobs()
        assert done.status == "SUCCEEDED" and done.attempts == 1
    run(settings, test)


def test_a_training_that_cannot_work_fails_its_job(settings: Settings) -> None:
    async def test(w: World) -> None:
        task = w.tasks[TASK]
        broken = task.model_copy(update={"data": task.data.model_copy(
            update={"loader": "app.examples.loan:load"})})  # another task's rows and labels
        job, _ = await retraining.request_retrain(w.sessions, broken, "manual", "me")
        assert await retraining.run_job(w.context({TASK: broken}), job.id) is None
        [failed] = await w.jobs()
        assert failed.status == "FAILED" and failed.release_id is None
        assert "lacks target 'diagnosis'" in (failed.error or "")
        assert [k for k, _ in await w.audited(job.id)] == [
            "training.requested", "training.started", "training.failed"]
        async with w.sessions() as session:
            versions = (await session.exec(select(Release.version).where(
                Release.task == TASK))).all()
        assert list(versions) == [1]
        # the task is free again: a new request makes a new job
        _, created = await retraining.request_retrain(w.sessions, task, "manual", "me")
        assert created
    run(settings, test)


def test_new_labels_and_schedules_trigger_retraining(settings: Settings) -> None:
    async def test(w: World) -> None:
        task = w.tasks[TASK]
        by_labels = task.model_copy(update={"training": task.training.model_copy(
            update={"retrain_after_labels": 5})})
        tasks = {TASK: by_labels}
        await w.label(4)
        assert await retraining.check_triggers(w.sessions, tasks) == []
        await w.label(1, seed=9)
        [job] = await retraining.check_triggers(w.sessions, tasks)
        assert (job.trigger, job.reason) == ("labels", "5 new labels (threshold 5)")
        assert await retraining.check_triggers(w.sessions, tasks) == []  # active: not twice
        await retraining.run_job(w.context(tasks), job.id)
        assert await retraining.check_triggers(w.sessions, tasks) == []  # all in a snapshot

        hourly = task.model_copy(update={"training": task.training.model_copy(
            update={"retrain_every_hours": 1.0})})
        assert await retraining.check_triggers(w.sessions, {TASK: hourly}) == []  # just ran
        async with w.sessions() as session, session.begin():
            for row in (await session.exec(select(TrainingJob))).all():
                row.created_at = utcnow() - timedelta(hours=2)
                session.add(row)
        [job] = await retraining.check_triggers(w.sessions, {TASK: hourly})
        assert job.trigger == "schedule"
    run(settings, test)


def test_snapshots_are_content_addressed_and_tamper_evident(settings: Settings) -> None:
    async def test(w: World) -> None:
        task = w.tasks[TASK]
        ids = await w.label(12)
        first, data = await take_snapshot(w.sessions, task, w.settings.artifacts_dir, "me")
        second, _ = await take_snapshot(w.sessions, task, w.settings.artifacts_dir, "me")
        assert first.id == second.id == snapshot_id(TASK, data)
        assert sorted(data.prediction_ids) == sorted(ids)
        loaded = load_snapshot(w.settings.artifacts_dir, first)
        assert np.array_equal(loaded.X, data.X, equal_nan=True)
        assert loaded.splits == [reviewed_split(task, p) for p in loaded.prediction_ids]
        # labels settled after the cut-off are not in a snapshot taken up to it
        async with w.sessions() as session:
            labels = (await session.exec(select(TrainingLabel).order_by(
                col(TrainingLabel.id)))).all()
        early, _ = await take_snapshot(w.sessions, task, w.settings.artifacts_dir, "me",
                                       until=labels[5].created_at)
        assert early.reviewed_rows == 6 and early.id != first.id

        path = w.settings.artifacts_dir / first.path
        with np.load(path) as f:
            arrays = dict(f)
        arrays["y"] = 1 - arrays["y"]  # flip every label
        np.savez_compressed(path, **arrays)
        with pytest.raises(ModelLoadError, match="does not match its recorded hash"):
            load_snapshot(w.settings.artifacts_dir, first)
    run(settings, test)


def test_two_tasks_with_the_same_data_each_have_their_own_snapshot(settings: Settings
                                                                   ) -> None:
    """Issue 23: a task copied under another name shared the first task's snapshot, and
    the lineage of its releases named the other task."""
    async def test(w: World) -> None:
        panel = w.tasks[TASK].model_copy(update={"name": f"{TASK}_panel"})
        tasks = {**w.tasks, panel.name: panel}
        trained = {}
        for task in (TASK, panel.name):
            job, _ = await retraining.request_retrain(w.sessions, tasks[task], "manual", "me")
            trained[task] = await retraining.run_job(w.context(tasks), job.id)
        async with w.sessions() as session:
            snapshots = [await lineage.snapshot_of(session, release)
                         for release in trained.values() if release is not None]
        assert [s.task for s in snapshots if s] == [TASK, panel.name]
        assert len({s.id for s in snapshots if s}) == 2
        for snapshot in snapshots:
            assert snapshot is not None
            load_snapshot(w.settings.artifacts_dir, snapshot)  # its id matches its rows
    run(settings, test)


def test_a_reviewed_row_keeps_its_split(example_tasks: dict[str, TaskSpec]) -> None:
    task = example_tasks[TASK]
    ids = [f"prediction-{i}" for i in range(4000)]
    splits = [reviewed_split(task, i) for i in ids]
    assert splits == [reviewed_split(task, i) for i in ids]
    share = {s: splits.count(s) / len(ids) for s in (Split.TRAIN, Split.CALIBRATION,
                                                     Split.HOLDOUT)}
    assert abs(share[Split.HOLDOUT] - task.training.test_fraction) < 0.03
    assert abs(share[Split.CALIBRATION] - task.training.calibration_fraction) < 0.03

