"""Retraining and lineage over GraphQL: thin resolvers handing off to ``app.training.jobs``,
``app.training.snapshots`` and ``app.releases.lineage``."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

import strawberry
from strawberry.permission import BasePermission

from app.db.tables import Release as ReleaseRow
from app.db.tables import TrainingJob as TrainingJobRow
from app.db.tables import TrainingSnapshot as SnapshotRow
from app.releases.store import release_by_version
from app.training import jobs as retraining
from app.training.triggers import Trigger
from graphql_schema.context import Info
from graphql_schema.permissions import Allowed
from graphql_schema.types import PageInfo, Release, relay_page_info

GUARDED: list[type[BasePermission]] = [Allowed]


@strawberry.enum(description="Where a retraining job stands.")
class JobStatus(Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


@strawberry.type(description="One retraining of a task: snapshot, fit, evaluation gate.")
class TrainingJob:
    id: strawberry.ID
    task: str
    status: JobStatus
    trigger: str = strawberry.field(description="manual, cli, labels, schedule or drift.")
    requested_by: str
    reason: str
    requests: int = strawberry.field(
        description="Requests this job answers: those made while it was active joined it."
    )
    progress: float = strawberry.field(description="0 to 1.")
    message: str = strawberry.field(description="What the job is doing, or did.")
    attempts: int
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    release_id: strawberry.Private[int | None]

    @strawberry.field(description="The release the job made (its gate decides its stage).")
    async def release(self, info: Info) -> Release | None:
        if self.release_id is None:
            return None
        async with info.context.services.sessions() as session:
            row = await session.get(ReleaseRow, self.release_id)
        return None if row is None else Release.from_row(row)

    @classmethod
    def from_row(cls, j: TrainingJobRow) -> TrainingJob:
        return cls(id=strawberry.ID(j.id), task=j.task, status=JobStatus(j.status),
                   trigger=j.trigger, requested_by=j.requested_by, reason=j.reason,
                   requests=j.requests, progress=j.progress, message=j.message,
                   attempts=j.attempts, error=j.error, created_at=j.created_at,
                   started_at=j.started_at, finished_at=j.finished_at, release_id=j.release_id)


@strawberry.type
class TrainingJobEdge:
    cursor: str
    node: TrainingJob


@strawberry.type(description="A page of training jobs, newest first.")
class TrainingJobConnection:
    edges: list[TrainingJobEdge]
    page_info: PageInfo
    total_count: int


@strawberry.type(description="Immutable training data: source rows plus reviewed labels up "
                 "to a point in time. Its id is the SHA-256 of its content.")
class Snapshot:
    id: strawberry.ID
    task: str
    source_rows: int
    reviewed_rows: int
    labels_until: datetime
    created_at: datetime
    created_by: str

    @classmethod
    def from_row(cls, s: SnapshotRow) -> Snapshot:
        return cls(id=strawberry.ID(s.id), task=s.task, source_rows=s.source_rows,
                   reviewed_rows=s.reviewed_rows, labels_until=s.labels_until,
                   created_at=s.created_at, created_by=s.created_by)


@strawberry.type
class TrainingQuery:
    @strawberry.field(permission_classes=GUARDED, description="One release of a task.")
    async def release(self, info: Info, task: str, version: int) -> Release:
        services = info.context.services
        services.registry.task(task)
        async with services.sessions() as session:
            return Release.from_row(await release_by_version(session, task, version))

    @strawberry.field(permission_classes=GUARDED, description="A training job by id.")
    async def training_job(self, info: Info, id: strawberry.ID) -> TrainingJob:
        async with info.context.services.sessions() as session:
            return TrainingJob.from_row(await retraining.get_job(session, str(id)))

    @strawberry.field(permission_classes=GUARDED,
                      description="A task's training jobs, newest first.")
    async def training_jobs(self, info: Info, task: str, first: int = 20,
                            after: str | None = None) -> TrainingJobConnection:
        services = info.context.services
        services.registry.task(task)
        async with services.sessions() as session:
            page = await retraining.list_jobs(session, task, first, after,
                                              services.settings.page_size_max)
        return TrainingJobConnection(
            edges=[TrainingJobEdge(cursor=c, node=TrainingJob.from_row(j))
                   for j, c in zip(page.items, page.cursors, strict=True)],
            page_info=relay_page_info(page, after), total_count=page.total)


@strawberry.type
class TrainingMutation:
    @strawberry.mutation(
        permission_classes=GUARDED,
        description="Retrain a task on its source data plus every settled review label. "
        "One training per task at a time: a request while one is queued or running joins it.",
    )
    async def retrain(self, info: Info, task: str, reason: str = "") -> TrainingJob:
        ctx = info.context
        spec = ctx.services.registry.task(task)
        job, created = await retraining.request_retrain(
            ctx.services.sessions, spec, Trigger.MANUAL, ctx.caller().actor, reason
        )
        if created:
            ctx.services.wake_relay()
        return TrainingJob.from_row(job)
