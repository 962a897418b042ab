"""Routing: AUTO only when nothing calls for people; every reason that applied is given."""

from __future__ import annotations

import numpy as np
import pytest

from app.examples.loan import generate
from app.ml.contract import frame_to_matrix
from app.ml.ensemble import Ensemble, MemberColumns, Outputs
from app.ml.routing import Reason, Route, audit_draw, decide_routes
from app.ml.task import ReviewPolicy
from app.ml.training import TrainedRelease
from app.risk.certificates import RiskControl, control_risk
from app.risk.control import CalibrationRows

CLASSES = ("repaid", "late", "default")
QUIET = ReviewPolicy(confidence_level=0.9, route_on_disagreement=True, audit_rate=0.0)


def member(name: str, proba: list[float] | None, error: str | None = None) -> MemberColumns:
    if proba is None:
        return MemberColumns(name, "1", 0.5, error=error)
    return MemberColumns(name, "1", 0.5, probabilities=np.array([proba]), base=np.zeros(3),
                         contributions=np.zeros((1, 2, 3)), scores=np.zeros((1, 3)))


def row(prediction_set: list[bool], members: list[MemberColumns] | None = None) -> Outputs:
    """One row's outputs, as the ensemble gives them for a batch."""
    if members is None:
        members = [member("logistic", [0.8, 0.15, 0.05]), member("boosted", [0.7, 0.2, 0.1])]
    return Outputs(
        probabilities=np.array([[0.75, 0.17, 0.08]]), labels=np.array([0]),
        prediction_sets=np.array([prediction_set], dtype=bool), base=np.array([0.1, 0.0, 0.0]),
        contributions=np.array([[[0.2, 0, 0], [-0.1, 0, 0]]]), scores=np.array([[0.2, 0, 0]]),
        members=members, X=np.zeros((1, 2)), ood_flags=np.zeros(1, dtype=bool),
    )


def decide_route(policy: ReviewPolicy, classes: tuple[str, ...], outputs: Outputs,
                 prediction_id: str) -> tuple[Route, list[Reason]]:
    """The decision for a one-row batch."""
    [decided] = decide_routes(policy, classes, outputs, [prediction_id])
    return decided


def codes(reasons: list[Reason]) -> list[str]:
    return [r.code for r in reasons]


def never_audited(prefix: str = "p") -> str:
    """An id whose audit draw is not tiny, so an audit rate of a few % leaves it alone."""
    return next(f"{prefix}-{i}" for i in range(1000) if audit_draw(f"{prefix}-{i}") > 0.5)


# --- audit draw ---------------------------------------------------------------------------


def test_audit_draw_is_fixed_by_the_id() -> None:
    assert audit_draw("prediction-42") == audit_draw("prediction-42")
    assert audit_draw("prediction-42") != audit_draw("prediction-43")
    assert 0.0 <= audit_draw("") < 1.0


def test_audit_draw_is_uniform() -> None:
    draws = np.array([audit_draw(f"pred-{i:06d}") for i in range(20_000)])
    assert ((draws >= 0) & (draws < 1)).all()
    assert 0.09 <= (draws < 0.1).mean() <= 0.11
    assert 0.49 <= (draws < 0.5).mean() <= 0.51
    counts, _ = np.histogram(draws, bins=10, range=(0, 1))
    assert (np.abs(counts / len(draws) - 0.1) <= 0.01).all()


# --- decisions ---------------------------------------------------------------------------


def test_auto_when_nothing_applies() -> None:
    route, reasons = decide_route(QUIET, CLASSES, row([True, False, False]), never_audited())
    assert route is Route.AUTO
    assert reasons == []


@pytest.mark.parametrize(
    ("prediction_set", "size", "words"),
    [
        ([True, True, False], 2, "holds 2 classes (repaid, late)"),
        ([True, True, True], 3, "holds 3 classes (repaid, late, default)"),
        ([False, False, False], 0, "is empty"),
    ],
)
def test_low_confidence_unless_exactly_one_class(prediction_set: list[bool], size: int,
                                                 words: str) -> None:
    route, reasons = decide_route(QUIET, CLASSES, row(prediction_set), never_audited())
    assert route is Route.REVIEW
    assert codes(reasons) == ["LOW_CONFIDENCE"]
    reason = reasons[0]
    assert reason.value == size and reason.threshold == 1
    assert words in reason.detail
    assert "90%" in reason.detail


