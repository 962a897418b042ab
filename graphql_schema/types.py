"""GraphQL types. Each is built from what the database stored, so what a client reads
after ``predict`` is exactly what a later ``prediction(id)`` returns."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, cast

import strawberry
from strawberry.scalars import JSON

from app.access.pii import redact, sees_pii
from app.db.pagination import Page, check_page_size
from app.db.tables import Prediction as PredictionRow
from app.db.tables import Release as ReleaseRow
from app.db.tables import ReleaseMember as ReleaseMemberRow
from app.db.tables import StageChange as StageChangeRow
from app.db.tables import TrainingJob as TrainingJobRow
from app.db.tables import TrainingSnapshot as SnapshotRow
from app.errors import UnknownTaskError
from app.ml.task import TaskSpec
from app.predictions.charts import ChartKind as ChartKindValue
from app.predictions.charts import ImageFormat
from app.predictions.pictures import may_see_pictures, picture_path
from app.releases.lineage import releases_using_label
from app.releases.stages import stage_history
from app.releases.store import release_members
from app.training.snapshots import label_splits, learned_predictions
from graphql_schema.context import Info

if TYPE_CHECKING:
    from graphql_schema.training import Snapshot, TrainingJob


@strawberry.enum(description="How a feature's values are written.")
class FeatureType(Enum):
    NUMERIC = "numeric"
    CATEGORICAL = "categorical"
    BOOLEAN = "boolean"


@strawberry.enum(description="The space in which an explanation adds up exactly.")
class ExplanationSpace(Enum):
    LOG_ODDS = "LOG_ODDS"
    PROBABILITY = "PROBABILITY"


@strawberry.enum(description="File format of an explanation picture.")
class PictureFormat(Enum):
    SVG = "svg"
    PNG = "png"


@strawberry.enum(description="WATERFALL walks from the base value to the output, one feature "
                 "at a time; BAR shows each feature's contribution from zero.")
class ChartKind(Enum):
    WATERFALL = "waterfall"
    BAR = "bar"


@strawberry.enum(description="AUTO: answered by the models alone. REVIEW: sent to people.")
class Route(Enum):
    AUTO = "AUTO"
    REVIEW = "REVIEW"


@strawberry.enum(description="Where a prediction stands.")
class PredictionStatus(Enum):
    ACCEPTED = "ACCEPTED"
    PENDING_REVIEW = "PENDING_REVIEW"
    REVIEWED = "REVIEWED"


@strawberry.enum(description="The life stage of a release.")
class ReleaseStage(Enum):
    CANDIDATE = "CANDIDATE"
    SHADOW = "SHADOW"
    CANARY = "CANARY"
    LIVE = "LIVE"
    RETIRED = "RETIRED"


@strawberry.type(description="One input field of a task's contract: enough to build a form.")
class Feature:
    name: str
    type: FeatureType
    required: bool
    min: float | None
    max: float | None
    categories: list[str]
    description: str


@strawberry.type(description="A feature computed from inputs by a named Python function.")
class DerivedFeature:
    name: str
    function: str
    inputs: list[str]
    description: str


@strawberry.type(description="A declared ensemble member.")
class MemberSpec:
    name: str
    algorithm: str
    weight: float


@strawberry.type(description="A prediction problem declared in a task file.")
class Task:
    name: str
    description: str
    classes: list[str]
    features: list[Feature]
    derived: list[DerivedFeature]
    members: list[MemberSpec]
    space: ExplanationSpace = strawberry.field(description="Where the ensemble aggregates.")
    confidence_level: float = strawberry.field(
        description="Conformal prediction sets hold the true class at least this often."
    )
    hide_explanation: bool = strawberry.field(
        description="Reviewers see a claimed item's explanation only when they ask for it "
        "(ReviewItem.prediction(revealExplanation: true)); the review page shows a button."
    )
    lease_seconds: float = strawberry.field(description="How long a review claim holds.")

    @classmethod
    def from_spec(cls, t: TaskSpec) -> Task:
        return cls(
            name=t.name,
            description=t.description,
            classes=list(t.classes),
            features=[
                Feature(
                    name=f.name,
                    type=FeatureType(f.type.value),
                    required=f.required,
                    min=f.min,
                    max=f.max,
                    categories=list(f.categories),
                    description=f.description,
                )
                for f in t.features
            ],
            derived=[
                DerivedFeature(
                    name=d.name,
                    function=d.function,
                    inputs=list(d.inputs),
                    description=d.description,
                )
                for d in t.derived
            ],
            members=[
                MemberSpec(name=m.name, algorithm=m.algorithm, weight=m.weight) for m in t.members
            ],
            space=ExplanationSpace(t.space.value),
            confidence_level=t.review.confidence_level,
            hide_explanation=t.review.hide_explanation,
            lease_seconds=t.review.lease_seconds,
        )


@strawberry.type(description="The probability of one class.")
class ClassProbability:
    label: str
    probability: float


def visible(info: Info, task: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` as the caller may read them: personal ones redacted unless auditor/admin."""
    if sees_pii(info.context.caller().role):
        return values
    try:
        spec: TaskSpec | None = info.context.services.registry.task(task)
    except UnknownTaskError:
        spec = None
    return redact(spec, values)


