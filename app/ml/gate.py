"""The evaluation gate: a retrained candidate against the LIVE release, on the same rows.

Pure: it takes both releases' probabilities on the candidate's held-out rows (source rows
held out from every release, plus reviewed rows no release trained on) and the task's
rule, and returns the decision with the full comparison table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from app.ml.task import GateMetric, GateSettings
from app.ml.training import Holdout, classification_metrics

LOWER_IS_BETTER = frozenset({GateMetric.LOG_LOSS.value})
SLICES = ("all", "source", "reviewed")


class Decision(StrEnum):
    """What the evaluation gate concluded about a candidate."""

    PASSED = "PASSED"
    REJECTED = "REJECTED"
    NO_BASELINE = "NO_BASELINE"  # nothing LIVE (or of the same contract) to compare with


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


def decide(
    settings: GateSettings, holdout: Holdout, live_proba: np.ndarray, live_version: int
) -> GateDecision:
    """PASSED when the primary metric gains at least ``min_improvement`` on the
    ``improve_on`` rows and loses no more than ``max_regression`` on any slice; else
    REJECTED, with why."""
    metric = settings.primary_metric.value
    table = comparison_table(holdout, live_proba)
    primary = {r.slice: r for r in table if r.metric == metric}
    judged = primary.get(settings.improve_on)
    if judged is None:
        return GateDecision(Decision.REJECTED, False, [
            f"{metric} cannot be computed on the {settings.improve_on} held-out rows (there "
            "are none, or too few classes): nothing shows the candidate is better"],
            settings, table, live_version)
    reasons = [_improvement(settings, judged, live_version)]
    reasons += [_regression(settings, row) for row in primary.values()
                if row.slice in ("source", "reviewed")
                and row.gain < -settings.max_regression - TOLERANCE]
    passed = judged.gain >= settings.min_improvement - TOLERANCE and len(reasons) == 1
    return GateDecision(Decision.PASSED if passed else Decision.REJECTED, passed, reasons,
                        settings, table, live_version)


def _improvement(settings: GateSettings, judged: Comparison, live_version: int) -> str:
    where = f"{judged.metric} on the {judged.rows} {settings.improve_on} held-out rows"
    gains = f"{where} gains {judged.gain:+.4f} over LIVE v{live_version}"
    if judged.gain < settings.min_improvement - TOLERANCE:
        return f"{gains}, less than the required {settings.min_improvement:.4f}"
    return f"{gains} (at least {settings.min_improvement:.4f} required)"


def _regression(settings: GateSettings, row: Comparison) -> str:
    return (f"{row.metric} on the {row.rows} {row.slice} held-out rows loses "
            f"{-row.gain:.4f}, more than the allowed {settings.max_regression:.4f}")
