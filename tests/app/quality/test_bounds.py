"""The confidence sequence behind the live AUTO-quality alarm, on simulated Bernoulli
streams of AUTO errors (seeds fixed): it alarms soon after a shift, never on unshifted
traffic however often it is checked, and its interval holds the true rate."""

from __future__ import annotations

import numpy as np
import pytest

from app.quality.bounds import confidence_sequence, exceeds, first_alarm

EPSILON = 0.05
ALPHA = 0.1 / 3  # risk_confidence 0.9 split over loan_default's three classes
SEEDS = range(20)


@pytest.mark.parametrize("shifted_rate", [0.15, 0.2, 0.3])
def test_a_shift_alarms_within_500_labelled_predictions(shifted_rate: float) -> None:
    for seed in SEEDS:
        stream = np.random.default_rng(seed).random(500) < shifted_rate
        assert first_alarm(stream, EPSILON, ALPHA, every=1) is not None, seed


@pytest.mark.parametrize("rate", [0.02, 0.035])
def test_no_alarm_over_10000_unshifted_predictions_checked_after_each(rate: float) -> None:
    for seed in SEEDS:
        stream = np.random.default_rng(seed).random(10_000) < rate
        # checked after every label: the bound is time-uniform, so this many looks are free
        assert first_alarm(stream, EPSILON, ALPHA, every=1) is None, seed


def test_at_the_bound_itself_false_alarms_stay_under_alpha() -> None:
    """True rate exactly epsilon (the worst case of the null): the share of 200 streams of
    2,000 labels that ever alarm, checked every 10 labels, is below alpha."""
    rng = np.random.default_rng(7)
    alarmed = sum(first_alarm(rng.random(2_000) < EPSILON, EPSILON, ALPHA, every=10) is not None
                  for _ in range(200))
    assert alarmed / 200 <= ALPHA


def test_the_interval_holds_the_true_rate_and_narrows() -> None:
    rng = np.random.default_rng(3)
    stream = rng.random(5_000) < 0.1
    widths = []
    for n in (50, 500, 5_000):
        b = confidence_sequence(n, int(stream[:n].sum()), 0.1)
        assert b.lower <= 0.1 <= b.upper
        assert b.lower <= b.estimate <= b.upper  # type: ignore[operator]
        widths.append(b.upper - b.lower)
    assert widths == sorted(widths, reverse=True)


def test_no_labels_bound_nothing() -> None:
    b = confidence_sequence(0, 0, 0.1)
    assert (b.lower, b.upper, b.estimate) == (0.0, 1.0, None)
    assert not exceeds(b, EPSILON)
    with pytest.raises(ValueError, match="errors must lie"):
        confidence_sequence(3, 4, 0.1)
