"""The evaluation gate: a retrained candidate against the LIVE release, on the same rows.

Pure: it takes both releases' probabilities on the candidate's held-out rows (source rows
held out from every release, plus reviewed rows no release trained on) and the task's
rule, and returns the decision with the full comparison table.
"""

from __future__ import annotations

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


def _gain(metric: str, candidate: float, live: float) -> float:
    """How much better the candidate is (positive: better), whatever the metric's sense."""
    return live - candidate if metric in LOWER_IS_BETTER else candidate - live


def comparison_table(holdout: Holdout, live_proba: np.ndarray) -> list[dict[str, Any]]:
    """One row per (metric, slice): both releases' scores on the same rows, and the gain."""
    table = []
    for name, mask in holdout.slices().items():
        if not mask.any():
            continue
        ours = classification_metrics(holdout.proba[mask], holdout.y[mask])
        theirs = classification_metrics(live_proba[mask], holdout.y[mask])
        for metric in ours.keys() & theirs.keys():
            table.append(
                {
                    "metric": metric,
                    "slice": name,
                    "rows": int(mask.sum()),
                    "candidate": ours[metric],
                    "live": theirs[metric],
                    "gain": _gain(metric, ours[metric], theirs[metric]),
                }
            )
    table.sort(key=lambda r: (SLICES.index(r["slice"]), r["metric"]))
    return table


def _rule(settings: GateSettings) -> dict[str, Any]:
    return {
        "primaryMetric": settings.primary_metric.value,
        "improveOn": settings.improve_on,
        "minImprovement": settings.min_improvement,
        "maxRegression": settings.max_regression,
        "promoteTo": settings.promote_to,
    }


def no_baseline(settings: GateSettings, why: str) -> dict[str, Any]:
    return {"decision": Decision.NO_BASELINE, "passed": False, "reasons": [why],
            "table": [], **_rule(settings)}


def decide(
    settings: GateSettings, holdout: Holdout, live_proba: np.ndarray, live_version: int
) -> dict[str, Any]:
    """PASSED when the primary metric gains at least ``min_improvement`` on the
    ``improve_on`` rows and loses no more than ``max_regression`` on any slice; else
    REJECTED, with why."""
    metric = settings.primary_metric.value
    table = comparison_table(holdout, live_proba)
    primary = {r["slice"]: r for r in table if r["metric"] == metric}
    reasons, passed = [], True
    judged = primary.get(settings.improve_on)
    if judged is None:
        return {"decision": Decision.REJECTED, "passed": False, "table": table,
                "liveVersion": live_version, **_rule(settings),
                "reasons": [f"{metric} cannot be computed on the {settings.improve_on} "
                            "held-out rows (there are none, or too few classes): nothing "
                            "shows the candidate is better"]}
    where = f"{metric} on the {judged['rows']} {settings.improve_on} held-out rows"
    if judged["gain"] < settings.min_improvement - TOLERANCE:
        passed = False
        reasons.append(
            f"{where} gains {judged['gain']:+.4f} over LIVE v{live_version}, less than the "
            f"required {settings.min_improvement:.4f}"
        )
    else:
        reasons.append(
            f"{where} gains {judged['gain']:+.4f} over LIVE v{live_version} "
            f"(at least {settings.min_improvement:.4f} required)"
        )
    for name in ("source", "reviewed"):
        row = primary.get(name)
        if row is not None and row["gain"] < -settings.max_regression - TOLERANCE:
            passed = False
            reasons.append(
                f"{metric} on the {row['rows']} {name} held-out rows loses "
                f"{-row['gain']:.4f}, more than the allowed {settings.max_regression:.4f}"
            )
    return {
        "decision": Decision.PASSED if passed else Decision.REJECTED,
        "passed": passed,
        "reasons": reasons,
        "table": table,
        "liveVersion": live_version,
        **_rule(settings),
    }
