"""The ensemble runtime: members' outputs aggregated by weight, with an exact explanation.

Aggregation happens in the members' common explanation space:
- LOG_ODDS: weighted sum of margins, probabilities = softmax (log-linear pooling, i.e. a
  weighted geometric mean of the members' probabilities, renormalised);
- PROBABILITY: weighted mean of probabilities.
Both are linear in the members' outputs, so the weighted sum of member SHAP values is an
exact explanation of the ensemble. The explained output for class c is its log-odds
log(p_c / (1 - p_c)) for two classes, log p_c minus the mean log p over classes for more
(centred log-ratio), or p_c in PROBABILITY space.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.ml.algorithms import OutputSpace
from app.ml.conformal import ConformalCalibration
from app.ml.explain import MemberExplainer, MemberScores, add_time, softmax
from app.ml.ood import OodDetector, OodFinding
from app.ml.task import ReviewPolicy, TaskSpec

log = logging.getLogger(__name__)


@dataclass
class LoadedMember:
    name: str
    version: str
    algorithm: str
    weight: float
    explainer: MemberExplainer


@dataclass
class Explained:
    """One explanation of one class, in the stated space: base + sum(shap) == output."""

    explained_class: int
    base: float
    contributions: np.ndarray  # (model columns,)
    output: float


@dataclass
class MemberOutput:
    name: str
    version: str
    weight: float
    probabilities: np.ndarray | None = None  # (classes,)
    explanation: Explained | None = None
    error: str | None = None


@dataclass
class RowResult:
    probabilities: np.ndarray
    label: int
    prediction_set: np.ndarray  # boolean (classes,)
    explanation: Explained
    members: list[MemberOutput] = field(default_factory=list)
    ood: OodFinding | None = None  # None when the release has no detector (stored before it)
    # Multiclass only: the explanation of every class but the predicted one, so that any
    # class can be shown later (a binary task's other class is the predicted one mirrored).
    other_classes: list[Explained] = field(default_factory=list)


def _explained_transform(space: OutputSpace, n_classes: int) -> np.ndarray:
    """Matrix L with explained-space outputs = scores @ L.T (see module docstring)."""
    if space is OutputSpace.PROBABILITY:
        return np.eye(n_classes)
    if n_classes == 2:
        return np.array([[1.0, -1.0], [-1.0, 1.0]])
    return np.eye(n_classes) - 1.0 / n_classes


@dataclass(frozen=True)
class ReleaseCalibration:
    """What a release stores for routing, as one JSON object: the conformal calibration's
    keys, plus ``ood`` for the out-of-distribution detector. Kept flat so releases stored
    before the detector existed still load (without one)."""

    conformal: ConformalCalibration
    ood: OodDetector | None = None

    def to_json(self) -> dict[str, Any]:
        data = self.conformal.to_json()
        if self.ood is not None:
            data["ood"] = self.ood.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReleaseCalibration:
        ood = data.get("ood")
        return cls(
            ConformalCalibration.from_json(data),
            None if ood is None else OodDetector.from_json(ood),
        )


class Ensemble:
    """A loaded release: call ``predict`` with a model matrix."""

    def __init__(
        self,
        task: TaskSpec,
        release_id: int,
        version: int,
        members: list[LoadedMember],
        calibration: ConformalCalibration,
        ood: OodDetector | None = None,
        policy: ReviewPolicy | None = None,
    ) -> None:
        self.task = task
        self.release_id = release_id
        self.version = version
        self.members = members
        self.calibration = calibration
        self.ood = ood
        self.policy = policy or task.review  # the release's overrides applied, if any
        self.space = task.space
        self.transform = _explained_transform(self.space, len(task.classes))

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        """Aggregated probabilities only (training and evaluation; no explanation)."""
        total = sum(m.weight for m in self.members)
        scores = sum(m.weight / total * m.explainer.scores(X) for m in self.members)
        assert isinstance(scores, np.ndarray)
        return scores if self.space is OutputSpace.PROBABILITY else softmax(scores)

    def _run_members(self, X: np.ndarray, timings: dict[str, float] | None
                     ) -> dict[str, tuple[np.ndarray, MemberScores] | str]:
        outputs: dict[str, tuple[np.ndarray, MemberScores] | str] = {}
        for m in self.members:
            try:
                outputs[m.name] = m.explainer.explain(X, timings)
            except Exception as exc:  # a failing member must not take the others down
                log.warning("member %s of %s failed: %r", m.name, self.task.name, exc)
                outputs[m.name] = f"{type(exc).__name__}: {exc}"
        return outputs

    def predict(self, X: np.ndarray, timings: dict[str, float] | None = None
                ) -> tuple[list[RowResult], dict[str, str]]:
        """Results per row and the errors of failed members (empty when all ran);
        ``timings`` accumulates seconds spent in ``infer`` (models and aggregation) and in
        ``explain`` (SHAP)."""
        outputs = self._run_members(X, timings)
        started = time.perf_counter()
        ok = {n: o for n, o in outputs.items() if not isinstance(o, str)}
        errors = {n: o for n, o in outputs.items() if isinstance(o, str)}
        if not ok:
            return [], errors
        weights = {m.name: m.weight for m in self.members if m.name in ok}
        total = sum(weights.values())
        L = self.transform
        scores = sum(weights[n] / total * o[1].scores for n, o in ok.items())
        contrib = sum(weights[n] / total * o[1].contributions for n, o in ok.items())
        base = sum(weights[n] / total * o[1].base for n, o in ok.items())
        assert isinstance(scores, np.ndarray) and isinstance(contrib, np.ndarray)
        proba = scores if self.space is OutputSpace.PROBABILITY else softmax(scores)
        labels = proba.argmax(axis=1)
        sets = self.calibration.prediction_sets(proba)
        explained_scores = scores @ L.T
        explained_contrib = contrib @ L.T
        explained_base = np.asarray(base) @ L.T
        findings = self.ood.assess(X) if self.ood else [None] * len(X)
        n_classes = len(self.task.classes)
        # Members explain the ensemble's class, so their charts compare side by side: each
        # member's outputs in the explained space, for all rows at once.
        in_space = {n: (o[1].base @ L.T, o[1].contributions @ L.T, o[1].scores @ L.T)
                    for n, o in ok.items()}
        base_list = explained_base.tolist()
        rows = []
        for i, c in enumerate(labels.tolist()):
            explained = [
                Explained(k, base_list[k], explained_contrib[i, :, k],
                          float(explained_scores[i, k]))
                for k in range(n_classes)
            ]
            members = []
            for m in self.members:
                if m.name in errors:
                    members.append(MemberOutput(m.name, m.version, m.weight, error=errors[m.name]))
                    continue
                m_base, m_contrib, m_scores = in_space[m.name]
                members.append(
                    MemberOutput(
                        m.name,
                        m.version,
                        m.weight,
                        probabilities=ok[m.name][0][i],
                        explanation=Explained(c, float(m_base[c]), m_contrib[i, :, c],
                                              float(m_scores[i, c])),
                    )
                )
            rows.append(
                RowResult(
                    probabilities=proba[i],
                    label=c,
                    prediction_set=sets[i],
                    explanation=explained[c],
                    members=members,
                    ood=findings[i],
                    other_classes=[e for e in explained if e.explained_class != c]
                    if n_classes > 2
                    else [],
                )
            )
        if timings is not None:
            add_time(timings, "infer", time.perf_counter() - started)
        return rows, errors
