"""Learn-then-Test on one error score: the largest threshold whose AUTO predictions are
certified to be wrong at most ``epsilon`` of the time, with probability ``1 - delta`` over
the calibration draw.

The score of a prediction is ``1 - its top probability``, the ensemble's own doubt: on
loan_default a threshold on it that routes as many rows as the OR of conformal set size,
member disagreement and out-of-distribution distance makes fewer AUTO errors (issue 19: 9.3
% against 9.8 %); scores that add disagreement or distance were not measured. A prediction
is AUTO when its score is at most the threshold. Each threshold of a fixed grid is a
hypothesis "the error rate of AUTO predictions exceeds epsilon"; conditional on how many
calibration rows it lets through, their errors are binomial, so ``P(Binomial(n, epsilon) <=
errors)`` is a valid p-value. Fixed-sequence testing walks the grid from a strict threshold
towards laxer ones and stops at the first it cannot reject: the family-wise error is at most
delta with no correction for the grid's size. The walk does not start at the strictest
threshold: there the few most confident rows give the test no power, and one error among
them would end the walk at once. It starts where the test is likeliest to reject if the
model's probabilities are right: among the thresholds letting through enough rows to reject
at all, the one whose p-value with the errors the scores expect (their sum) is smallest. The
start is chosen from the scores alone, no label is read, whether or not the probabilities
are calibrated (the p-values are exact given the rows let through; that a label-free start
keeps the family-wise error at delta is checked by simulation in tests/app/risk and on fresh
rows by bench/decision_quality.py, not proved here). Underconfident probabilities (random
forests) would put that start too strict, so a second walk starts where half the rows are
AUTO; the walks run at ``GUIDED_SHARE`` and ``1 - GUIDED_SHARE`` of delta (Bonferroni) and
the laxer rejection wins. On loan_default (class scope, epsilon 0.05, 6 calibration seeds)
the guided start routed 1 to 29 points less than walks from the strictest testable
threshold; the half-way walk costs 0.3-0.5. With ``scope = "class"`` each predicted class
gets its own threshold, tested at its share of delta (weighted Bonferroni, from the scores
alone) so that the bounds hold for all classes at once
(``app.risk.certificates``).

Which rows, and which guarantee. By default (``risk_calibration = "split"``) the rows are the
release's calibration and held-out splits scored by the release itself: exchangeable with new
rows, so the bound is the finite-sample Learn-then-Test one above. With ``"cross_fit"`` the
training rows are added with out-of-fold scores, from members refitted on the other folds of
a stratified 5-fold split of training and calibration rows (``app.ml.training``). Those
scores come from models like the release, not from it, so the bound is no longer exact: it
holds to the extent the fold members behave like the served ones (cross-conformal and CV+
bounds are known to loosen, up to about twice the miss rate in the worst case). Measured with
bench/decision_quality.py (20,000 fresh loans per seed; breast_cancer on its 114 held-out
rows): loan_default class scope at 0.05 held in 6/6 seeds either way and routed 36.7 % on
average cross-fitted against 37.6 % on the splits alone; breast_cancer at 0.05 certified
every class in 6/6 seeds cross-fitted (routing 0-3.5 %) against one class in 2/6 on the
splits (routing 34-100 %). But cross-fitted the bound is tighter than it should be: in
overall scope at 0.10 it held in 7 of 11 loan_default seeds (the misses realized 0.100-0.103)
against 9 of 11 on the same seeds' exact rows, so prefer ``"split"`` where rows suffice. Why
loan_default's class-scope routing stays about 2 points
above the max-probability policy at the same realized error: its confident ``default``
predictions (about 2 % of rows, 0-1.5 % wrong on fresh rows) are never certified. The
calibration rows hold 25-40 of them at the scores where they are that good (48-90
cross-fitted), with 0-3 errors; a binomial test at epsilon 0.05 needs 45 error-free rows
even at delta 0.1 unsplit, so neither the grid, the score nor the split of delta over
classes is what costs it: the rows are too few.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.risk.binomial import least_testable_rows, rows_to_certify, tail_pvalues, upper_bound

SCORE = "one_minus_max_probability"
GRID = np.round(np.linspace(0.0, 1.0, 1001), 3)  # thresholds on the score, strictest first
GUIDED_SHARE = 0.8  # of delta, for the walk from the likeliest start; the rest from half
ESTIMATE_MIN_ROWS = 10  # AUTO rows a threshold needs before its error rate predicts others
ESTIMATE_POINTS = 60  # grid thresholds the rows-needed estimate looks at


def error_scores(probabilities: np.ndarray) -> np.ndarray:
    """The error score of each row: 1 - its largest probability, in [0, 1]."""
    return np.clip(1.0 - np.asarray(probabilities, dtype=float).max(axis=1), 0.0, 1.0)


@dataclass(frozen=True)
class CalibrationRows:
    """What a release keeps of its calibration rows to certify any epsilon later: each row's
    score, predicted class and whether that prediction was wrong."""

    scores: np.ndarray
    predicted: np.ndarray
    errors: np.ndarray
    # the first rows are scored by the release itself; any after them are out-of-fold
    # scores of cross-fitted members (risk_calibration = "cross_fit"). None: all are exact
    exact_rows: int | None = None

    @property
    def cross_fitted(self) -> int:
        """How many of the rows are out-of-fold scores."""
        return 0 if self.exact_rows is None else len(self.scores) - self.exact_rows

    @classmethod
    def of(cls, probabilities: np.ndarray, y: np.ndarray) -> CalibrationRows:
        predicted = np.asarray(probabilities).argmax(axis=1)
        return cls(error_scores(probabilities), predicted, predicted != np.asarray(y))

    def to_json(self) -> dict[str, Any]:
        return {"score": SCORE, "scores": [round(float(s), 12) for s in self.scores],
                "predicted": self.predicted.tolist(), "errors": self.errors.astype(int).tolist(),
                **({} if self.exact_rows is None else {"exact_rows": self.exact_rows})}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> CalibrationRows:
        """The stored rows; none for a release stored before risk control."""
        data = data or {}
        return cls(np.asarray(data.get("scores", []), dtype=float),
                   np.asarray(data.get("predicted", []), dtype=int),
                   np.asarray(data.get("errors", []), dtype=bool), data.get("exact_rows"))


@dataclass(frozen=True)
class Certificate:
    """The outcome of the test for one predicted class (label) or for all rows (label None)."""

    label: str | None
    certified: bool
    threshold: float | None  # the largest certified score; None when nothing is
    calibration_rows: int
    auto_rows: int  # calibration rows at or under the threshold
    auto_errors: int
    upper_bound: float | None  # exact 1 - delta bound of their error rate
    expected_routing_rate: float  # of these rows, the share the threshold sends to review
    rows_needed: int | None = None  # when not certified: about how many rows would do

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def auto_counts(scores: np.ndarray, errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every grid threshold: the rows at or under it, and the sum of ``errors`` (a
    boolean or a number per row) over them."""
    order = np.argsort(scores, kind="stable")
    rows = np.searchsorted(scores[order], GRID, side="right")
    wrong = np.concatenate([[0], np.cumsum(errors[order])])
    return rows, wrong[rows]