@strawberry.type(description="What one feature added to the explained output.")
class Contribution:
    feature: str
    shap: float
    derived: bool
    task: strawberry.Private[str]
    raw_value: strawberry.Private[Any]

    @strawberry.field(description="The feature's value in this input; \"[redacted]\" for "
                      "personal (pii) features unless the caller is an auditor or admin.")
    def value(self, info: Info) -> JSON | None:
        return _json(visible(info, self.task, {self.feature: self.raw_value})[self.feature])


@strawberry.type(description="SHAP explanation: baseValue + sum(shap) = outputValue in `space`.")
class Explanation:
    status: str = strawberry.field(description="OK, or PARTIAL when a member failed.")
    space: ExplanationSpace
    explained_class: str
    base_value: float
    output_value: float
    task: strawberry.Private[str]
    stored: strawberry.Private[list[dict[str, Any]]]

    @strawberry.field
    def contributions(self) -> list[Contribution]:
        return [Contribution(feature=c["feature"], raw_value=c["value"], shap=c["shap"],
                             derived=c["derived"], task=self.task) for c in self.stored]

    @classmethod
    def from_json(cls, d: dict[str, Any], task: str,
                  features: list[dict[str, Any]] | None = None) -> Explanation:
        """A stored explanation; a compact one (a member's: ``shap`` values alone) takes
        its features and values from ``features``, the prediction's contributions."""
        if "contributions" in d:
            stored = d["contributions"]
        else:
            if features is None:
                raise ValueError("a compact explanation needs the prediction's features")
            stored = [{**c, "shap": s} for c, s in zip(features, d["shap"], strict=True)]
        return cls(
            status=d["status"],
            space=ExplanationSpace(d["space"]),
            explained_class=d["explainedClass"],
            base_value=d["baseValue"],
            output_value=d["outputValue"],
            task=task,
            stored=stored,
        )


def _json(value: Any) -> JSON:
    """Typed passage of a stored JSON document into a JSON field."""
    return cast(JSON, value)


def _probs(items: list[dict[str, Any]] | None) -> list[ClassProbability] | None:
    if items is None:
        return None
    return [ClassProbability(label=p["label"], probability=p["probability"]) for p in items]


@strawberry.type(description="What one member of the ensemble said.")
class MemberPrediction:
    name: str
    version: str
    label: str | None
    weight: float
    error: str | None
    probabilities: list[ClassProbability] | None
    explanation: Explanation | None


@strawberry.type(description="Why a prediction was routed to review.")
class Reason:
    code: str
    detail: str
    value: JSON | None
    threshold: JSON | None


@strawberry.type(description="A release that learned from a label, and how.")
class LabelUse:
    version: int
    stage: ReleaseStage
    split: str = strawberry.field(description="train or calibration.")


async def label_uses(info: Info, prediction_id: str) -> list[LabelUse]:
    """The releases that trained or calibrated on a prediction's label, oldest first."""
    async with info.context.services.sessions() as session:
        uses = await releases_using_label(session, prediction_id)
    return [LabelUse(version=u.release.version, stage=ReleaseStage(u.release.stage),
                     split=u.split) for u in uses if u.split != "holdout"]


def _probabilities(root: Prediction) -> list[ClassProbability]:
    return _probs(root.row.probabilities) or []


def _prediction_set(root: Prediction) -> list[str]:
    return list(root.row.prediction_set)


def _members(root: Prediction) -> list[MemberPrediction]:
    features = root.row.explanation["contributions"]
    return [
        MemberPrediction(
            name=m["name"],
            version=m["version"],
            label=m["label"],
            weight=m["weight"],
            error=m["error"],
            probabilities=_probs(m["probabilities"]),
            explanation=Explanation.from_json(m["explanation"], root.task, features)
            if m["explanation"] and not root.hide_explanation
            else None,
        )
        for m in root.row.members
    ]


def _explanation(root: Prediction) -> Explanation | None:
    return None if root.hide_explanation else Explanation.from_json(root.row.explanation,
                                                                     root.task)


def _reasons(root: Prediction) -> list[Reason]:
    return [Reason(code=r["code"], detail=r["detail"], value=r.get("value"),
                   threshold=r.get("threshold")) for r in root.row.reasons]