def test_member_disagreement() -> None:
    members = [member("logistic", [0.6, 0.3, 0.1]), member("boosted", [0.2, 0.3, 0.5])]
    route, reasons = decide_route(QUIET, CLASSES, row([True, False, False], members),
                                  never_audited())
    assert route is Route.REVIEW
    assert codes(reasons) == ["MEMBER_DISAGREEMENT"]
    assert reasons[0].value == {"logistic": "repaid", "boosted": "default"}
    assert "logistic=repaid" in reasons[0].detail and "boosted=default" in reasons[0].detail


def test_disagreement_can_be_switched_off() -> None:
    policy = ReviewPolicy(confidence_level=0.9, route_on_disagreement=False, audit_rate=0.0)
    members = [member("logistic", [0.6, 0.3, 0.1]), member("boosted", [0.2, 0.3, 0.5])]
    route, reasons = decide_route(policy, CLASSES, row([True, False, False], members),
                                  never_audited())
    assert (route, reasons) == (Route.AUTO, [])


def test_member_failure() -> None:
    members = [member("logistic", [0.8, 0.15, 0.05]),
               member("boosted", None, error="RuntimeError: member is broken")]
    route, reasons = decide_route(QUIET, CLASSES, row([True, False, False], members),
                                  never_audited())
    assert route is Route.REVIEW
    assert codes(reasons) == ["MEMBER_FAILURE"]
    assert reasons[0].value == "boosted"
    assert "RuntimeError: member is broken" in reasons[0].detail


def test_audit_sample_with_rate_one() -> None:
    policy = ReviewPolicy(confidence_level=0.9, route_on_disagreement=True, audit_rate=1.0)
    route, reasons = decide_route(policy, CLASSES, row([True, False, False]), "any-id")
    assert route is Route.REVIEW
    assert codes(reasons) == ["AUDIT_SAMPLE"]
    assert reasons[0].value == audit_draw("any-id")
    assert reasons[0].threshold == 1.0


def test_audit_rate_zero_never_samples() -> None:
    for i in range(500):
        route, _ = decide_route(QUIET, CLASSES, row([True, False, False]), f"id-{i}")
        assert route is Route.AUTO


def test_audit_sample_follows_the_draw() -> None:
    policy = ReviewPolicy(confidence_level=0.9, audit_rate=0.3)
    for i in range(200):
        pid = f"pred-{i}"
        _, reasons = decide_route(policy, CLASSES, row([True, False, False]), pid)
        assert ("AUDIT_SAMPLE" in codes(reasons)) == (audit_draw(pid) < 0.3)


def test_every_reason_is_reported() -> None:
    policy = ReviewPolicy(confidence_level=0.95, route_on_disagreement=True, audit_rate=1.0)
    members = [member("logistic", [0.6, 0.3, 0.1]), member("boosted", [0.1, 0.7, 0.2]),
               member("forest", None, error="ValueError: bad")]
    route, reasons = decide_route(policy, CLASSES, row([True, True, False], members), "x")
    assert route is Route.REVIEW
    assert codes(reasons) == ["LOW_CONFIDENCE", "MEMBER_FAILURE", "MEMBER_DISAGREEMENT",
                              "AUDIT_SAMPLE"]
    assert all(set(r.to_json()) == {"code", "detail", "value", "threshold"} for r in reasons)


def test_routing_a_real_prediction(loan_ensemble: Ensemble) -> None:
    """On the trained loan ensemble, a row is AUTO exactly when its set is a single class,
    the members agree and the input is in distribution (no audit)."""
    outputs, errors = loan_ensemble.predict_columns(
        frame_to_matrix(loan_ensemble.task, generate(rows=200, seed=8)))
    assert outputs is not None and errors == {}
    policy = loan_ensemble.task.review.model_copy(update={"audit_rate": 0.0})
    decided = decide_routes(policy, loan_ensemble.task.classes, outputs, ["id"] * len(outputs))
    routes = set()
    for r, (route, reasons) in zip(outputs.rows(), decided, strict=True):
        labels = {int(np.argmax(m.probabilities)) for m in r.members
                  if m.probabilities is not None}
        assert r.ood is not None
        expected_auto = (int(r.prediction_set.sum()) == 1 and len(labels) == 1
                         and not r.ood.out_of_distribution)
        assert (route is Route.AUTO) == expected_auto
        assert (route is Route.AUTO) == (reasons == [])
        routes.add(route)
    assert routes == {Route.AUTO, Route.REVIEW}, "the sample holds both kinds of row"


# --- risk-controlled routing (max_auto_error) ---------------------------------------------


