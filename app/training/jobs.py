"""Retraining jobs: requested (by a person, the CLI, new labels or a schedule), run once per
task at a time, gated against the LIVE release, recorded with their lineage.

A job row is the source of truth. ``request_retrain`` writes it with its
``training.run`` outbox message in one transaction, or joins the task's active job.
``run_job`` claims it by compare-and-set, so a duplicate message or a second worker does
nothing, and a job whose worker died (no heartbeat) is taken over by the next attempt.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit import log as audit
from app.db.pagination import Page, check_page_size, paginate
from app.db.tables import Release, TrainingJob
from app.db.types import utcnow
from app.errors import ArbiterError, NotFoundError
from app.events import announcements
from app.events.bus import EventBus, LocalBus
from app.events.outbox import enqueue
from app.events.topics import Event, Message, ReleaseEventKind, release_event, releases_topic
from app.metrics import TRAINING_RUNS
from app.ml.gate import GateDecision
from app.ml.task import TaskSpec
from app.releases import stages
from app.releases.store import Lineage, store_release
from app.training import gating, imports, triggers
from app.training.heartbeat import ProgressPump, fit_with_heartbeat
from app.training.snapshots import Split, take_snapshot

if TYPE_CHECKING:
    from app.ml.training import TrainedRelease

log = logging.getLogger("arbiter.retraining")

RUN_ACTOR = "training.run"
WORKER_ACTOR = f"system:{RUN_ACTOR}"


class JobStatus(StrEnum):
    """Where a retraining job stands."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)  # a job in one of these still runs or will


async def _active(session: AsyncSession, task: str) -> TrainingJob | None:
    return (
        await session.exec(
            select(TrainingJob).where(
                TrainingJob.task == task, col(TrainingJob.status).in_(ACTIVE)
            )
        )
    ).first()


async def request_retrain(
    sessions: async_sessionmaker[AsyncSession],
    task: TaskSpec,
    trigger: str,
    actor: str,
    reason: str = "",
) -> tuple[TrainingJob, bool]:
    """The task's new job (and True), or its active one that this request joins (False).
    A partial unique index keeps two concurrent requests from both creating a job."""
    for _attempt in range(3):
        try:
            async with sessions() as session, session.begin():
                return await request_in(session, task, trigger, actor, reason)
        except IntegrityError:
            continue  # a concurrent request created the active job first: join it
    raise ArbiterError(f"could not request a retraining of {task.name}; try again")


async def request_in(
    session: AsyncSession, task: TaskSpec, trigger: str, actor: str, reason: str = ""
) -> tuple[TrainingJob, bool]:
    """``request_retrain`` inside the caller's transaction (which retries on
    ``IntegrityError``), so the request commits or rolls back with what caused it."""
    active = await _active(session, task.name)
    if active is not None:  # join it (counted in SQL: no lost updates)
        await session.exec(
            update(TrainingJob)
            .where(col(TrainingJob.id) == active.id)
            .values(requests=TrainingJob.requests + 1)
        )
        await session.refresh(active)
        _audit_request(session, active, actor, trigger, reason, joined=True)
        return active, False
    job = TrainingJob(
        id=str(uuid.uuid4()),
        task=task.name,
        status=JobStatus.QUEUED,
        trigger=trigger,
        requested_by=actor,
        reason=reason,
        message="queued",
    )
    session.add(job)
    enqueue(session, RUN_ACTOR, {"job_id": job.id})
    _audit_request(session, job, actor, trigger, reason, joined=False)
    await session.flush()  # a concurrent twin fails here, inside the caller's retry
    return job, True


def _audit_request(session: AsyncSession, job: TrainingJob, actor: str, trigger: str,
                   reason: str, joined: bool) -> None:
    audit.append(session, audit.Kind.TRAINING_REQUESTED, actor, "training_job", job.id,
                 {"trigger": trigger, "reason": reason, "joined": joined}, job.task)


async def get_job(session: AsyncSession, job_id: str) -> TrainingJob:
    """The job; an error naming it when there is none."""
    job = await session.get(TrainingJob, job_id)
    if job is None:
        raise NotFoundError(f"no training job {job_id!r}")
    return job


async def list_jobs(
    session: AsyncSession, task: str, first: int, after: str | None, page_size_max: int
) -> Page[TrainingJob]:
    """A page of the task's jobs, newest first."""
    check_page_size(first, page_size_max)
    return await paginate(session, TrainingJob, [TrainingJob.task == task], first, after)


def job_event(job: TrainingJob) -> Event:
    """A job's progress as a ``releaseEvents`` payload; TRAINING_FINISHED once it ended."""
    finished = job.status not in ACTIVE
    kind = ReleaseEventKind.TRAINING_FINISHED if finished else ReleaseEventKind.TRAINING_PROGRESS
    return release_event(kind, job.task, job_id=job.id, status=job.status,
                         progress=min(max(job.progress, 0.0), 1.0),
                         message=job.error or job.message, actor=job.requested_by)


