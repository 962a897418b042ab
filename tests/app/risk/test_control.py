"""Learn-then-Test thresholds against a brute-force walk over the grid."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.risk.certificates import control_risk, levels
from app.risk.control import GRID, CalibrationRows, certify, error_scores, fixed_sequence
from app.risk.report import describe


def _cdf(k: int, n: int, eps: float) -> float:
    """P(Binomial(n, eps) <= k), term by term in logs (no overflow at large n)."""
    return sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                        + i * math.log(eps) + (n - i) * math.log1p(-eps))
               for i in range(k + 1))


def _walk(scores: np.ndarray, errors: np.ndarray, eps: float, level: float,
          at_least: float) -> float | None:
    """Walk the grid from its strictest threshold: skip those letting through fewer than
    ``at_least`` rows, then keep the last threshold whose binomial tail is <= level."""
    chosen, started = None, False
    for t in GRID:
        auto = [bool(e) for s, e in zip(scores, errors, strict=True) if s <= t]
        n, k = len(auto), sum(auto)
        if n < at_least and not started:
            continue
        started = True
        p = _cdf(k, n, eps)
        if p > level:
            break
        chosen = float(t)
    return chosen


def _brute_force(scores: np.ndarray, errors: np.ndarray, eps: float, delta: float
                 ) -> float | None:
    """Two walks: at 0.8 delta from the threshold (with enough rows to reject at that level)
    whose p-value with the errors the scores expect (their sum, rounded down) is smallest;
    at 0.2 delta from the first with half the rows. The laxer rejection wins."""
    guided, half = 0.8 * delta, 0.2 * delta
    least = next(n for n in range(1, 10**6) if (1 - eps) ** n <= guided)
    best, start = 2.0, None
    for t in GRID:
        mine = [s for s in scores if s <= t]
        if len(mine) < least:
            continue
        p = _cdf(math.floor(sum(mine)), len(mine), eps)
        if p < best:
            best, start = p, len(mine)
    least_half = next(n for n in range(1, 10**6) if (1 - eps) ** n <= half)
    walks = [_walk(scores, errors, eps, half, max(least_half, len(scores) / 2))]
    if start is not None:
        walks.append(_walk(scores, errors, eps, guided, start))
    return max((w for w in walks if w is not None), default=None)


def _rows(seed: int, n: int, quality: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0, 0.6, n)
    errors = rng.random(n) < scores * quality  # the higher the score, the likelier an error
    return scores, errors


@pytest.mark.parametrize(("seed", "n", "eps", "delta", "quality", "certified"), [
    (0, 1500, 0.05, 0.1, 0.2, True), (1, 300, 0.1, 0.1, 0.3, True),
    (4, 600, 0.1, 0.1, 0.5, True), (3, 60, 0.05, 0.1, 0.5, False)])
def test_certified_threshold_matches_brute_force(seed: int, n: int, eps: float, delta: float,
                                                 quality: float, certified: bool) -> None:
    scores, errors = _rows(seed, n, quality)
    got = certify(scores, errors, eps, delta)
    expected = _brute_force(scores, errors, eps, delta)
    assert got.threshold == expected
    assert got.certified == (expected is not None) == certified
    if expected is not None:
        auto = scores <= expected
        assert (got.auto_rows, got.auto_errors) == (auto.sum(), (auto & errors).sum())
        assert got.expected_routing_rate == pytest.approx(1 - auto.mean())


def test_too_few_rows_cannot_certify_and_say_how_many_would() -> None:
    scores, errors = _rows(4, 36, 0.2)
    got = certify(scores, errors, 0.05, 0.1)
    assert not got.certified and got.threshold is None and got.expected_routing_rate == 1.0
    assert got.rows_needed is not None and got.rows_needed > 36
    bigger = _rows(4, got.rows_needed * 3, 0.2)
    assert certify(*bigger, 0.05, 0.1).certified


def test_fixed_sequence_stops_at_the_first_acceptance() -> None:
    p = np.array([0.5, 0.01, 0.02, 0.3, 0.01])
    assert fixed_sequence(p, 0.1, 1) == 2
    assert fixed_sequence(p, 0.1, 0) is None
    assert fixed_sequence(p, 0.1, 4) == 4


def test_error_scores_stay_in_the_unit_interval() -> None:
    scores = error_scores(np.array([[1.0 + 1e-16, -1.7e-16], [0.5, 0.5]]))
    assert scores.tolist() == [0.0, 0.5]


def test_class_scope_certifies_each_testable_class_at_delta_over_their_number() -> None:
    rng = np.random.default_rng(5)
    proba = rng.dirichlet([1, 1], 2000)
    y = np.where(rng.random(2000) < proba[:, 1], 1, 0)
    rows = CalibrationRows.of(proba, y)
    risk = control_risk(rows, ("a", "b"), 0.15, 0.9, "class")
    for k, cert in enumerate(risk.classes):
        mine = rows.predicted == k
        again = certify(rows.scores[mine], rows.errors[mine], 0.15, 0.05, cert.label)
        assert cert == again and cert.certified
    # a third class predicted 12 times cannot be tested: it takes no share of delta
    rare = np.vstack([np.column_stack([proba, np.zeros(2000)]), [[0.1, 0.1, 0.8]] * 12])
    rows3 = CalibrationRows.of(rare, np.concatenate([y, np.full(12, 2)]))
    three = control_risk(rows3, ("a", "b", "c"), 0.15, 0.9, "class")
    assert three.classes[:2] == risk.classes and not three.classes[2].certified
    _, auto = risk.auto(proba)
    assert risk.overall.auto_rows == auto.sum()
    overall = control_risk(rows, ("a", "b"), 0.1, 0.9, "overall")
    assert overall.overall == certify(rows.scores, rows.errors, 0.1, 0.1)
    assert {c.threshold for c in overall.classes} == {overall.overall.threshold}


def test_stored_rows_round_trip() -> None:
    rows = CalibrationRows.of(np.array([[0.7, 0.3], [0.2, 0.8]]), np.array([1, 1]))
    again = CalibrationRows.from_json(rows.to_json())
    assert again.errors.tolist() == [True, False] and again.predicted.tolist() == [0, 1]
    assert CalibrationRows.from_json(None).scores.size == 0


def test_the_bound_holds_over_calibration_draws() -> None:
    """Scores uniform on [0, 0.6], P(error | s) = s / 5: the AUTO error of threshold t is
    t / 10, so certifying t above 10 epsilon breaks the bound. It may happen in at most
    delta of the draws (plus the Monte Carlo error of 300 draws)."""
    eps, delta, broken, certified = 0.05, 0.1, 0, 0
    for seed in range(300):
        cert = certify(*_rows(seed, 500, 0.2), eps, delta)
        certified += cert.certified
        broken += cert.certified and cert.threshold is not None and cert.threshold / 10 > eps
    assert certified >= 150, "the test must certify something to check the bound"
    assert broken / 300 <= delta + 0.03


def test_class_scope_bound_holds_for_every_class_at_once_over_draws() -> None:
    """Two predicted classes with the same known error curve (P(error | s) = s / 5, so
    threshold t lets through AUTO error t / 10): a draw breaks the promise when any class's
    certified threshold is above 10 epsilon. Bonferroni over the classes keeps such draws
    at most delta (plus the Monte Carlo error of 300 draws; seeds fixed)."""
    eps, delta, broken, certified = 0.05, 0.1, 0, 0
    for seed in range(300):
        rng = np.random.default_rng(1000 + seed)
        scores = rng.uniform(0, 0.6, 2000)
        errors = rng.random(2000) < scores * 0.2
        predicted = (rng.random(2000) < 0.5).astype(int)
        risk = control_risk(CalibrationRows(scores, predicted, errors), ("a", "b"), eps,
                            1 - delta, "class")
        thresholds = [c.threshold for c in risk.classes if c.certified]
        certified += len(thresholds) == 2
        broken += any(t is not None and t / 10 > eps for t in thresholds)
    assert certified >= 150, "the test must certify something to check the bound"
    assert broken / 300 <= delta + 0.03


def test_cross_fitted_rows_round_trip_and_are_said() -> None:
    rng = np.random.default_rng(8)
    proba = rng.dirichlet([1, 1], 3000)
    y = np.where(rng.random(3000) < proba[:, 1], 1, 0)
    exact = CalibrationRows.of(proba, y)
    rows = CalibrationRows(exact.scores, exact.predicted, exact.errors, 1000)
    again = CalibrationRows.from_json(rows.to_json())
    assert again.exact_rows == 1000 and again.cross_fitted == 2000
    assert CalibrationRows.from_json(exact.to_json()).cross_fitted == 0
    risk = control_risk(again, ("a", "b"), 0.15, 0.9, "class")
    assert risk.cross_fitted == 2000 and risk.to_json()["cross_fitted"] == 2000
    assert "2000 of them out-of-fold" in describe(risk)[0]
    assert "out-of-fold" not in describe(control_risk(exact, ("a", "b"), 0.15, 0.9,
                                                       "class"))[0]


def test_delta_is_weighted_towards_the_classes_whose_scores_promise() -> None:
    rng = np.random.default_rng(2)
    sure, doubtful, rare = rng.uniform(0, 0.05, 800), rng.uniform(0.4, 0.6, 300), \
        rng.uniform(0, 0.05, 5)
    assert levels([sure, doubtful, rare], 0.05, 0.1) == pytest.approx([0.09, 0.01, 0.1 / 3])
    # nothing promises (underconfident scores): every testable class gets an even share
    assert levels([doubtful, doubtful, rare], 0.05, 0.1) == pytest.approx([0.05, 0.05, 0.1 / 3])
    assert levels([sure, sure], 0.05, 0.1) == pytest.approx([0.05, 0.05])


def test_weighted_class_scope_holds_over_draws_when_the_scores_mislead() -> None:
    """Class a (scores 0-0.3): P(error | s) = s / 2, AUTO error t / 4 under threshold t;
    class b looks hopeless (scores 0.4-0.6) but is underconfident: P(error | s) = (s - 0.4)
    * 0.6, AUTO error (t - 0.4) * 0.3 (t at most the largest score). A draw breaks the
    promise when either certified threshold lets through more than epsilon: at most delta
    of the draws (17 of 300 with these seeds), b still certified in most."""
    eps, delta, broken, certified_b = 0.05, 0.1, 0, 0
    for seed in range(300):
        rng = np.random.default_rng(5000 + seed)
        a, b = rng.uniform(0, 0.3, 1500), rng.uniform(0.4, 0.6, 1500)
        errors = np.concatenate([rng.random(1500) < a / 2, rng.random(1500) < (b - 0.4) * 0.6])
        rows = CalibrationRows(np.concatenate([a, b]), np.repeat([0, 1], 1500), errors)
        risk = control_risk(rows, ("a", "b"), eps, 1 - delta, "class")
        ta, tb = (c.threshold if c.certified else None for c in risk.classes)
        certified_b += tb is not None
        broken += (ta is not None and min(ta, 0.3) / 4 > eps) or (
            tb is not None and (min(tb, 0.6) - 0.4) * 0.3 > eps)
    assert certified_b >= 150, "the misleading class must still be certified at times"
    assert broken / 300 <= delta + 0.03