def risk_for(threshold_rows: int, scope: str = "class") -> RiskControl:
    """Risk control certified on calibration rows whose errors are rare below score 0.3."""
    rng = np.random.default_rng(0)
    proba = rng.dirichlet([4, 1, 1], threshold_rows)
    wrong = rng.random(threshold_rows) < np.where(1 - proba.max(axis=1) < 0.3, 0.01, 0.6)
    predicted = proba.argmax(axis=1)
    y = np.where(wrong, (predicted + 1) % 3, predicted)
    return control_risk(CalibrationRows.of(proba, y), CLASSES, 0.05, 0.9, scope)


RISKY = QUIET.model_copy(update={"max_auto_error": 0.05})


def test_risk_routes_by_the_certified_threshold_and_ignores_set_and_disagreement() -> None:
    risk = risk_for(3000)
    cert = risk.classes[0]
    assert cert.certified and cert.threshold is not None
    disagreeing = [member("logistic", [0.2, 0.7, 0.1]), member("boosted", [0.9, 0.05, 0.05])]
    outputs = row([True, True, False], disagreeing)  # top probability 0.75: score 0.25
    [(route, reasons)] = decide_routes(RISKY, CLASSES, outputs, [never_audited()], risk)
    assert cert.threshold >= 0.25, "errors are rare under 0.3: that much is certified"
    assert (route, reasons) == (Route.AUTO, [])
    outputs.probabilities[0] = [0.4, 0.35, 0.25]  # score 0.6: above any threshold here
    [(route, reasons)] = decide_routes(RISKY, CLASSES, outputs, [never_audited()], risk)
    assert route is Route.REVIEW and codes(reasons) == ["LOW_CONFIDENCE"]
    assert reasons[0].value == pytest.approx(0.6) and reasons[0].threshold == cert.threshold
    assert "certified for predictions of repaid" in reasons[0].detail
    assert "holds 2 classes (repaid, late)" in reasons[0].detail


def test_uncertified_class_routes_every_prediction_as_not_certified() -> None:
    risk = risk_for(40)
    assert not any(c.certified for c in risk.classes)
    outputs = row([True, False, False])
    outputs.probabilities[0] = [0.999, 0.0005, 0.0005]
    [(route, reasons)] = decide_routes(RISKY, CLASSES, outputs, [never_audited()], risk)
    assert route is Route.REVIEW and codes(reasons) == ["NOT_CERTIFIED"]
    cert = risk.classes[0]
    assert reasons[0].value == cert.calibration_rows and reasons[0].threshold == cert.rows_needed
    assert f"{cert.calibration_rows} calibration rows predicted repaid cannot certify AUTO " \
        "error <= 5.0% at 90% confidence" in reasons[0].detail


def test_risk_keeps_member_failure_ood_and_audit() -> None:
    risk = risk_for(3000, "overall")
    outputs = row([True, False, False], [member("logistic", [0.9, 0.05, 0.05]),
                                          member("boosted", None, error="boom")])
    outputs.probabilities[0] = [0.999, 0.0005, 0.0005]
    policy = RISKY.model_copy(update={"audit_rate": 1.0})
    [(_, reasons)] = decide_routes(policy, CLASSES, outputs, ["x"], risk)
    assert codes(reasons) == ["MEMBER_FAILURE", "AUDIT_SAMPLE"]


def test_empty_set_is_explained() -> None:
    [(_, reasons)] = decide_routes(QUIET, CLASSES, row([False, False, False]), [never_audited()])
    assert "is empty: no class is as probable as the true class was on 90%" in reasons[0].detail


def test_risk_routing_a_real_prediction(loan_ensemble: Ensemble, loan_release: TrainedRelease
                                        ) -> None:
    """On the trained loan ensemble: AUTO exactly when the class is certified, the score is
    at most its threshold and the input is in distribution."""
    policy = loan_ensemble.task.review.model_copy(
        update={"audit_rate": 0.0, "max_auto_error": 0.1})
    risk = loan_release.calibration.risk(loan_ensemble.task, policy)
    assert risk is not None
    outputs, _ = loan_ensemble.predict_columns(
        frame_to_matrix(loan_ensemble.task, generate(rows=300, seed=8)))
    assert outputs is not None
    decided = decide_routes(policy, loan_ensemble.task.classes, outputs, ["id"] * 300, risk)
    scores = 1 - outputs.probabilities.max(axis=1)
    for i, (route, reasons) in enumerate(decided):
        cert = risk.classes[int(outputs.labels[i])]
        expected = (cert.certified and scores[i] <= (cert.threshold or 0)
                    and not outputs.ood_flags[i])
        assert (route is Route.AUTO) == expected, reasons
    assert {r for r, _ in decided} == {Route.AUTO, Route.REVIEW}
