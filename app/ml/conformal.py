"""Split conformal prediction sets (via crepes): the confidence measure with a guarantee.

Nonconformity is the hinge score 1 - p(true class) of the ensemble's probabilities on a
held-out calibration split. For exchangeable inputs, the set {classes whose p-value exceeds
1 - confidence_level} holds the true class with probability at least ``confidence_level``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from crepes import ConformalClassifier
from crepes.extras import hinge


@dataclass(frozen=True)
class ConformalCalibration:
    """What a release stores to build prediction sets: the calibration scores."""

    confidence_level: float
    alphas: tuple[float, ...]

    def to_json(self) -> dict[str, object]:
        return {"method": "split_conformal_hinge", "confidence_level": self.confidence_level,
                "alphas": list(self.alphas), "threshold": self.threshold}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ConformalCalibration:
        return cls(float(data["confidence_level"]),  # type: ignore[arg-type]
                   tuple(float(a) for a in data["alphas"]))  # type: ignore[attr-defined]

    @property
    def threshold(self) -> float:
        """Largest nonconformity score still inside a set (for people reading the release)."""
        n = len(self.alphas)
        rank = min(n, int(np.ceil((n + 1) * self.confidence_level)))
        return float(np.sort(self.alphas)[rank - 1])

    def prediction_sets(self, probabilities: np.ndarray) -> np.ndarray:
        """Boolean (rows x classes) membership of each class in each row's set."""
        cc = ConformalClassifier().fit(np.asarray(self.alphas))
        sets = cc.predict_set(hinge(probabilities), confidence=self.confidence_level,
                              smoothing=False)
        return np.asarray(sets, dtype=bool)


def calibrate(probabilities: np.ndarray, y: np.ndarray, confidence_level: float) -> ConformalCalibration:
    """Fit on held-out rows the models never trained on."""
    alphas = hinge(probabilities, np.arange(probabilities.shape[1]), y)
    return ConformalCalibration(confidence_level, tuple(float(a) for a in alphas))