def expected_best(scores: np.ndarray, rows: np.ndarray, epsilon: float, delta: float
                  ) -> tuple[int, float] | None:
    """From the scores alone: of the grid thresholds letting through enough rows to reject
    at delta, the one whose p-value is smallest if each row is wrong with probability its
    score (the errors taken as the scores' sum, rounded down), and that p-value. None when
    no threshold lets through enough rows."""
    testable = np.flatnonzero(rows >= least_testable_rows(epsilon, delta))
    if not len(testable):
        return None
    _, expected = auto_counts(scores, scores)
    guess = tail_pvalues(np.floor(expected[testable]), rows[testable], epsilon)
    best = int(np.argmin(guess))
    return int(testable[best]), float(guess[best])


def promising(scores: np.ndarray, epsilon: float, delta: float) -> bool:
    """Whether the scores alone expect some threshold to be certified at delta: class scope
    gives a share of delta only to such classes (``app.risk.certificates``), chosen without
    a label, so the split stays fixed given the inputs."""
    rows, _ = auto_counts(scores, scores)
    best = expected_best(scores, rows, epsilon, delta)
    return best is not None and best[1] <= delta


def walk_starts(scores: np.ndarray, rows: np.ndarray, epsilon: float, delta: float
                ) -> list[tuple[int, float]]:
    """Where the walks start (grid index, level), from the scores alone: of the thresholds
    with enough rows to reject at all, the one the scores expect to reject most surely, and
    the first with half the rows."""
    starts = []
    guided, half = GUIDED_SHARE * delta, (1 - GUIDED_SHARE) * delta
    likeliest = expected_best(scores, rows, epsilon, guided)
    if likeliest is not None:
        starts.append((likeliest[0], guided))
    halfway = np.flatnonzero(rows >= max(least_testable_rows(epsilon, half), len(scores) / 2))
    if len(halfway):
        starts.append((int(halfway[0]), half))
    return starts


