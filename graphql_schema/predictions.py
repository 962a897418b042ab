"""Predictions over GraphQL: thin resolvers handing off to ``app.predictions``; personal
inputs redacted for roles that may not read them (``app.access.pii``). Each type is built
from what the database stored, so what a client reads after ``predict`` is exactly
what a later ``prediction(id)`` returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, cast

import strawberry
from strawberry.scalars import JSON

from app.access.pii import redact, sees_pii
from app.db.engine import read
from app.db.tables import Prediction as PredictionRow
from app.errors import UnknownTaskError
from app.ml.task import TaskSpec
from app.predictions import path as predictions
from app.predictions import preview, queries
from app.predictions.explanation import Explanation as StoredExplanation
from app.predictions.pictures import may_see_pictures, picture_path
from app.releases.lineage import trained_on_label
from graphql_schema.enums import (
    SPLIT_DEPRECATED,
    ChartKind,
    ExplanationStatus,
    ImageFormat,
    OutputSpace,
    Route,
    Split,
    Stage,
    Status,
)
from graphql_schema.permissions import GUARDED, Info
from graphql_schema.relay import Connection


@strawberry.type(description="The probability of one class.")
class ClassProbability:
    label: str
    probability: float


def probabilities(items: list[dict[str, Any]] | None) -> list[ClassProbability] | None:
    """Stored ``{label, probability}`` pairs as GraphQL objects (None stays None)."""
    if items is None:
        return None
    return [ClassProbability(label=p["label"], probability=p["probability"]) for p in items]


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
        return cast(JSON, visible(info, self.task, {self.feature: self.raw_value})[self.feature])


@strawberry.type(description="SHAP explanation: baseValue + sum(shap) = outputValue in `space`.")
class Explanation:
    status: ExplanationStatus = strawberry.field(
        description="OK, or PARTIAL when a member failed.")
    space: OutputSpace
    explained_class: str
    base_value: float
    output_value: float
    task: strawberry.Private[str]
    stored: strawberry.Private[Sequence[Mapping[str, Any]]]

    @strawberry.field
    def contributions(self) -> list[Contribution]:
        return [Contribution(feature=c["feature"], raw_value=c["value"], shap=c["shap"],
                             derived=c["derived"], task=self.task) for c in self.stored]

    @classmethod
    def from_json(cls, d: dict[str, Any], task: str,
                  features: list[dict[str, Any]] | None = None) -> Explanation:
        """A stored explanation (read by the core's one decoder); a compact one (a member's:
        ``shap`` values alone) takes its features and values from ``features``, the
        prediction's contributions."""
        stored = StoredExplanation.from_json(d)
        if stored.contributions is not None:
            contributions: Sequence[Mapping[str, Any]] = stored.contributions
        elif features is None or stored.shap is None:
            raise ValueError("a compact explanation needs the prediction's features")
        else:
            contributions = [{**c, "shap": s}
                             for c, s in zip(features, stored.shap, strict=True)]
        return cls(status=ExplanationStatus(stored.status), space=OutputSpace(stored.space),
                   explained_class=stored.explained_class, base_value=stored.base_value,
                   output_value=stored.output_value, task=task, stored=contributions)


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
    stage: Stage
    data_split: Split = strawberry.field(description="TRAIN or CALIBRATION.")
    split: str = strawberry.field(description="train or calibration.",
                                  deprecation_reason=SPLIT_DEPRECATED)


async def label_uses(info: Info, prediction_id: str) -> list[LabelUse]:
    """The releases that trained or calibrated on a prediction's label, oldest first."""
    uses = await read(info.context.services.sessions, trained_on_label, prediction_id)
    return [LabelUse(version=u.release.version, stage=Stage(u.release.stage),
                     data_split=Split(u.split), split=u.split) for u in uses]


def _probabilities(root: Prediction) -> list[ClassProbability]:
    return probabilities(root.row.probabilities) or []


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
            probabilities=probabilities(m["probabilities"]),
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
    status: Status
    final_label: str | None
    idempotency_key: str | None
    latency_ms: float
    created_at: datetime
    row: strawberry.Private[PredictionRow]
    hide_explanation: strawberry.Private[bool]

    @strawberry.field(description="The input as sent; personal (pii) features read "
                      "\"[redacted]\" unless the caller is an auditor or admin.")
    def input(self, info: Info) -> JSON:
        return cast(JSON, visible(info, self.task, self.row.input))

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
        format: ImageFormat = ImageFormat.SVG,
        kind: ChartKind = ChartKind.WATERFALL,
        class_name: Annotated[str | None, strawberry.argument(
            name="class", description="The class to explain; default the predicted one.")
        ] = None,
    ) -> str | None:
        principal = info.context.principal
        if principal is None or not may_see_pictures(principal.role):
            return None
        return picture_path(str(self.id), format, kind, class_name)

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
            status=Status(p.status),
            final_label=p.final_label,
            idempotency_key=p.idempotency_key,
            latency_ms=p.latency_ms,
            created_at=p.created_at,
            row=p,
            hide_explanation=hide_explanation,
        )