async def _claim(
    sessions: async_sessionmaker[AsyncSession], job_id: str, stale_seconds: float
) -> bool:
    """QUEUED -> RUNNING, or take over a RUNNING job whose worker stopped beating."""
    now = utcnow()
    stale = now - timedelta(seconds=stale_seconds)
    async with sessions() as session, session.begin():
        result = await session.exec(
            update(TrainingJob)
            .where(
                col(TrainingJob.id) == job_id,
                or_(
                    col(TrainingJob.status) == JobStatus.QUEUED,
                    (col(TrainingJob.status) == JobStatus.RUNNING)
                    & (col(TrainingJob.heartbeat_at) < stale),
                ),
            )
            .values(
                status=JobStatus.RUNNING,
                started_at=now,
                heartbeat_at=now,
                attempts=TrainingJob.attempts + 1,
                progress=0.0,
                message="starting",
            )
        )
        if not result.rowcount:
            return False
        job = await get_job(session, job_id)
        audit.append(session, audit.Kind.TRAINING_STARTED, WORKER_ACTOR, "training_job",
                     job_id, {"attempt": job.attempts}, job.task)
        return True


async def _report(
    sessions: async_sessionmaker[AsyncSession], job_id: str, progress: float, message: str
) -> None:
    async with sessions() as session, session.begin():
        await session.exec(
            update(TrainingJob)
            .where(col(TrainingJob.id) == job_id, col(TrainingJob.status) == JobStatus.RUNNING)
            .values(progress=progress, message=message[:500], heartbeat_at=utcnow())
        )


async def _fail(sessions: async_sessionmaker[AsyncSession], job_id: str, error: str) -> None:
    async with sessions() as session, session.begin():
        await session.exec(
            update(TrainingJob)
            .where(col(TrainingJob.id) == job_id)
            .values(status=JobStatus.FAILED, error=error[:2000], message="failed",
                    finished_at=utcnow())
        )
        job = await get_job(session, job_id)
        audit.append(session, audit.Kind.TRAINING_FAILED, WORKER_ACTOR, "training_job",
                     job_id, {"error": error[:2000]}, job.task)


# Called with the job each time its progress or status is written (after commit).
Watch = Callable[[TrainingJob], Awaitable[None]]


async def _silent(_: TrainingJob) -> None:
    return None


@dataclass
class JobContext:
    """What running a job needs: sessions, the tasks, where artifacts live, the bus its
    progress, gate decision and stage changes are announced on (``releaseEvents``), and an
    optional watcher of its progress (the CLI's progress bar)."""

    sessions: async_sessionmaker[AsyncSession]
    tasks: dict[str, TaskSpec]
    artifacts_dir: Path
    events: EventBus = field(default_factory=LocalBus)
    watch: Watch = _silent
    # a RUNNING job without a heartbeat for this long lost its worker: it may be taken over
    stale_seconds: float = 60.0

    async def announce(self, job_id: str, *more: Message) -> None:
        """Show the job as committed to the watcher, and announce it (and ``more``)."""
        async with self.sessions() as session:
            job = await get_job(session, job_id)
        await self.watch(job)
        await announcements.announce(self.events, [(releases_topic(job.task), job_event(job)),
                                                   *more])


async def _step(ctx: JobContext, job_id: str, progress: float, message: str) -> None:
    await _report(ctx.sessions, job_id, progress, message)
    await ctx.announce(job_id)


@dataclass(frozen=True)
class _Candidate:
    """A job's trained release before it is stored, and what the gate made of it."""

    snapshot_id: str
    trained: TrainedRelease
    parent: Release | None
    decision: GateDecision


async def _train(ctx: JobContext, job: TrainingJob, task: TaskSpec) -> _Candidate:
    """Snapshot, fit (progress 0.1 .. 0.85), and gate against the LIVE release."""
    from app.ml.training import fit_release  # SHAP is slow to import: only when training

    await _step(ctx, job.id, 0.02, "taking the training snapshot")
    snapshot, data = await take_snapshot(ctx.sessions, task, ctx.artifacts_dir,
                                         job.requested_by)
    await _step(ctx, job.id, 0.1, f"snapshot {snapshot.id[:12]}: {snapshot.source_rows} "
                f"source rows, {snapshot.reviewed_rows} reviewed rows")
    plans = await imports.member_plans(ctx.sessions, ctx.artifacts_dir, task, data)
    pump = ProgressPump(0.1, 0.85)
    trained = await fit_with_heartbeat(
        lambda: fit_release(task, data.X[: data.source_rows], data.y[: data.source_rows],
                            reviewed=data.reviewed, progress=pump, plans=plans),
        pump, functools.partial(_step, ctx, job.id),
        functools.partial(_report, ctx.sessions, job.id))
    await _step(ctx, job.id, 0.9, "comparing with the LIVE release")
    held_out = [p for p, s in zip(data.prediction_ids, data.splits, strict=True)
                if s == Split.HOLDOUT]
    parent, decision = await gating.evaluate(ctx.sessions, ctx.artifacts_dir, task, trained,
                                             held_out)
    return _Candidate(snapshot.id, trained, parent, decision)


