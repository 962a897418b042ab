"""Retraining over GraphQL: thin resolvers handing off to ``app.training.jobs``. The job and
snapshot types live beside the release they make (``graphql_schema.releases``)."""

from __future__ import annotations

import strawberry

from app.db.engine import read
from app.training import jobs as retraining
from graphql_schema.context import Info
from graphql_schema.permissions import GUARDED
from graphql_schema.relay import Connection
from graphql_schema.releases import TrainingJob


@strawberry.type(description="A page of training jobs, newest first.")
class TrainingJobConnection(Connection[TrainingJob]):
    pass


@strawberry.type
class TrainingQuery:
    @strawberry.field(permission_classes=GUARDED, description="A training job by id.")
    async def training_job(self, info: Info, id: strawberry.ID) -> TrainingJob:
        job = await read(info.context.services.sessions, retraining.get_job, str(id))
        return TrainingJob.from_row(job)

    @strawberry.field(permission_classes=GUARDED,
                      description="A task's training jobs, newest first.")
    async def training_jobs(self, info: Info, task: str, first: int = 20,
                            after: str | None = None) -> TrainingJobConnection:
        services = info.context.services
        services.registry.task(task)
        page = await read(services.sessions, retraining.list_jobs, task, first, after,
                          services.settings.page_size_max)
        return TrainingJobConnection.of(page, after, TrainingJob.from_row)


@strawberry.type
class TrainingMutation:
    @strawberry.mutation(
        permission_classes=GUARDED,
        description="Retrain a task on its source data plus every settled review label. "
        "One training per task at a time: a request while one is queued or running joins it.",
    )
    async def retrain(self, info: Info, task: str, reason: str = "") -> TrainingJob:
        ctx = info.context
        job = await retraining.request_and_wake(
            ctx.services.sessions, ctx.services.wake_relay, ctx.services.registry.task(task),
            retraining.Trigger.MANUAL, ctx.caller().actor, reason)
        return TrainingJob.from_row(job)
