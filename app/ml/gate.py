"""The evaluation gate: a retrained candidate against the LIVE release, on the same rows.

Pure: it takes both releases' probabilities on the candidate's held-out rows (source rows
held out from every release, plus reviewed rows no release trained on), the weight of each
row (inverse probability that people labelled it, 0 to leave it out: see
``app.training.gating``) and the task's rule, and returns the decision with the full
comparison table and the paired test (``app.quality.paired``) it rests on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from app.ml.task import GateMetric, GateSettings
from app.ml.training import Holdout, classification_metrics
from app.quality.paired import PairedTest, paired_test

LOWER_IS_BETTER = frozenset({GateMetric.LOG_LOSS.value})
SLICES = ("all", "source", "reviewed")


class Decision(StrEnum):
    """What the evaluation gate concluded about a candidate."""

    PASSED = "PASSED"
    REJECTED = "REJECTED"
    NO_BASELINE = "NO_BASELINE"  # nothing LIVE (or of the same contract) to compare with
    INSUFFICIENT_EVIDENCE = "INSUFFICIENT_EVIDENCE"  # fewer paired rows than [gate] min_rows


TOLERANCE = 1e-9  # metrics are ratios of counts: equal to the bound is within it


@dataclass(frozen=True)
class Comparison:
    """One (metric, slice) of the table: both releases' scores on the same rows, the gain."""

    metric: str
    slice: str
    rows: int
    candidate: float
    live: float
    gain: float


@dataclass(frozen=True)
class GateDecision:
    """What the gate concluded and why, with the comparison table and the rule it applied;
    ``promotion`` says why a passing release stayed a CANDIDATE."""

    decision: Decision
    passed: bool
    reasons: list[str]
    rule: GateSettings
    table: list[Comparison] = field(default_factory=list)
    live_version: int | None = None
    promotion: str | None = None
    test: PairedTest | None = None

    @property
    def promote_to(self) -> str:
        return self.rule.promote_to

    def to_json(self) -> dict[str, Any]:
        """The decision as it is stored on the release and exposed (camelCase keys)."""
        rule = self.rule
        stored: dict[str, Any] = {
            "decision": self.decision.value, "passed": self.passed, "reasons": self.reasons,
            "table": [asdict(row) for row in self.table]}
        if self.live_version is not None:
            stored["liveVersion"] = self.live_version
        stored |= {"primaryMetric": rule.primary_metric.value, "improveOn": rule.improve_on,
                   "minImprovement": rule.min_improvement,
                   "maxRegression": rule.max_regression, "promoteTo": rule.promote_to}
        if self.promotion is not None:
            stored["promotion"] = self.promotion
        if self.test is not None:
            stored |= {"test": self.test.to_json(), "minRows": rule.min_rows,
                       "significance": rule.significance}
        return stored


def _gain(metric: str, candidate: float, live: float) -> float:
    """How much better the candidate is (positive: better), whatever the metric's sense."""
    return live - candidate if metric in LOWER_IS_BETTER else candidate - live


def comparison_table(holdout: Holdout, live_proba: np.ndarray) -> list[Comparison]:
    """One row per (metric, slice): both releases' scores on the same rows, and the gain."""
    table = []
    for name, mask in holdout.slices().items():
        if not mask.any():
            continue
        ours = classification_metrics(holdout.proba[mask], holdout.y[mask])
        theirs = classification_metrics(live_proba[mask], holdout.y[mask])
        table += [Comparison(metric, name, int(mask.sum()), ours[metric], theirs[metric],
                             _gain(metric, ours[metric], theirs[metric]))
                  for metric in ours.keys() & theirs.keys()]
    table.sort(key=lambda r: (SLICES.index(r.slice), r.metric))
    return table


def no_baseline(settings: GateSettings, why: str) -> GateDecision:
    """Nothing to compare the candidate with: it is not promoted."""
    return GateDecision(Decision.NO_BASELINE, False, [why], settings)