@strawberry.type(description="An explained, routed, stored prediction.")
class Prediction:
    """Scalars are copied from the stored row; nested fields are built from it only when a
    query selects them (a predictBatch answer of 10,000 rows asks for few of them)."""

    id: strawberry.ID
    task: str
    release: int = strawberry.field(description="Version of the release that answered.")
    label: str
    confidence: float = strawberry.field(description="Ensemble probability of `label`.")
    probabilities: list[ClassProbability] = strawberry.field(resolver=_probabilities)
    prediction_set: list[str] = strawberry.field(
        resolver=_prediction_set,
        description="Conformal prediction set at the task's confidence level.",
    )
    members: list[MemberPrediction] = strawberry.field(resolver=_members)
    explanation: Explanation | None = strawberry.field(
        resolver=_explanation,
        description="Always present, except for reviewers of a task that hides explanations "
        "until they ask (see ReviewItem.prediction)."
    )
    route: Route
    reasons: list[Reason] = strawberry.field(resolver=_reasons)
    status: PredictionStatus
    final_label: str | None
    idempotency_key: str | None
    latency_ms: float
    created_at: datetime
    row: strawberry.Private[PredictionRow]
    hide_explanation: strawberry.Private[bool]

    @strawberry.field(description="The input as sent; personal (pii) features read "
                      "\"[redacted]\" unless the caller is an auditor or admin.")
    def input(self, info: Info) -> JSON:
        return _json(visible(info, self.task, self.row.input))

    @strawberry.field(description="Releases that later learned from this prediction's "
                      "reviewed label (trained or calibrated on it), oldest first.")
    async def trained_into(self, info: Info) -> list[LabelUse]:
        return await label_uses(info, str(self.id))

    @strawberry.field(description="URL path (on this server) of its explanation drawn as a "
                      "picture, e.g. /explanations/<id>.svg; fetch it with your API key. Null "
                      "for roles that may not fetch it (only auditors and admins may).")
    def explanation_url(
        self,
        info: Info,
        format: PictureFormat = PictureFormat.SVG,
        kind: ChartKind = ChartKind.WATERFALL,
        class_name: Annotated[str | None, strawberry.argument(
            name="class", description="The class to explain; default the predicted one.")
        ] = None,
    ) -> str | None:
        principal = info.context.principal
        if principal is None or not may_see_pictures(principal.role):
            return None
        return picture_path(str(self.id), ImageFormat(format.value),
                            ChartKindValue(kind.value), class_name)

    @classmethod
    def from_row(cls, p: PredictionRow, hide_explanation: bool = False) -> Prediction:
        """``hide_explanation`` blanks the ensemble's and the members' explanations."""
        return cls(
            id=strawberry.ID(p.id),
            task=p.task,
            release=p.release_version,
            label=p.label,
            confidence=p.confidence,
            route=Route(p.route),
            status=PredictionStatus(p.status),
            final_label=p.final_label,
            idempotency_key=p.idempotency_key,
            latency_ms=p.latency_ms,
            created_at=p.created_at,
            row=p,
            hide_explanation=hide_explanation,
        )


@strawberry.type
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


def relay_page_info(page: Page[Any], after: str | None) -> PageInfo:
    """Relay page info of one keyset page."""
    return PageInfo(has_next_page=page.has_next, has_previous_page=after is not None,
                    start_cursor=page.cursors[0] if page.cursors else None,
                    end_cursor=page.cursors[-1] if page.cursors else None)


@strawberry.type
class PredictionEdge:
    cursor: str
    node: Prediction


@strawberry.type(description="A page of predictions, newest first.")
class PredictionConnection:
    edges: list[PredictionEdge]
    page_info: PageInfo
    total_count: int


