"""The exact binomial statistics against sums of the binomial pmf done by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.risk.binomial import (
    clopper_pearson,
    least_testable_rows,
    rows_to_certify,
    tail_pvalues,
    upper_bound,
)


def _cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


@pytest.mark.parametrize(("k", "n", "eps"), [(0, 45, 0.05), (3, 100, 0.05), (7, 40, 0.1),
                                             (0, 0, 0.05), (12, 12, 0.3)])
def test_tail_pvalue_is_the_binomial_cdf(k: int, n: int, eps: float) -> None:
    [p] = tail_pvalues(np.array([k]), np.array([n]), eps)
    assert p == pytest.approx(1.0 if n == 0 else _cdf(k, n, eps), abs=1e-12)


def test_clopper_pearson_inverts_the_tails() -> None:
    low, high = clopper_pearson(4, 50, 0.95)
    # the bounds are where the one-sided tails reach 2.5 %
    assert 1 - _cdf(3, 50, low) == pytest.approx(0.025, abs=1e-9)
    assert _cdf(4, 50, high) == pytest.approx(0.025, abs=1e-9)
    assert clopper_pearson(0, 10, 0.95)[0] == 0.0 and clopper_pearson(10, 10, 0.95)[1] == 1.0
    assert clopper_pearson(0, 0, 0.95) == (0.0, 1.0)


def test_upper_bound_is_one_sided() -> None:
    u = upper_bound(2, 60, 0.9)
    assert _cdf(2, 60, u) == pytest.approx(0.1, abs=1e-9)
    assert upper_bound(0, 0, 0.9) == 1.0


def test_least_testable_rows_is_the_first_n_with_a_small_enough_tail() -> None:
    n = least_testable_rows(0.05, 0.1)
    assert (1 - 0.05) ** n <= 0.1 < (1 - 0.05) ** (n - 1)
    assert n == 45


def test_rows_to_certify_finds_about_the_smallest_n() -> None:
    n = rows_to_certify(0.02, 0.05, 0.1)
    assert n is not None
    assert _cdf(math.floor(0.02 * n), n, 0.05) <= 0.1
    assert _cdf(math.floor(0.02 * (n - 5)), n - 5, 0.05) > 0.1 or n - 5 < 45
    assert rows_to_certify(0.0, 0.05, 0.1) == 45
    assert rows_to_certify(0.05, 0.05, 0.1) is None