def row_gains(metric: str, candidate: np.ndarray, live: np.ndarray, y: np.ndarray
              ) -> tuple[np.ndarray, bool]:
    """Per row, how much better the candidate did (and whether that is correctness): the
    drop in log loss for ``log_loss``, else 1 / 0 / -1 for being right where LIVE was wrong
    (metrics that are not sums over rows are tested on correctness)."""
    rows = np.arange(len(y))
    if metric in LOWER_IS_BETTER:
        eps = 1e-15
        return (np.log(np.clip(candidate[rows, y], eps, 1))
                - np.log(np.clip(live[rows, y], eps, 1))), False
    right = (candidate.argmax(axis=1) == y).astype(float)
    return right - (live.argmax(axis=1) == y).astype(float), True


def judged_test(settings: GateSettings, holdout: Holdout, live_proba: np.ndarray,
                weights: np.ndarray | None) -> PairedTest:
    """The paired test on the ``improve_on`` rows whose weight is positive."""
    w = np.ones(len(holdout.y)) if weights is None else np.asarray(weights, dtype=float)
    mask = holdout.slices()[settings.improve_on] & (w > 0)
    gains, correctness = row_gains(settings.primary_metric.value, holdout.proba[mask],
                                   live_proba[mask], holdout.y[mask])
    return paired_test(gains, w[mask], correctness)


def decide(
    settings: GateSettings, holdout: Holdout, live_proba: np.ndarray, live_version: int,
    weights: np.ndarray | None = None,
) -> GateDecision:
    """PASSED when, on the ``improve_on`` rows (weighted by ``weights``, default 1), there
    are at least ``min_rows`` of them, the candidate gains at least ``min_improvement`` with
    a one-sided p-value below ``significance``, and no slice loses more than
    ``max_regression``; INSUFFICIENT_EVIDENCE with fewer rows; else REJECTED, with why."""
    table = comparison_table(holdout, live_proba)
    test = judged_test(settings, holdout, live_proba, weights)
    what = f"{settings.primary_metric.value} on the {test.rows} {settings.improve_on} held-out rows"
    if test.rows < max(settings.min_rows, 1):
        return GateDecision(Decision.INSUFFICIENT_EVIDENCE, False, [
            f"{what}: fewer than the {settings.min_rows} needed to judge; nothing shows the "
            "candidate is better yet (it stays a CANDIDATE)"], settings, table, live_version,
            test=test)
    primary = {r.slice: r for r in table if r.metric == settings.primary_metric.value}
    reasons = [_improvement(settings, what, test, live_version)]
    reasons += [_regression(settings, row) for row in primary.values()
                if row.slice in ("source", "reviewed")
                and row.gain < -settings.max_regression - TOLERANCE]
    passed = (test.estimate >= settings.min_improvement - TOLERANCE
              and test.p_value < settings.significance and len(reasons) == 1)
    return GateDecision(Decision.PASSED if passed else Decision.REJECTED, passed, reasons,
                        settings, table, live_version, test=test)


def _improvement(settings: GateSettings, what: str, test: PairedTest, live_version: int
                 ) -> str:
    low, high = test.interval
    weighted = ", weighted to undo the selection of reviewed rows" if test.weighted else ""
    gains = (f"{what}{weighted} gains {test.estimate:+.4f} over LIVE v{live_version} "
             f"(95% interval {low:+.4f} to {high:+.4f}; p = {test.p_value:.4g}, "
             f"{test.method})")
    if test.estimate < settings.min_improvement - TOLERANCE:
        return f"{gains}, less than the required {settings.min_improvement:.4f}"
    if test.p_value >= settings.significance:
        return f"{gains}: not significant (p must be below {settings.significance:g})"
    return (f"{gains} (at least {settings.min_improvement:.4f} and p below "
            f"{settings.significance:g} required)")


def _regression(settings: GateSettings, row: Comparison) -> str:
    return (f"{row.metric} on the {row.rows} {row.slice} held-out rows loses "
            f"{-row.gain:.4f}, more than the allowed {settings.max_regression:.4f}")