def fixed_sequence(pvalues: np.ndarray, delta: float, start: int) -> int | None:
    """Index of the last hypothesis rejected walking from ``start`` while p <= delta."""
    failed = np.flatnonzero(pvalues[start:] > delta)
    stop = start + (int(failed[0]) if len(failed) else len(pvalues) - start)
    return None if stop == start else stop - 1


def certify(scores: np.ndarray, errors: np.ndarray, epsilon: float, delta: float,
            label: str | None = None) -> Certificate:
    """The largest grid threshold whose AUTO error rate is certified <= epsilon at 1 - delta."""
    n = len(scores)
    rows, wrong = auto_counts(scores, errors)
    pvalues = tail_pvalues(wrong, rows, epsilon)
    walks = [fixed_sequence(pvalues, level, start)
             for start, level in walk_starts(scores, rows, epsilon, delta)]
    chosen = max((w for w in walks if w is not None), default=None)
    if chosen is None:
        return not_certified(scores, errors, epsilon, delta, label)
    auto, k = int(rows[chosen]), int(wrong[chosen])
    return Certificate(label, True, float(GRID[chosen]), n, auto, k,
                       upper_bound(k, auto, 1 - delta), float(1 - auto / n))


def not_certified(scores: np.ndarray, errors: np.ndarray, epsilon: float, delta: float,
                  label: str | None = None) -> Certificate:
    """Nothing certified, with about how many rows like these would be at delta."""
    rows, wrong = auto_counts(scores, errors)
    n = len(scores)
    return Certificate(label, False, None, n, 0, 0, None, 1.0,
                       _rows_needed(rows, wrong, n, epsilon, delta))


def _rows_needed(rows: np.ndarray, wrong: np.ndarray, n: int, epsilon: float,
                 delta: float) -> int | None:
    """About how many calibration rows like these would certify some threshold: the fewest
    over thresholds whose observed error rate is under epsilon (None: none is)."""
    if n == 0:
        return least_testable_rows(epsilon, delta)
    seen = np.flatnonzero(rows >= min(ESTIMATE_MIN_ROWS, n))
    picked = np.unique(seen[np.linspace(0, len(seen) - 1, ESTIMATE_POINTS).astype(int)]) \
        if len(seen) else seen
    needed = []
    for i in picked.tolist():
        auto = rows_to_certify(wrong[i] / rows[i], epsilon, delta)
        if auto is not None:
            needed.append(math.ceil(auto * n / rows[i]))
    return min(needed) if needed else None
