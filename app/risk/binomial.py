"""Exact binomial statistics: the tail p-value a threshold is certified with, Clopper-Pearson
intervals, and how many rows a certification would take."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta, binom

MAX_ROWS = 10**8  # beyond this, "about N rows" stops being a useful answer


def tail_pvalues(errors: np.ndarray, rows: np.ndarray, epsilon: float) -> np.ndarray:
    """P(Binomial(rows, epsilon) <= errors), elementwise: a valid p-value for the null
    "the error rate of these rows' population exceeds epsilon". 1 where rows is 0."""
    errors = np.asarray(errors)
    rows = np.asarray(rows)
    return np.where(rows > 0, binom.cdf(errors, np.maximum(rows, 1), epsilon), 1.0)


def clopper_pearson(k: int, n: int, confidence: float) -> tuple[float, float]:
    """The exact two-sided interval for a binomial proportion from k successes in n trials;
    (0, 1) without trials."""
    if n == 0:
        return 0.0, 1.0
    tail = (1 - confidence) / 2
    low = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - tail, k + 1, n - k))
    return low, high


def upper_bound(k: int, n: int, confidence: float) -> float:
    """The exact one-sided upper confidence bound of a proportion (1 without trials)."""
    if n == 0 or k >= n:
        return 1.0
    return float(beta.ppf(confidence, k + 1, n - k))


def least_testable_rows(epsilon: float, delta: float) -> int:
    """The fewest rows whose binomial test can reject at level delta at all (none of them
    wrong): (1 - epsilon)^n <= delta."""
    return math.ceil(math.log(delta) / math.log1p(-epsilon) - 1e-12)


def rows_to_certify(error_rate: float, epsilon: float, delta: float) -> int | None:
    """About how many rows with this error rate the test needs to reject at level delta
    (None when the rate is not under epsilon, or it would take more than MAX_ROWS)."""
    if error_rate >= epsilon:
        return None

    def rejects(n: int) -> bool:
        return bool(binom.cdf(math.floor(error_rate * n), n, epsilon) <= delta)

    low = least_testable_rows(epsilon, delta)
    if rejects(low):
        return low
    high = low * 2
    while not rejects(high):
        if high > MAX_ROWS:
            return None
        low, high = high, high * 2
    while high - low > 1:  # the floor makes this only nearly monotone: "about" N rows
        middle = (low + high) // 2
        low, high = (low, middle) if rejects(middle) else (middle, high)
    return high