@strawberry.type(description="A page of predictions, newest first.")
class PredictionConnection(Connection[Prediction]):
    pass


@strawberry.type(description="How many inputs one routing reason applied to.")
class ReasonCount:
    code: str
    count: int
    share: float
    sole: int = strawberry.field(description="Inputs routed by this reason alone.")


@strawberry.type(description="A dry run of routing over a set of inputs; nothing stored.")
class RoutingPreview:
    total: int
    routed: int
    share: float
    reasons: list[ReasonCount]

    @classmethod
    def from_preview(cls, p: preview.RoutingPreview) -> RoutingPreview:
        return cls(total=p.total, routed=p.routed, share=p.routed / p.total, reasons=[
            ReasonCount(code=code, count=n, share=n / p.total, sole=p.sole_reasons.get(code, 0))
            for code, n in sorted(p.reasons.items(), key=lambda kv: -kv[1])])


@strawberry.type
class PredictionQuery:
    @strawberry.field(permission_classes=GUARDED, description="A stored prediction by id.")
    async def prediction(self, info: Info, id: strawberry.ID) -> Prediction:
        ctx = info.context
        return Prediction.from_row(await queries.get_prediction(ctx.services, ctx.caller(), id))

    @strawberry.field(
        permission_classes=GUARDED,
        description="Stored predictions, newest first; predictors see their own. Filters "
        "combine: label is the model's, finalLabel the reviewers'; createdAfter (inclusive) "
        "and createdBefore (exclusive) bound createdAt.",
    )
    async def predictions(
        self, info: Info, task: str | None = None, route: Route | None = None,
        status: Status | None = None, release: int | None = None, label: str | None = None,
        final_label: str | None = None, created_after: datetime | None = None,
        created_before: datetime | None = None, first: int = 50, after: str | None = None,
    ) -> PredictionConnection:
        ctx = info.context
        page = await queries.list_predictions(
            ctx.services, ctx.caller(), task, route=route, status=status, release=release,
            label=label, final_label=final_label, created_after=created_after,
            created_before=created_before, first=first, after=after)
        return PredictionConnection.of(page, after, Prediction.from_row)

    @strawberry.field(
        permission_classes=GUARDED,
        description="What share of these inputs the LIVE release would route "
        "to review, and why; stores nothing.",
    )
    async def routing_preview(self, info: Info, task: str, inputs: list[JSON]) -> RoutingPreview:
        return RoutingPreview.from_preview(
            await preview.preview_routing(info.context.services, task, inputs))


@strawberry.type
class PredictionMutation:
    @strawberry.mutation(
        permission_classes=GUARDED,
        description="Explain, route and store one prediction. entityKey (else "
        "idempotencyKey) keeps the caller on the same side of a canary.",
    )
    async def predict(
        self, info: Info, task: str, input: JSON, idempotency_key: str | None = None,
        entity_key: str | None = None,
    ) -> Prediction:
        ctx = info.context
        row = await predictions.predict(ctx.services, ctx.caller(), task, input, idempotency_key,
                                        entity_key)
        return Prediction.from_row(row)

    @strawberry.mutation(
        permission_classes=GUARDED,
        description="Many predictions, validated together, stored together; entityKeys "
        "(one per input) keep each entity on the same side of a canary; idempotencyKeys "
        "(one per input, null for none) make a retried batch answer the inputs it stored "
        "before with their stored predictions and store only the rest.",
    )
    async def predict_batch(self, info: Info, task: str, inputs: list[JSON],
                            entity_keys: list[str | None] | None = None,
                            idempotency_keys: list[str | None] | None = None,
                            ) -> list[Prediction]:
        ctx = info.context
        rows = await predictions.predict_batch(ctx.services, ctx.caller(), task, inputs,
                                               entity_keys, idempotency_keys=idempotency_keys)
        return [Prediction.from_row(r) for r in rows]

