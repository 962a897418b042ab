"""Conformal prediction sets: the coverage guarantee holds on new data, sets grow with the
confidence level, and a release's calibration survives being stored as JSON."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from app.examples.loan import generate
from app.ml.algorithms import OutputSpace
from app.ml.conformal import ConformalCalibration, calibrate
from app.ml.data import training_arrays
from app.ml.ensemble import Ensemble, served_probabilities
from app.ml.task import TaskSpec
from app.ml.training import TrainedRelease

HOLDOUT_SEED = 777  # not the training seed (2026)
LEVELS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)


@pytest.fixture(scope="module")
def holdout(loan_task: TaskSpec, loan_ensemble: Ensemble) -> tuple[np.ndarray, np.ndarray]:
    """(ensemble probabilities, true classes) on 3,000 fresh rows from the same process."""
    X, y = training_arrays(loan_task, generate(rows=3000, seed=HOLDOUT_SEED))
    return loan_ensemble.probabilities(X), y


def coverage(sets: np.ndarray, y: np.ndarray) -> float:
    return float(sets[np.arange(len(y)), y].mean())


def test_release_calibration_uses_the_task_level(loan_task: TaskSpec,
                                                 loan_release: TrainedRelease) -> None:
    calibration = loan_release.calibration.conformal
    assert calibration.confidence_level == loan_task.review.confidence_level == 0.9
    assert len(calibration.alphas) == loan_release.rows["calibration"] == 1200
    assert all(0.0 <= a <= 1.0 for a in calibration.alphas)


def test_coverage_on_new_data_meets_the_confidence_level(
        loan_release: TrainedRelease, holdout: tuple[np.ndarray, np.ndarray]) -> None:
    proba, y = holdout
    calibration = loan_release.calibration.conformal
    sets = calibration.prediction_sets(proba)
    assert sets.shape == proba.shape and sets.dtype == bool
    assert coverage(sets, y) >= calibration.confidence_level - 0.03
    # and the sets are informative, not every class every time
    assert sets.sum(axis=1).mean() < len(proba[0])


@pytest.mark.parametrize("level", [0.8, 0.95])
def test_coverage_holds_at_other_levels(
        loan_release: TrainedRelease, holdout: tuple[np.ndarray, np.ndarray],
        level: float) -> None:
    proba, y = holdout
    calibration = ConformalCalibration(level, loan_release.calibration.conformal.alphas)
    assert coverage(calibration.prediction_sets(proba), y) >= level - 0.03


def test_training_reports_the_coverage_it_measured(loan_release: TrainedRelease) -> None:
    m = loan_release.metrics
    assert m["confidence_level"] == 0.9
    assert m["conformal_coverage"] >= 0.9 - 0.03
    assert 0.0 < m["conformal_singleton_rate"] <= 1.0
    assert 0.0 < m["conformal_mean_set_size"] <= len(loan_release.task.classes)


def test_higher_confidence_never_shrinks_a_set(
        loan_release: TrainedRelease, holdout: tuple[np.ndarray, np.ndarray]) -> None:
    proba, _ = holdout
    alphas = loan_release.calibration.conformal.alphas
    sets = [ConformalCalibration(level, alphas).prediction_sets(proba) for level in LEVELS]
    for lower, higher in itertools.pairwise(sets):
        assert (lower <= higher).all(), "a class in the set at a lower level stays in it"
        assert (lower.sum(axis=1) <= higher.sum(axis=1)).all()
    sizes = [s.sum(axis=1).mean() for s in sets]
    assert sizes[-1] > sizes[0], "the levels actually differ"


def test_calibration_json_round_trip(loan_release: TrainedRelease,
                                     holdout: tuple[np.ndarray, np.ndarray]) -> None:
    calibration = loan_release.calibration.conformal
    stored = json.loads(json.dumps(calibration.to_json()))
    assert stored["method"] == "split_conformal_hinge"
    assert stored["confidence_level"] == calibration.confidence_level
    assert stored["threshold"] == calibration.threshold
    restored = ConformalCalibration.from_json(stored)
    assert restored == calibration
    proba, _ = holdout
    np.testing.assert_array_equal(restored.prediction_sets(proba),
                                  calibration.prediction_sets(proba))


def test_calibrate_computes_hinge_scores() -> None:
    proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.25, 0.5, 0.25]])
    calibration = calibrate(proba, np.array([0, 2, 0]), 0.9)
    assert calibration.alphas == pytest.approx((0.3, 0.4, 0.75))
    assert calibration.confidence_level == 0.9


@pytest.mark.parametrize(
    ("n", "level"),
    [
        (1200, 0.9),  # the loan_default release
        (114, 0.95),  # the breast_cancer release
        (57, 0.8),
        (114, 0.8),  # (n + 1) * level is a whole number (92)
        (10, 0.95),  # ceil((n + 1) * level) > n: every class is in every set
        (57, 0.99),  # idem
    ],
)
def test_threshold_is_what_the_sets_use(n: int, level: float) -> None:
    """The stored threshold is shown to people as "the largest nonconformity score still
    inside a set": a class is in the set exactly when 1 - p(class) <= threshold."""
    rng = np.random.default_rng(n)
    calibration = ConformalCalibration(level, tuple(float(a) for a in rng.uniform(0, 1, n)))
    proba = rng.dirichlet(np.ones(3), 3000)
    sets = calibration.prediction_sets(proba)
    np.testing.assert_array_equal(sets, (1.0 - proba) <= calibration.threshold)


def test_reported_coverage_comes_with_its_exact_interval(loan_release: TrainedRelease) -> None:
    m = loan_release.metrics
    low, high = m["conformal_coverage_interval"]
    n = loan_release.rows["test"]
    assert low < m["conformal_coverage"] < high
    # Clopper-Pearson at 95 %: wider than the normal approximation's 1.96 standard errors
    p = m["conformal_coverage"]
    assert high - low > 2 * 1.96 * (p * (1 - p) / n) ** 0.5


def test_served_probabilities_lie_in_the_unit_interval() -> None:
    """A weighted mean of probabilities can leave [0, 1] by a rounding error."""
    served = served_probabilities(OutputSpace.PROBABILITY, np.array([[1 + 2e-16, -1.7e-16]]))
    assert served.min() >= 0.0 and served.max() <= 1.0
