"""A release's risk control over GraphQL: the certified bound on the error of AUTO
predictions, per predicted class and overall (``app.risk`` computes it)."""

from __future__ import annotations

import strawberry

from app.risk.certificates import RiskControl
from app.risk.control import Certificate
from graphql_schema.enums import AutoErrorScope


@strawberry.type(description="The test's outcome for the predictions of one class (or all).")
class ClassRisk:
    label: str | None = strawberry.field(description="The predicted class; null for all.")
    certified: bool = strawberry.field(
        description="A threshold is certified; if not, every prediction of it is reviewed "
        "with reason NOT_CERTIFIED.")
    threshold: float | None = strawberry.field(
        description="AUTO when the error score (1 - top probability) is at most this.")
    calibration_rows: int = strawberry.field(description="Calibration rows it was tested on.")
    auto_rows: int = strawberry.field(description="Calibration rows under the threshold.")
    auto_errors: int = strawberry.field(description="Of those, the wrongly predicted ones.")
    upper_bound: float | None = strawberry.field(
        description="Exact (Clopper-Pearson) upper bound of their error rate at "
        "risk_confidence. Descriptive: these rows also chose the threshold, so it is "
        "optimistic as an estimate of live error; the certificate is maxAutoError.")
    expected_routing_rate: float = strawberry.field(
        description="Share of its calibration rows the threshold sends to review.")
    rows_needed: int | None = strawberry.field(
        description="When not certified: about how many calibration rows would certify it.")

    @classmethod
    def of(cls, c: Certificate) -> ClassRisk:
        return cls(label=c.label, certified=c.certified, threshold=c.threshold,
                   calibration_rows=c.calibration_rows, auto_rows=c.auto_rows,
                   auto_errors=c.auto_errors, upper_bound=c.upper_bound,
                   expected_routing_rate=c.expected_routing_rate, rows_needed=c.rows_needed)


@strawberry.type(description="With probability riskConfidence over the calibration draw, "
                 "the error rate among AUTO predictions is at most maxAutoError (per class "
                 "or overall), certified by Learn-then-Test on the release's calibration rows.")
class ReleaseRisk:
    scope: AutoErrorScope
    max_auto_error: float
    risk_confidence: float
    classes: list[ClassRisk] = strawberry.field(description="One per class, in task order.")
    overall: ClassRisk = strawberry.field(description="All predictions together.")
    cross_fitted_rows: int = strawberry.field(
        description="Calibration rows scored out-of-fold by cross-fitted members "
        "(risk_calibration = \"cross_fit\"): with any, the bound is approximate.")

    @classmethod
    def of(cls, risk: RiskControl) -> ReleaseRisk:
        return cls(scope=AutoErrorScope(risk.scope), max_auto_error=risk.max_auto_error,
                   risk_confidence=risk.risk_confidence,
                   classes=[ClassRisk.of(c) for c in risk.classes],
                   overall=ClassRisk.of(risk.overall), cross_fitted_rows=risk.cross_fitted)
