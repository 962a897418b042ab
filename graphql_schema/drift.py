"""Monitoring over GraphQL: drift (``app.drift.checks``), live AUTO quality and outcomes
(``app.quality``); thin resolvers."""

from __future__ import annotations

from datetime import datetime

import strawberry

from app.db.engine import read
from app.drift import report as drift
from app.drift.checks import compute_report, latest_report
from app.quality.estimates import QualityRow, auto_quality
from app.quality.outcomes import OutcomeInput as OutcomeRecord
from app.quality.outcomes import record_outcomes
from graphql_schema.enums import Verdict
from graphql_schema.permissions import GUARDED, Info


@strawberry.type(description="One feature's (or prediction output's) drift test.")
class FeatureDrift:
    feature: str = strawberry.field(description="The input feature, or predicted_class / "
                                    "probability in `prediction`.")
    kind: str = strawberry.field(description="numeric or categorical (booleans included).")
    test: str | None = strawberry.field(
        description="ks, wasserstein, chi2 or jensenshannon; null when not tested.")
    statistic: float | None = strawberry.field(
        description="The test's value: a p-value (ks, chi2) or a distance (wasserstein in "
        "reference standard deviations, jensenshannon).")
    value: float | None = strawberry.field(
        description="Same as statistic.",
        deprecation_reason="Use statistic; value repeats it and will be removed.")
    p_value: float | None = strawberry.field(description="The p-value, for ks and chi2.")
    threshold: float | None = strawberry.field(
        description="Drift when a p-value is below it, or a distance above it.")
    drifted: bool = strawberry.field(description="Whether this feature drifted.")
    status: Verdict = strawberry.field(
        description="INSUFFICIENT_DATA when too few recent values were present to test.")
    sample_size: int = strawberry.field(description="Recent values tested (missing excluded).")
    reference_size: int = strawberry.field(description="Reference values compared with.")
    current_mean: float | None = strawberry.field(description="Mean of recent values (numeric).")
    reference_mean: float | None = strawberry.field(description="Mean of the reference sample.")

    @classmethod
    def from_result(cls, r: drift.FeatureResult) -> FeatureDrift:
        return cls(feature=r.feature, kind=r.kind, test=r.test, statistic=r.statistic,
                   value=r.statistic, p_value=r.p_value, threshold=r.threshold,
                   drifted=r.drifted, status=Verdict(r.status), sample_size=r.sample_size,
                   reference_size=r.reference_size, current_mean=r.current_mean,
                   reference_mean=r.reference_mean)


@strawberry.type(description="A share of the predictions made in one bucket of the window.")
class RateBucket:
    start: datetime = strawberry.field(description="Start of the bucket (a 12th of the window).")
    rate: float | None = strawberry.field(description="The share; null when count is 0.")
    count: int = strawberry.field(description="Predictions the share is taken over.")


@strawberry.type(description="A task's drift: recent inputs and predictions against what its "
                 "LIVE release learned from, and its routing and overturn rates over time.")
class DriftReport:
    task: str
    release: int = strawberry.field(description="Version of the LIVE release compared with.")
    window: str = strawberry.field(description="How far back predictions were read, e.g. 24h.")
    since: datetime = strawberry.field(description="Start of the window.")
    computed_at: datetime
    verdict: Verdict
    drifted: bool = strawberry.field(
        description="Share of drifted features >= the task's drift.share threshold.")
    rows: int = strawberry.field(description="Recent predictions read.")
    share: float = strawberry.field(description="Share of tested features that drifted.")
    share_threshold: float
    message: str = strawberry.field(description="The verdict in words.")
    drifted_features: list[str]
    features: list[FeatureDrift] = strawberry.field(description="One test per input feature.")
    prediction: list[FeatureDrift] = strawberry.field(
        description="The LIVE release's predicted class and top probability against its "
        "predictions on its held-out rows (empty without a prediction reference).")
    prediction_drifted: bool
    routing_rate: list[RateBucket] = strawberry.field(
        description="Share of predictions routed to REVIEW, per bucket.")
    overturn_rate: list[RateBucket] = strawberry.field(
        description="Share of reviewed predictions whose final label differs from the "
        "model's, per bucket.")
    outcome_error_rate: list[RateBucket] = strawberry.field(
        description="Share of predictions with a recorded outcome whose outcome differs "
        "from the model's label, per bucket of when they were predicted (outcomes arrive "
        "late: recent buckets fill in as they do).")

    @classmethod
    def from_report(cls, r: drift.DriftReport) -> DriftReport:
        def buckets(items: list[drift.RateBucket]) -> list[RateBucket]:
            return [RateBucket(start=b.start, rate=b.rate, count=b.count) for b in items]
        return cls(task=r.task, release=r.release, window=r.window, since=r.since,
                   computed_at=r.computed_at, verdict=Verdict(r.verdict),
                   drifted=r.drifted, rows=r.rows, share=r.share,
                   share_threshold=r.share_threshold, message=r.message,
                   drifted_features=r.drifted_features,
                   features=[FeatureDrift.from_result(f) for f in r.features],
                   prediction=[FeatureDrift.from_result(f) for f in r.prediction],
                   prediction_drifted=r.prediction_drifted,
                   routing_rate=buckets(r.routing_rate), overturn_rate=buckets(r.overturn_rate),
                   outcome_error_rate=buckets(r.outcome_error_rate))


