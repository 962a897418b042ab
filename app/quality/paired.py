"""The evaluation gate's test: is a candidate better than LIVE on the same rows?

Per row, the candidate's gain over LIVE (1 / 0 / -1 for correctness; the drop in log loss).
Unweighted correctness gets the exact McNemar test: among the discordant pairs (one right,
the other wrong) the candidate's wins are Binomial(b + c, 1/2) if neither is better, so the
one-sided p-value is that binomial's upper tail. Otherwise (log loss, or rows weighted to
undo the selection of reviewed rows) a paired bootstrap of the weighted mean gain. The
interval is the bootstrap's percentile interval either way (seeded: the same rows give the
same decision).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import binomtest

RESAMPLES = 2_000
INTERVAL = 0.95
SEED = 0


@dataclass(frozen=True)
class PairedTest:
    """The gain of the candidate over LIVE on ``rows`` paired rows, with its interval and the
    one-sided p-value of "no better"."""

    rows: int
    weighted: bool
    estimate: float
    interval: tuple[float, float]
    p_value: float
    method: str

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "weighted": self.weighted, "estimate": self.estimate,
                "interval": list(self.interval), "pValue": self.p_value, "method": self.method}


def _bootstrap(gains: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean gains of resampled rows (paired: a row's two answers stay together)."""
    rng = np.random.default_rng(SEED)
    picks = rng.integers(0, len(gains), size=(RESAMPLES, len(gains)))
    w = weights[picks]
    totals = w.sum(axis=1)
    return np.where(totals > 0, (w * gains[picks]).sum(axis=1) / np.where(totals > 0, totals, 1),
                    0.0)


def mcnemar_p(gains: np.ndarray) -> tuple[float, int, int]:
    """Exact one-sided McNemar: (p-value, candidate's wins, LIVE's wins)."""
    wins, losses = int((gains > 0).sum()), int((gains < 0).sum())
    if wins + losses == 0:
        return 1.0, 0, 0
    return float(binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue), wins, losses


def paired_test(gains: np.ndarray, weights: np.ndarray, correctness: bool) -> PairedTest:
    """The test of module's docstring on per-row ``gains`` with ``weights`` (> 0)."""
    n = len(gains)
    weighted = bool(n and not np.allclose(weights, weights[0]))
    estimate = float(np.average(gains, weights=weights)) if n else 0.0
    if n == 0:
        return PairedTest(0, False, 0.0, (0.0, 0.0), 1.0, "no rows")
    boot = _bootstrap(gains, weights)
    tail = (1 - INTERVAL) / 2
    interval = (float(np.quantile(boot, tail)), float(np.quantile(boot, 1 - tail)))
    if correctness and not weighted:
        p, wins, losses = mcnemar_p(gains)
        method = (f"exact McNemar, one-sided, on {wins + losses} discordant pairs "
                  f"({wins} won, {losses} lost)")
    else:
        p = float((1 + np.sum(boot <= 0)) / (RESAMPLES + 1))
        method = (f"paired bootstrap, one-sided, {RESAMPLES} resamples"
                  + (" of rows weighted by inverse review probability" if weighted else ""))
    return PairedTest(n, weighted, estimate, interval, p, method)