async def run_job(ctx: JobContext, job_id: str) -> Release | None:
    """Snapshot, fit, gate, store; the new release, or None when there was nothing to do
    (the job is done, failed, or running elsewhere). Expected failures (bad data, a task
    that no longer exists) fail the job; others propagate so the broker retries."""
    if not await _claim(ctx.sessions, job_id, ctx.stale_seconds):
        return None
    async with ctx.sessions() as session:
        job = await get_job(session, job_id)
    task = ctx.tasks.get(job.task)
    if task is None:
        await _fail(ctx.sessions, job_id, f"task {job.task!r} is no longer declared")
        return None
    try:
        candidate = await _train(ctx, job, task)
    except ArbiterError as exc:
        await _fail(ctx.sessions, job_id, str(exc))
        TRAINING_RUNS.labels(task.name, "failed").inc()
        await ctx.announce(job_id)
        return None
    return await _store(ctx, job, task, candidate)


async def _store(ctx: JobContext, job: TrainingJob, task: TaskSpec,
                 candidate: _Candidate) -> Release:
    """Store the release with its lineage, finish the job in the same transaction, and
    announce the job, the gate's decision and the stage changes it made."""
    decision = candidate.decision

    async def finish(session: AsyncSession, release: Release) -> None:
        """In the release's transaction: the job is done, and a passing release moves to
        the stage the task's gate names."""
        row = await get_job(session, job.id)
        row.status, row.progress, row.finished_at = JobStatus.SUCCEEDED, 1.0, utcnow()
        row.release_id = release.id
        row.message = f"release {release.version}: gate {decision.decision}"
        session.add(row)
        audit.record(session, [
            gating.decided_entry(release, decision, job.id),
            audit.Entry(audit.Kind.TRAINING_FINISHED, WORKER_ACTOR, "training_job", job.id,
                        {"release": release.version}, task.name)])
        await gating.promote_passed(session, task, release, decision)

    parent = candidate.parent.id if candidate.parent else None
    lineage = Lineage(candidate.snapshot_id, parent, job.id, decision)
    release = await store_release(
        ctx.sessions, ctx.artifacts_dir, candidate.trained, job.requested_by, lineage, finish
    )
    TRAINING_RUNS.labels(task.name, "succeeded").inc()
    log.info("%s: job %s made release %s (%s)", task.name, job.id, release.version,
             decision.decision)
    await ctx.announce(job.id, gating.decision_message(release, decision, job.id))
    async with ctx.sessions() as session:
        changes = await stages.stage_history(session, release.id or 0)
    await stages.announce(ctx.events, ctx.sessions, changes)
    return release


async def check_triggers(
    sessions: async_sessionmaker[AsyncSession], tasks: dict[str, TaskSpec]
) -> list[TrainingJob]:
    """Request the retrainings that labels or schedules call for (joined when active)."""
    requested = []
    for task in tasks.values():
        async with sessions() as session:
            if await _active(session, task.name) is not None:
                continue
            due = await triggers.due_trigger(session, task)
        if due is not None:
            job, _ = await request_retrain(sessions, task, due[0], "system:trigger", due[1])
            requested.append(job)
    return requested


async def resend_stalled(
    sessions: async_sessionmaker[AsyncSession], stale_seconds: float
) -> list[str]:
    """Send ``training.run`` again for jobs a lost message or a dead worker left behind:
    QUEUED, or RUNNING without a heartbeat, for ``stale_seconds``. The claim makes it safe."""
    stale = utcnow() - timedelta(seconds=stale_seconds)
    async with sessions() as session, session.begin():
        jobs = (
            await session.exec(
                select(TrainingJob).where(
                    or_(
                        (col(TrainingJob.status) == JobStatus.QUEUED)
                        & (col(TrainingJob.created_at) < stale),
                        (col(TrainingJob.status) == JobStatus.RUNNING)
                        & (col(TrainingJob.heartbeat_at) < stale),
                    )
                )
            )
        ).all()
        for job in jobs:
            enqueue(session, RUN_ACTOR, {"job_id": job.id})
    return [j.id for j in jobs]


async def request_and_wake(sessions: async_sessionmaker[AsyncSession],
                           wake_relay: Callable[[], None], task: TaskSpec, trigger: str,
                           actor: str, reason: str = "") -> TrainingJob:
    """``request_retrain``; a new job's outbox message is sent at once (a joined job's was
    sent when it was created)."""
    job, created = await request_retrain(sessions, task, trigger, actor, reason)
    if created:
        wake_relay()
    return job
