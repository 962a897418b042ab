"""Routing: AUTO only when nothing calls for people; every reason that applied is given."""

from __future__ import annotations

import numpy as np
import pytest

from app.examples.loan import generate
from app.ml.contract import frame_to_matrix
from app.ml.ensemble import Ensemble, MemberColumns, Outputs
from app.ml.routing import Reason, Route, audit_draw, decide_routes
from app.ml.task import ReviewPolicy

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
