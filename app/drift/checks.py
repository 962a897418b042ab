"""Drift reports of a task from the database: the LIVE release's reference, the recent
predictions, the report (computed in a thread), and the periodic check that stores it,
sets the gauges, announces drift on ``releaseEvents`` and may request a retraining."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import delete
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db.monitoring import DriftReport as DriftReportRow
from app.db.monitoring import Outcome
from app.db.tables import Prediction, Release, TrainingJob, TrainingSnapshot
from app.db.types import utcnow
from app.drift import gauges as drift_metrics
from app.drift.report import DriftReport, Recent, drift_report, feature_reference
from app.errors import ArbiterError, NoDriftReferenceError, NoLiveReleaseError
from app.events.announcements import announce
from app.events.topics import ReleaseEventKind, release_event, releases_topic
from app.ml.drift_settings import window_seconds
from app.ml.task import TaskSpec
from app.releases.store import live_release
from app.training import jobs as retraining
from app.training.snapshots import load_snapshot
from app.training.triggers import Trigger

log = logging.getLogger("arbiter.drift")

MAX_RECENT_ROWS = 20_000  # the newest predictions of the window that a report reads
DRIFT_ACTOR = "system:drift"
STORE_RETRIES = 3

Sessions = async_sessionmaker[AsyncSession]


async def _references(sessions: Sessions, artifacts_dir: Path, task: TaskSpec,
                      release: Release) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The release's feature reference (from its snapshot; computed from the snapshot file
    when the snapshot predates stored references) and its prediction reference."""
    if release.snapshot_id is None:
        raise NoDriftReferenceError(
            f"release {release.version} of {task.name} has no training snapshot to compare "
            f"with (it was stored outside a training job); retrain with `retrain(task: "
            f"\"{task.name}\")` or `arbiter train {task.name}`")
    async with sessions() as session:
        snapshot = await session.get(TrainingSnapshot, release.snapshot_id)
    assert snapshot is not None  # a foreign key
    if snapshot.reference is not None:
        return snapshot.reference, release.prediction_reference
    try:
        data = await anyio.to_thread.run_sync(load_snapshot, artifacts_dir, snapshot)
    except ArbiterError as exc:
        raise NoDriftReferenceError(
            f"release {release.version} of {task.name} predates stored drift references and "
            f"its snapshot cannot be read ({exc}); retrain to compare drift") from None
    reference = await anyio.to_thread.run_sync(feature_reference, task, data.X)
    return reference, release.prediction_reference


async def recent_predictions(session: AsyncSession, task: str, since: datetime,
                             release_id: int) -> Recent:
    """The task's newest predictions since ``since`` (at most ``MAX_RECENT_ROWS``),
    oldest first; ``live`` marks those made by ``release_id``."""
    query = (
        sa_select(col(Prediction.input), col(Prediction.created_at), col(Prediction.route),
                  col(Prediction.label), col(Prediction.final_label),
                  col(Prediction.confidence), col(Prediction.release_id), col(Outcome.label))
        .outerjoin(Outcome, col(Outcome.prediction_id) == col(Prediction.id))
        .where(col(Prediction.task) == task, col(Prediction.created_at) >= since)
        .order_by(col(Prediction.created_at).desc()).limit(MAX_RECENT_ROWS))
    # eight columns: more than sqlmodel's select() is typed for, the same at run time
    rows = (await session.exec(query)).all()  # type: ignore[call-overload]
    rows = list(reversed(rows))
    return Recent(inputs=[dict(r[0]) for r in rows], created_at=[r[1] for r in rows],
                  routes=[r[2] for r in rows], labels=[r[3] for r in rows],
                  final_labels=[r[4] for r in rows], confidence=[r[5] for r in rows],
                  live=[r[6] == release_id for r in rows], outcomes=[r[7] for r in rows])


async def compute_report(
    sessions: Sessions, artifacts_dir: Path, task: TaskSpec, window: str | None = None,
    now: datetime | None = None,
) -> tuple[Release, DriftReport]:
    """The task's drift over ``window`` (default: the task's ``drift.window``) against its
    LIVE release; the statistics run in a thread, off the event loop."""
    window = window or task.drift.window
    seconds = window_seconds(window)
    now = now or utcnow()
    async with sessions() as session:
        live = await live_release(session, task.name)
    if live is None:
        raise NoLiveReleaseError(task.name)
    if live.contract_hash != task.contract_hash():
        raise NoDriftReferenceError(
            f"LIVE release {live.version} of {task.name} was trained on another feature "
            "contract than the task file declares; retrain to compare drift")
    features_ref, predictions_ref = await _references(sessions, artifacts_dir, task, live)
    async with sessions() as session:
        recent = await recent_predictions(session, task.name, now - timedelta(seconds=seconds),
                                          live.id or 0)
    report = await anyio.to_thread.run_sync(
        lambda: drift_report(task, live.version, features_ref, predictions_ref, recent,
                             task.drift, window, now, seconds))
    return live, report


async def latest_report(session: AsyncSession, task: str) -> DriftReport | None:
    """The report the periodic check stored last, or None."""
    row = (await session.exec(
        select(DriftReportRow).where(DriftReportRow.task == task)
        .order_by(col(DriftReportRow.computed_at).desc()).limit(1))).first()
    return None if row is None else DriftReport.from_json(row.details)