@strawberry.type
class DriftQuery:
    @strawberry.field(
        permission_classes=GUARDED,
        description="Compute the task's drift now over `window` (e.g. \"90m\", \"24h\", "
        "\"7d\"; default: the task's drift.window) against its LIVE release.")
    async def drift_report(self, info: Info, task: str,
                           window: str | None = None) -> DriftReport:
        services = info.context.services
        spec = services.registry.task(task)
        _, report = await compute_report(services.sessions, services.settings.artifacts_dir,
                                         spec, window)
        return DriftReport.from_report(report)

    @strawberry.field(permission_classes=GUARDED,
                      description="The report the periodic drift check stored last, if any.")
    async def latest_drift_report(self, info: Info, task: str) -> DriftReport | None:
        services = info.context.services
        services.registry.task(task)
        report = await read(services.sessions, latest_report, task)
        return None if report is None else DriftReport.from_report(report)


@strawberry.type(description="Live error of AUTO predictions of one predicted class (label "
                 "null: all), from the uniform audit sample and recorded outcomes, with a "
                 "time-uniform confidence interval (a confidence sequence).")
class AutoQuality:
    label: str | None = strawberry.field(description="The predicted class; null overall.")
    n: int = strawberry.field(description="Labelled AUTO predictions (audit sample reviewed, "
                              "or with an outcome).")
    errors: int = strawberry.field(description="Of them, how many were wrong.")
    estimate: float | None = strawberry.field(description="errors / n; null when n is 0.")
    lower_bound: float = strawberry.field(description="Lower end of the interval.")
    upper_bound: float = strawberry.field(description="Upper end of the interval.")
    confidence: float = strawberry.field(
        description="Confidence of the interval, valid at every check at once: "
        "risk_confidence overall, risk_confidence split over the classes per class.")
    max_auto_error: float | None = strawberry.field(
        description="The task's bound (epsilon); null when it sets none.")
    exceeded: bool = strawberry.field(
        description="The lower bound is above maxAutoError: the bound is broken.")

    @classmethod
    def from_row(cls, r: QualityRow) -> AutoQuality:
        b = r.bounds
        return cls(label=r.label, n=b.n, errors=b.errors, estimate=b.estimate,
                   lower_bound=b.lower, upper_bound=b.upper, confidence=r.confidence,
                   max_auto_error=r.max_auto_error, exceeded=r.exceeded)


@strawberry.input(description="What really happened to the subject of one prediction, named "
                  "by predictionId or entityKey (its newest prediction before observedAt).")
class OutcomeInput:
    label: str = strawberry.field(description="The true class.")
    prediction_id: strawberry.ID | None = None
    entity_key: str | None = strawberry.field(
        default=None, description="The entityKey (else idempotencyKey) it was predicted with.")
    observed_at: datetime | None = strawberry.field(
        default=None, description="When it was observed (default: now).")


@strawberry.type(description="What recordOutcomes stored.")
class OutcomesRecorded:
    recorded: int = strawberry.field(description="Outcomes stored by this call.")
    unchanged: int = strawberry.field(description="Outcomes stored before with the same "
                                      "label (a repeated call changes nothing).")


@strawberry.type
class QualityQuery:
    @strawberry.field(
        permission_classes=GUARDED,
        description="Live AUTO error of a release (default: LIVE) since a time (default: "
        "ever), overall first, then per predicted class.")
    async def auto_quality(self, info: Info, task: str, release: int | None = None,
                           since: datetime | None = None) -> list[AutoQuality]:
        services = info.context.services
        spec = services.registry.task(task)
        quality = await read(services.sessions, auto_quality, spec, release, since)
        return [] if quality is None else [AutoQuality.from_row(r) for r in quality.rows]


@strawberry.type
class QualityMutation:
    @strawberry.mutation(
        permission_classes=GUARDED,
        description="Record outcomes (ground truth that arrived later). All are checked "
        "first: any problem refuses them all and stores nothing; a repeated outcome is "
        "unchanged. They feed live AUTO quality and retraining (label source `outcome`). A "
        "predictor names only its own predictions (others' look absent); an admin any.")
    async def record_outcomes(self, info: Info, task: str,
                              outcomes: list[OutcomeInput]) -> OutcomesRecorded:
        ctx = info.context
        spec = ctx.services.registry.task(task)
        given = [OutcomeRecord(f"outcome {i}", o.label, o.prediction_id, o.entity_key,
                               o.observed_at) for i, o in enumerate(outcomes, start=1)]
        caller = ctx.caller()
        done = await record_outcomes(
            ctx.services.sessions, spec, given, caller.actor,
            ctx.services.settings.max_batch_size,
            caller_key_id=None if caller.reads_everything else caller.key_id)
        return OutcomesRecorded(recorded=done.recorded, unchanged=done.unchanged)
