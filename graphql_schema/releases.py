"""Releases over GraphQL, and the retraining that makes them: a release, its members, stages
and lineage (the snapshot, job and parent it came from, the labels it learned from), and
training jobs, with thin resolvers handing off to ``app.releases`` and
``app.training.jobs``. A training job and the release it made refer to each other, so
their types share this module."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, cast

import strawberry
from strawberry.scalars import JSON

from app.db.engine import read
from app.db.pagination import check_page_size
from app.db.tables import Release as ReleaseRow
from app.db.tables import ReleaseMember as ReleaseMemberRow
from app.db.tables import StageChange as StageChangeRow
from app.db.tables import TrainingJob as TrainingJobRow
from app.db.tables import TrainingSnapshot as SnapshotRow
from app.releases import lineage, stages
from app.releases.comparison import Tally, compare_release
from app.releases.stages import stage_history
from app.releases.store import (
    calibration_summary,
    change_routing,
    list_releases,
    release_by_version,
    release_members,
    release_risk,
)
from app.training import jobs as retraining
from app.training.snapshots import learned_labels
from app.training.triggers import Trigger
from graphql_schema.enums import SPLIT_DEPRECATED, JobStatus, Split, Stage
from graphql_schema.permissions import GUARDED, Info
from graphql_schema.predictions import Prediction
from graphql_schema.relay import Connection
from graphql_schema.risk import ReleaseRisk

NO_REASON = "no reason given"


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


@strawberry.type(description="One retraining of a task: snapshot, fit, evaluation gate.")
class TrainingJob:
    id: strawberry.ID
    task: str
    status: JobStatus
    triggered_by: Trigger = strawberry.field(description="Who or what asked for it.")
    trigger: str = strawberry.field(
        description="manual, cli, labels, schedule or drift.",
        deprecation_reason="Use triggeredBy (the TrainingTrigger enum); this lowercase text "
        "goes in the next release.")
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
    row: strawberry.Private[TrainingJobRow]

    @strawberry.field(description="The release the job made (its gate decides its stage).")
    async def release(self, info: Info) -> Release | None:
        row = await read(info.context.services.sessions, lineage.made_by, self.row)
        return None if row is None else Release.from_row(row)

    @classmethod
    def from_row(cls, j: TrainingJobRow) -> TrainingJob:
        return cls(id=strawberry.ID(j.id), task=j.task, status=JobStatus(j.status),
                   triggered_by=Trigger(j.trigger), trigger=j.trigger,
                   requested_by=j.requested_by, reason=j.reason,
                   requests=j.requests, progress=j.progress, message=j.message,
                   attempts=j.attempts, error=j.error, created_at=j.created_at,
                   started_at=j.started_at, finished_at=j.finished_at, row=j)


@strawberry.type(description="A numbered, immutable ensemble of trained members.")
class Release:
    task: str
    version: int
    stage: Stage
    traffic_percent: float = strawberry.field(
        description="Share of traffic it answers: 100 when LIVE, the canary's share when "
        "CANARY, else 0.")
    created_at: datetime
    created_by: str
    metrics: JSON = strawberry.field(description="Evaluation on the held-out test split.")
    calibration: JSON = strawberry.field(description="Conformal level and threshold.")
    routing: JSON = strawberry.field(
        description="Review-policy fields this release overrides (empty: the task's policy).")
    gate: JSON = strawberry.field(
        description="The evaluation gate's decision against the LIVE release it was trained "
        "beside: decision, reasons, the rule, and the comparison table (metric x slice).")
    rows: JSON = strawberry.field(description="Rows in each split, reviewed ones counted apart.")
    row: strawberry.Private[ReleaseRow]

    @strawberry.field(description="The training snapshot it learned from.")
    async def snapshot(self, info: Info) -> Snapshot | None:
        row = await read(info.context.services.sessions, lineage.snapshot_of, self.row)
        return None if row is None else Snapshot.from_row(row)

    @strawberry.field(description="The LIVE release it was compared with when trained.")
    async def parent(self, info: Info) -> Release | None:
        row = await read(info.context.services.sessions, lineage.parent_of, self.row)
        return None if row is None else Release.from_row(row)

    @strawberry.field(description="The training job that made it.")
    async def job(self, info: Info) -> TrainingJob | None:
        row = await read(info.context.services.sessions, lineage.job_of, self.row)
        return None if row is None else TrainingJob.from_row(row)

    @strawberry.field(description="The reviewed predictions whose labels its snapshot holds, "
                      "newest first; `dataSplit` HOLDOUT rows judged it and were never trained "
                      "on.")
    async def learned_from(
        self, info: Info, first: int = 50, after: str | None = None,
        data_split: Split | None = None,
        split: Annotated[str | None, strawberry.argument(
            deprecation_reason=SPLIT_DEPRECATED)] = None,
    ) -> LearnedLabelConnection:
        split = data_split.value if data_split is not None else split
        services = info.context.services
        check_page_size(first, services.settings.page_size_max)
        learned = await read(services.sessions, learned_labels, self.row.snapshot_id, first,
                             after, split)
        return LearnedLabelConnection.of(learned.page, after, lambda p: LearnedLabel(
            data_split=Split(learned.splits[p.id]), split=learned.splits[p.id],
            label=learned.sources.get(p.id, (p.final_label or "", ""))[0],
            source=learned.sources.get(p.id, ("", "review"))[1],
            prediction=Prediction.from_row(p)))

    @classmethod
    def from_row(cls, r: ReleaseRow) -> Release:
        return cls(
            row=r,
            gate=cast(JSON, r.gate),
            rows=cast(JSON, r.rows),
            task=r.task,
            version=r.version,
            stage=Stage(r.stage),
            traffic_percent=r.traffic_percent,
            created_at=r.created_at,
            created_by=r.created_by,
            metrics=cast(JSON, r.metrics),
            calibration=cast(JSON, calibration_summary(r.calibration)),
            routing=cast(JSON, r.routing),
        )

    @strawberry.field(description="The certified bound on the error of its AUTO predictions "
                      "(null when the task sets no max_auto_error).")
    def risk(self, info: Info) -> ReleaseRisk | None:
        risk = release_risk(info.context.services.registry.task(self.task), self.row)
        return None if risk is None else ReleaseRisk.of(risk)

    @strawberry.field(description="Its trained members, in declaration order.")
    async def members(self, info: Info) -> list[ReleaseMember]:
        rows = await read(info.context.services.sessions, release_members, self.row.id or 0)
        return [ReleaseMember.from_row(m) for m in rows]

    @strawberry.field(description="Every stage it went through, oldest first: who, when, why.")
    async def stage_history(self, info: Info) -> list[StageChange]:
        rows = await read(info.context.services.sessions, stage_history, self.row.id or 0)
        return [StageChange.from_row(c) for c in rows]


@strawberry.type(description="One trained member of a release and its artifact.")
class ReleaseMember:
    name: str
    version: str
    algorithm: str
    family: str
    weight: float
    params: JSON
    sha256: str = strawberry.field(description="Of the skops artifact, checked on load.")
    metrics: JSON
    library_versions: JSON
    created_at: datetime
    created_by: str
    origin: JSON = strawberry.field(
        description="{} when Arbiter trained it; else kind (imported: the fitted estimator "
        "of a skops file; refit: a clone of it fitted on reviewers' labels too), file, "
        "sha256 of that file, and estimator.")

    @classmethod
    def from_row(cls, m: ReleaseMemberRow) -> ReleaseMember:
        return cls(name=m.name, version=m.version, algorithm=m.algorithm, family=m.family,
                   weight=m.weight, params=cast(JSON, m.params), sha256=m.sha256,
                   metrics=cast(JSON, m.metrics), library_versions=cast(JSON, m.library_versions),
                   created_at=m.created_at, created_by=m.created_by,
                   origin=cast(JSON, m.origin or {}))


@strawberry.type(description="One move of a release from one stage to another.")
class StageChange:
    from_stage: Stage | None
    to_stage: Stage
    traffic_percent: float
    actor: str = strawberry.field(description="The API key, `cli`, or a system job.")
    reason: str
    at: datetime

    @classmethod
    def from_row(cls, c: StageChangeRow) -> StageChange:
        return cls(
            from_stage=Stage(c.from_stage) if c.from_stage else None,
            to_stage=Stage(c.to_stage),
            traffic_percent=c.traffic_percent,
            actor=c.actor,
            reason=c.reason,
            at=c.at,
        )


@strawberry.type(description="A settled label a release's snapshot holds.")
class LearnedLabel:
    label: str
    data_split: Split = strawberry.field(description="TRAIN, CALIBRATION or HOLDOUT.")
    split: str = strawberry.field(description="train, calibration or holdout.",
                                  deprecation_reason=SPLIT_DEPRECATED)
    source: str = strawberry.field(description="review (people's label) or outcome (recorded "
                                   "ground truth: recordOutcomes).")
    prediction: Prediction


@strawberry.type(description="A page of learned labels, newest prediction first.")
class LearnedLabelConnection(Connection[LearnedLabel]):
    pass


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
    stage: Stage
    live_version: int
    overall: ComparisonTally
    by_class: list[ComparisonTally]


@strawberry.type
class ReleaseQuery:
    @strawberry.field(permission_classes=GUARDED,
                      description="How a SHADOW or CANARY release compares with LIVE: "
                      "agreement, and both accuracies on reviewed predictions, by class.")
    async def release_comparison(self, info: Info, task: str, version: int) -> ReleaseComparison:
        services = info.context.services
        spec = services.registry.task(task)
        c = await read(services.sessions, compare_release, task, version, spec.classes)
        return ReleaseComparison(
            task=c.task, version=c.version, stage=Stage(c.stage),
            live_version=c.live_version, overall=ComparisonTally.from_tally(c.overall),
            by_class=[ComparisonTally.from_tally(k.tally, k.label) for k in c.by_class])

    @strawberry.field(permission_classes=GUARDED, description="One release of a task.")
    async def release(self, info: Info, task: str, version: int) -> Release:
        services = info.context.services
        services.registry.task(task)
        return Release.from_row(await read(services.sessions, release_by_version, task, version))

    @strawberry.field(permission_classes=GUARDED, description="A task's releases, newest first.")
    async def releases(self, info: Info, task: str) -> list[Release]:
        services = info.context.services
        services.registry.task(task)
        return [Release.from_row(r) for r in await read(services.sessions, list_releases, task)]


@strawberry.type
class ReleaseMutation:
    @strawberry.mutation(permission_classes=GUARDED,
                         description="Move a release to a stage. LIVE retires the old LIVE "
                         "release; CANARY (trafficPercent in (0, 100)) replaces any canary; "
                         "SHADOW scores traffic without answering. Recorded with who and why.")
    async def promote_release(self, info: Info, task: str, version: int, stage: Stage,
                              traffic_percent: float | None = None,
                              reason: str = NO_REASON) -> Release:
        ctx = info.context
        ctx.services.registry.task(task)
        return Release.from_row(await stages.promote_release(
            ctx.services.sessions, ctx.services.events, task, version, stage, traffic_percent,
            ctx.caller().actor, reason))

    @strawberry.mutation(permission_classes=GUARDED,
                         description="Make the previous LIVE release LIVE again; the current "
                         "one is retired and any canary withdrawn. Returns the LIVE release.")
    async def rollback(self, info: Info, task: str, reason: str = NO_REASON) -> Release:
        ctx = info.context
        ctx.services.registry.task(task)
        return Release.from_row(await stages.rollback_release(
            ctx.services.sessions, ctx.services.events, task, ctx.caller().actor, reason))

    @strawberry.mutation(
        permission_classes=GUARDED,
        description="Override review-policy fields for one release (confidence level, "
        "audit rate, reviews per item, ...); servers apply it within their refresh interval.",
    )
    async def set_release_routing(
        self, info: Info, task: str, version: int, policy: JSON
    ) -> Release:
        ctx = info.context
        return Release.from_row(await change_routing(
            ctx.services.sessions, ctx.services.registry.task(task), version, policy,
            ctx.caller().actor))


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
            Trigger.MANUAL, ctx.caller().actor, reason)
        return TrainingJob.from_row(job)
