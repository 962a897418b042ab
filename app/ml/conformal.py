"""Split conformal prediction sets (via crepes): the confidence measure with a guarantee.

Nonconformity is the hinge score 1 - p(true class) of the ensemble's probabilities on a
held-out calibration split. For exchangeable inputs, the set {classes whose p-value is at least
1 - confidence_level} holds the true class with probability at least ``confidence_level``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from crepes import ConformalClassifier
from crepes.extras import hinge


@dataclass(frozen=True)
class ConformalCalibration:
    """What a release stores to build prediction sets: the calibration scores."""

    confidence_level: float
    alphas: tuple[float, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "method": "split_conformal_hinge",
            "confidence_level": self.confidence_level,
            "alphas": list(self.alphas),
            "threshold": self.threshold,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConformalCalibration:
        return cls(float(data["confidence_level"]), tuple(float(a) for a in data["alphas"]))

    @property
    def threshold(self) -> float:
        """Largest hinge score a class may have and still be in a set, as crepes decides:
        in the set when (#{alphas >= score} + 1) / (n + 1) >= 1 - confidence_level.
        1.0 (every class always in) when there are too few calibration rows for the level."""
        n = len(self.alphas)
        rank = n + 2 - math.ceil((n + 1) * (1 - self.confidence_level) - 1e-12)
        return 1.0 if rank > n else float(np.sort(self.alphas)[rank - 1])

    @cached_property
    def _classifier(self) -> ConformalClassifier:
        # Fitted once per loaded release, not on every prediction.
        return ConformalClassifier().fit(np.asarray(self.alphas))

    def prediction_sets(self, probabilities: np.ndarray) -> np.ndarray:
        """Boolean (rows x classes) membership of each class in each row's set."""
        sets = self._classifier.predict_set(
            hinge(probabilities), confidence=self.confidence_level, smoothing=False
        )
        return np.asarray(sets, dtype=bool)


def calibrate(
    probabilities: np.ndarray, y: np.ndarray, confidence_level: float
) -> ConformalCalibration:
    """Fit on held-out rows the models never trained on."""
    alphas = hinge(probabilities, np.arange(probabilities.shape[1]), y)
    return ConformalCalibration(confidence_level, tuple(float(a) for a in alphas))
