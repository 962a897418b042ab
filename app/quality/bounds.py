"""Time-uniform bounds on an error rate from a stream of labelled AUTO predictions.

Robbins' mixture confidence sequence for a Bernoulli rate: with a uniform prior on the
rate, M_n(q) = B(k + 1, n - k + 1) / (q^k (1 - q)^(n - k)) is a nonnegative martingale
when the true rate is q, so by Ville's inequality P(M_n(q) >= 1/alpha for some n) <= alpha.
The set {q : M_n(q) < 1/alpha} therefore holds the true rate at every n at once with
probability >= 1 - alpha: the periodic check may look after every new label, as often as
it likes, without inflating false alarms (a fixed-n interval checked repeatedly would).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import betaln

GRID_STEP = 1e-4
# No alarm before this many labels: a uniform prior lets 2 errors in the first 3 labels
# alarm at a 5 % bound. Skipping checks keeps the guarantee (Ville holds at any times).
MIN_ALARM_LABELS = 20
_GRID = np.arange(1, int(1 / GRID_STEP)) * GRID_STEP  # (0, 1), open at both ends


@dataclass(frozen=True)
class Bounds:
    """A confidence-sequence interval for an error rate after n labelled predictions."""

    n: int
    errors: int
    lower: float
    upper: float

    @property
    def estimate(self) -> float | None:
        return self.errors / self.n if self.n else None


def log_mixture(n: int, errors: int, q: np.ndarray) -> np.ndarray:
    """log M_n(q) for every rate in ``q`` (strictly inside (0, 1))."""
    return betaln(errors + 1, n - errors + 1) - errors * np.log(q) - (n - errors) * np.log1p(-q)


def confidence_sequence(n: int, errors: int, alpha: float) -> Bounds:
    """The interval {q : M_n(q) < 1/alpha}, widened by one grid step on each side (an
    interval: log M_n is convex in q)."""
    if not 0 <= errors <= n:
        raise ValueError(f"errors must lie in 0..n, got {errors} of {n}")
    if n == 0:
        return Bounds(0, 0, 0.0, 1.0)
    inside = _GRID[log_mixture(n, errors, _GRID) < math.log(1 / alpha)]
    if inside.size == 0:  # only at rates off the grid's ends (n huge, k = 0 or n)
        rate = errors / n
        return Bounds(n, errors, rate, rate)
    return Bounds(n, errors, max(0.0, float(inside[0]) - GRID_STEP),
                  min(1.0, float(inside[-1]) + GRID_STEP))


def exceeds(bounds: Bounds, max_error: float) -> bool:
    """Whether the rate is shown above ``max_error``: its lower bound is over it (after at
    least ``MIN_ALARM_LABELS`` labels). Under a true rate <= max_error this happens at any
    n with probability <= alpha."""
    return bounds.n >= MIN_ALARM_LABELS and bounds.lower > max_error


def first_alarm(stream: np.ndarray, max_error: float, alpha: float, every: int = 1
                ) -> int | None:
    """How many labels of a 0/1 error stream were read when a check every ``every`` labels
    first showed the rate above ``max_error`` (None: never). For tests and the bench."""
    errors = np.cumsum(stream)
    for n in range(every, len(stream) + 1, every):
        k = int(errors[n - 1])
        # the lower bound never exceeds the estimate: below the bound, nothing to compute
        if k / n > max_error and exceeds(confidence_sequence(n, k, alpha), max_error):
            return n
    return None