def check_bucket(task: TaskSpec, now: datetime) -> datetime:
    """The start of the check period ``now`` falls in: one stored report per period."""
    period = task.drift.check_every_minutes * 60
    start = int(now.timestamp() // period * period)
    return datetime.fromtimestamp(start, UTC)


async def _stored(session: AsyncSession, task: str, bucket: datetime) -> bool:
    found = await session.exec(select(DriftReportRow.id).where(
        DriftReportRow.task == task, DriftReportRow.bucket == bucket))
    return found.first() is not None


async def _asked_within(session: AsyncSession, task: str, since: datetime) -> bool:
    """Whether drift asked for a retraining of the task since ``since``: while one drift
    persists, it asks once per window rather than at every check."""
    found = await session.exec(select(TrainingJob.id).where(
        TrainingJob.task == task, TrainingJob.trigger == Trigger.DRIFT,
        col(TrainingJob.created_at) >= since))
    return found.first() is not None


def retrain_reason(report: DriftReport) -> str:
    """Why drift asks for a retraining, for the job and the event."""
    return (f"drift in {', '.join(report.drifted_features)} over the last {report.window} "
            f"(share {report.share:.2f} >= {report.share_threshold:g})")


@dataclass
class CheckOutcome:
    """What one periodic check of a task did: its report, whether this check stored it
    (False when another run stored this period's first), the retraining it requested."""

    report: DriftReport
    stored: bool
    job: TrainingJob | None = None


async def _store(ctx: retraining.JobContext, task: TaskSpec, live: Release,
                 report: DriftReport, bucket: datetime) -> tuple[bool, TrainingJob | None]:
    """The report and, if it asks for one, the retraining request: one transaction."""
    for _attempt in range(STORE_RETRIES):
        try:
            async with ctx.sessions() as session, session.begin():
                if await _stored(session, task.name, bucket):
                    return False, None
                session.add(DriftReportRow(
                    task=task.name, release_id=live.id or 0, release_version=live.version,
                    window=report.window, bucket=bucket, computed_at=report.computed_at,
                    verdict=report.verdict, drifted=report.drifted, share=report.share,
                    details=report.to_json()))
                await session.flush()
                if not (report.drifted and task.drift.retrain_on_drift):
                    return True, None
                if await _asked_within(session, task.name, report.since):
                    return True, None  # the same window's drift already asked for one
                job, _ = await retraining.request_in(
                    session, task, Trigger.DRIFT, DRIFT_ACTOR, retrain_reason(report))
                return True, job
        except IntegrityError:
            continue  # a concurrent check stored this period, or created the job: look again
    raise ArbiterError(f"could not store the drift report of {task.name}; try again")


async def prune_reports(sessions: Sessions, task: TaskSpec, now: datetime) -> int:
    """Delete the task's stored reports computed more than ``keep_reports_days`` before
    ``now`` (none when it is 0); how many were deleted."""
    keep = task.drift.keep_reports_days
    if keep <= 0:
        return 0
    async with sessions() as session, session.begin():
        deleted = await (await session.connection()).execute(delete(DriftReportRow).where(
            col(DriftReportRow.task) == task.name,
            col(DriftReportRow.computed_at) < now - timedelta(days=keep)))
    count = deleted.rowcount
    if count:
        log.info("deleted %d drift reports of %s older than %g days", count, task.name, keep)
    return count


async def check_task(ctx: retraining.JobContext, task: TaskSpec,
                     now: datetime | None = None) -> CheckOutcome | None:
    """Compute, store and announce the task's report unless this period has one already
    (safe to run twice), and delete reports older than the task keeps. None when there
    was nothing to do."""
    now = now or utcnow()
    bucket = check_bucket(task, now)
    async with ctx.sessions() as session:
        if await _stored(session, task.name, bucket):
            return None
    live, report = await compute_report(ctx.sessions, ctx.artifacts_dir, task, now=now)
    drift_metrics.record(report)
    stored, job = await _store(ctx, task, live, report, bucket)
    if stored:
        await prune_reports(ctx.sessions, task, now)
    if stored and report.drifted:
        await announce(ctx.events, [(releases_topic(task.name), release_event(
            ReleaseEventKind.DRIFT_DETECTED, task.name, version=live.version,
            job_id=job.id if job else None, status=report.verdict,
            reason=retrain_reason(report), message=report.message, actor=DRIFT_ACTOR))])
    return CheckOutcome(report, stored, job)


async def check_all(ctx: retraining.JobContext, now: datetime | None = None
                    ) -> list[CheckOutcome]:
    """``check_task`` for every task; a task that cannot be checked (no LIVE release, no
    reference) is logged and skipped, not a failure of the others."""
    outcomes = []
    for task in ctx.tasks.values():
        try:
            outcome = await check_task(ctx, task, now)
        except (NoLiveReleaseError, NoDriftReferenceError) as exc:
            log.info("drift check of %s skipped: %s", task.name, exc)
            continue
        if outcome is not None:
            outcomes.append(outcome)
    return outcomes
