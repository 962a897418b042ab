"""Release stages over GraphQL: thin resolvers handing off to ``app.releases.stages`` and
``app.releases.comparison``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import strawberry
from sqlmodel.ext.asyncio.session import AsyncSession
from strawberry.permission import BasePermission

from app.db.tables import StageChange as StageChangeRow
from app.releases import stages
from app.releases.comparison import Tally, compare_release
from graphql_schema.context import Info
from graphql_schema.permissions import Allowed
from graphql_schema.types import Release, ReleaseStage

GUARDED: list[type[BasePermission]] = [Allowed]
NO_REASON = "no reason given"


@strawberry.type(description="Agreement with LIVE and accuracy on reviewed predictions, over "
                 "all paired predictions (label null) or one class.")
class ComparisonTally:
    label: str | None = strawberry.field(
        description="Null overall. For a class: agreement counts pairs LIVE labelled so; "
        "accuracies count reviewed pairs people labelled so (recall).")
    paired: int = strawberry.field(description="Predictions both releases scored.")
    agreed: int = strawberry.field(description="Pairs where both gave the same label.")
    agreement: float | None = strawberry.field(description="agreed / paired.")
    reviewed: int = strawberry.field(description="Pairs people labelled.")
    release_correct: int
    live_correct: int
    release_accuracy: float | None = strawberry.field(description="On the reviewed pairs.")
    live_accuracy: float | None = strawberry.field(description="On the same reviewed pairs.")

    @classmethod
    def from_tally(cls, t: Tally, label: str | None = None) -> ComparisonTally:
        return cls(label=label, paired=t.paired, agreed=t.agreed, agreement=t.agreement,
                   reviewed=t.reviewed, release_correct=t.release_correct,
                   live_correct=t.live_correct, release_accuracy=t.release_accuracy,
                   live_accuracy=t.live_accuracy)


@strawberry.type(description="A SHADOW or CANARY release against the current LIVE release, "
                 "on the predictions both scored.")
class ReleaseComparison:
    task: str
    version: int
    stage: ReleaseStage
    live_version: int
    overall: ComparisonTally
    by_class: list[ComparisonTally]


async def _change(
    info: Info, task: str, work: Callable[[AsyncSession], Awaitable[list[StageChangeRow]]],
    version: int | None,
) -> Release:
    """Run one stage change in a transaction, announce it after commit, and return the
    release ``version`` (None: the task's LIVE release) as it now stands."""
    services = info.context.services
    services.registry.task(task)
    async with services.sessions() as session, session.begin():
        changes = await work(session)
        release = await (stages.find_release(session, task, version) if version is not None
                         else stages.live_of(session, task))
    await services.announce(changes)
    return Release.from_row(release)


@strawberry.type
class ReleaseQuery:
    @strawberry.field(permission_classes=GUARDED,
                      description="How a SHADOW or CANARY release compares with LIVE: "
                      "agreement, and both accuracies on reviewed predictions, by class.")
    async def release_comparison(self, info: Info, task: str, version: int) -> ReleaseComparison:
        services = info.context.services
        spec = services.registry.task(task)
        async with services.sessions() as session:
            c = await compare_release(session, task, version, spec.classes)
        return ReleaseComparison(
            task=c.task, version=c.version, stage=ReleaseStage(c.stage),
            live_version=c.live_version, overall=ComparisonTally.from_tally(c.overall),
            by_class=[ComparisonTally.from_tally(k.tally, k.label) for k in c.by_class])


@strawberry.type
class ReleaseMutation:
    @strawberry.mutation(permission_classes=GUARDED,
                         description="Move a release to a stage. LIVE retires the old LIVE "
                         "release; CANARY (trafficPercent in (0, 100)) replaces any canary; "
                         "SHADOW scores traffic without answering. Recorded with who and why.")
    async def promote_release(self, info: Info, task: str, version: int, stage: ReleaseStage,
                              traffic_percent: float | None = None,
                              reason: str = NO_REASON) -> Release:
        actor = info.context.caller().actor
        return await _change(info, task, lambda s: stages.promote(
            s, task, version, stage.value, traffic_percent, actor, reason), version)

    @strawberry.mutation(permission_classes=GUARDED,
                         description="Make the previous LIVE release LIVE again; the current "
                         "one is retired and any canary withdrawn. Returns the LIVE release.")
    async def rollback(self, info: Info, task: str, reason: str = NO_REASON) -> Release:
        actor = info.context.caller().actor
        return await _change(info, task, lambda s: stages.rollback(s, task, actor, reason), None)