@strawberry.type(description="A numbered, immutable ensemble of trained members.")
class Release:
    task: str
    version: int
    stage: ReleaseStage
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
    id: strawberry.Private[int]
    snapshot_id: strawberry.Private[str | None]
    parent_id: strawberry.Private[int | None]
    job_id: strawberry.Private[str | None]

    @strawberry.field(description="The training snapshot it learned from.")
    async def snapshot(
        self, info: Info
    ) -> Annotated[Snapshot, strawberry.lazy("graphql_schema.training")] | None:
        from graphql_schema.training import Snapshot

        if self.snapshot_id is None:
            return None
        async with info.context.services.sessions() as session:
            row = await session.get(SnapshotRow, self.snapshot_id)
        return None if row is None else Snapshot.from_row(row)

    @strawberry.field(description="The LIVE release it was compared with when trained.")
    async def parent(self, info: Info) -> Release | None:
        if self.parent_id is None:
            return None
        async with info.context.services.sessions() as session:
            row = await session.get(ReleaseRow, self.parent_id)
        return None if row is None else Release.from_row(row)

    @strawberry.field(description="The training job that made it.")
    async def job(
        self, info: Info
    ) -> Annotated[TrainingJob, strawberry.lazy("graphql_schema.training")] | None:
        from graphql_schema.training import TrainingJob

        if self.job_id is None:
            return None
        async with info.context.services.sessions() as session:
            row = await session.get(TrainingJobRow, self.job_id)
        return None if row is None else TrainingJob.from_row(row)

    @strawberry.field(description="The reviewed predictions whose labels its snapshot holds, "
                      "newest first; `split` holdout rows judged it and were never trained on.")
    async def learned_from(self, info: Info, first: int = 50, after: str | None = None,
                           split: str | None = None) -> LearnedLabelConnection:
        services = info.context.services
        check_page_size(first, services.settings.page_size_max)
        if self.snapshot_id is None:
            return LearnedLabelConnection(edges=[], total_count=0, page_info=PageInfo(
                has_next_page=False, has_previous_page=after is not None,
                start_cursor=None, end_cursor=None))
        async with services.sessions() as session:
            page = await learned_predictions(session, self.snapshot_id, first, after, split)
            splits = await label_splits(session, self.snapshot_id, [p.id for p in page.items])
        edges = [
            LearnedLabelEdge(cursor=c, node=LearnedLabel(
                split=splits[p.id], label=p.final_label or "", prediction=Prediction.from_row(p)))
            for p, c in zip(page.items, page.cursors, strict=True)
        ]
        return LearnedLabelConnection(edges=edges, total_count=page.total,
                                      page_info=relay_page_info(page, after))

    @classmethod
    def from_row(cls, r: ReleaseRow) -> Release:
        return cls(
            id=r.id or 0,
            snapshot_id=r.snapshot_id,
            parent_id=r.parent_id,
            job_id=r.job_id,
            gate=_json(r.gate),
            rows=_json(r.rows),
            task=r.task,
            version=r.version,
            stage=ReleaseStage(r.stage),
            traffic_percent=r.traffic_percent,
            created_at=r.created_at,
            created_by=r.created_by,
            metrics=_json(r.metrics),
            calibration=_json(calibration_summary(r.calibration)),
            routing=_json(r.routing),
        )

    @strawberry.field(description="Its trained members, in declaration order.")
    async def members(self, info: Info) -> list[ReleaseMember]:
        async with info.context.services.sessions() as session:
            return [ReleaseMember.from_row(m) for m in await release_members(session, self.id)]

    @strawberry.field(description="Every stage it went through, oldest first: who, when, why.")
    async def stage_history(self, info: Info) -> list[StageChange]:
        async with info.context.services.sessions() as session:
            return [StageChange.from_row(c) for c in await stage_history(session, self.id)]


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

    @classmethod
    def from_row(cls, m: ReleaseMemberRow) -> ReleaseMember:
        return cls(name=m.name, version=m.version, algorithm=m.algorithm, family=m.family,
                   weight=m.weight, params=_json(m.params), sha256=m.sha256,
                   metrics=_json(m.metrics), library_versions=_json(m.library_versions),
                   created_at=m.created_at, created_by=m.created_by)


@strawberry.type(description="One move of a release from one stage to another.")
class StageChange:
    from_stage: ReleaseStage | None
    to_stage: ReleaseStage
    traffic_percent: float
    actor: str = strawberry.field(description="The API key, `cli`, or a system job.")
    reason: str
    at: datetime

    @classmethod
    def from_row(cls, c: StageChangeRow) -> StageChange:
        return cls(
            from_stage=ReleaseStage(c.from_stage) if c.from_stage else None,
            to_stage=ReleaseStage(c.to_stage),
            traffic_percent=c.traffic_percent,
            actor=c.actor,
            reason=c.reason,
            at=c.at,
        )


@strawberry.type(description="A settled label a release's snapshot holds.")
class LearnedLabel:
    label: str
    split: str = strawberry.field(description="train, calibration or holdout.")
    prediction: Prediction


@strawberry.type
class LearnedLabelEdge:
    cursor: str
    node: LearnedLabel


@strawberry.type(description="A page of learned labels, newest prediction first.")
class LearnedLabelConnection:
    edges: list[LearnedLabelEdge]
    page_info: PageInfo
    total_count: int


def calibration_summary(stored: dict[str, Any]) -> dict[str, Any]:
    """What people need to read of a release's calibration: levels and thresholds, not the
    calibration scores or the detector's training statistics (medians of PII features)."""
    summary: dict[str, Any] = {
        k: stored[k] for k in ("method", "confidence_level", "threshold") if k in stored
    }
    summary["calibration_rows"] = len(stored.get("alphas", []))
    ood = stored.get("ood")
    if ood:
        summary["ood"] = {k: ood[k] for k in ("method", "quantile", "threshold") if k in ood}
    return summary


@strawberry.type(description="The caller's own key.")
class Me:
    name: str
    role: str
