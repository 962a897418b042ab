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
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from app.ml.algorithms import OutputSpace
from app.ml.conformal import ConformalCalibration
from app.ml.explain import MemberExplainer, MemberScores, add_time, softmax
from app.ml.ood import OodDetector, OodFinding
from app.ml.task import ReviewPolicy, TaskSpec
from app.risk.certificates import RiskControl, control_risk
from app.risk.control import CalibrationRows

log = logging.getLogger(__name__)


@dataclass
class LoadedMember:
    """One member of a release, loaded and ready to predict and explain."""

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
    """What one member answered for one row."""

    name: str
    version: str
    weight: float
    probabilities: np.ndarray | None = None  # (classes,)
    explanation: Explained | None = None
    error: str | None = None


@dataclass
class RowResult:
    """The ensemble's answer for one row: probabilities, label, set, explanation."""

    probabilities: np.ndarray
    label: int
    prediction_set: np.ndarray  # boolean (classes,)
    explanation: Explained
    members: list[MemberOutput] = field(default_factory=list)
    ood: OodFinding | None = None  # None when the release has no detector (stored before it)
    # Multiclass only: the explanation of every class but the predicted one, so that any
    # class can be shown later (a binary task's other class is the predicted one mirrored).
    other_classes: list[Explained] = field(default_factory=list)


@dataclass
class MemberColumns:
    """One member's outputs for a batch, in the ensemble's explained space (all None but
    the error when it failed)."""

    name: str
    version: str
    weight: float
    error: str | None = None
    probabilities: np.ndarray | None = None  # (rows, classes)
    base: np.ndarray | None = None  # (classes,)
    contributions: np.ndarray | None = None  # (rows, model columns, classes)
    scores: np.ndarray | None = None  # (rows, classes)

    def sliced(self, rows: slice) -> MemberColumns:
        return replace(self, probabilities=_part(self.probabilities, rows),
                       contributions=_part(self.contributions, rows),
                       scores=_part(self.scores, rows))


def _part(values: np.ndarray | None, rows: slice) -> np.ndarray | None:
    return None if values is None else values[rows]


@dataclass
class Outputs:
    """An ensemble's results for a batch of rows, as arrays (row i of each): what the
    prediction path turns into records without an object per row and class. ``rows()``
    gives the same per row."""

    probabilities: np.ndarray  # (rows, classes)
    labels: np.ndarray  # (rows,) the predicted class
    prediction_sets: np.ndarray  # (rows, classes) boolean
    base: np.ndarray  # (classes,) in the explained space
    contributions: np.ndarray  # (rows, model columns, classes) in the explained space
    scores: np.ndarray  # (rows, classes): explained outputs
    members: list[MemberColumns]
    X: np.ndarray  # the model matrix, for out-of-distribution findings when asked
    ood_flags: np.ndarray  # (rows,) out of distribution (all False without a detector)
    ood: OodDetector | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def sliced(self, start: int, stop: int) -> Outputs:
        rows = slice(start, stop)
        return Outputs(self.probabilities[rows], self.labels[rows], self.prediction_sets[rows],
                       self.base, self.contributions[rows], self.scores[rows],
                       [m.sliced(rows) for m in self.members], self.X[rows],
                       self.ood_flags[rows], self.ood)

    def findings(self, rows: list[int]) -> list[OodFinding]:
        """The out-of-distribution findings of these rows (none without a detector)."""
        return [] if self.ood is None or not rows else self.ood.assess(self.X[rows])

    def rows(self) -> list[RowResult]:
        """One result per row, with its findings and every class's explanation."""
        findings = self.ood.assess(self.X) if self.ood else [None] * len(self)
        n_classes = self.probabilities.shape[1]
        base = self.base.tolist()
        results = []
        for i, c in enumerate(self.labels.tolist()):
            explained = [Explained(k, base[k], self.contributions[i, :, k],
                                   float(self.scores[i, k])) for k in range(n_classes)]
            members = [
                MemberOutput(m.name, m.version, m.weight, error=m.error) if m.error is not None
                else MemberOutput(m.name, m.version, m.weight,
                                  probabilities=_row(m.probabilities, i),
                                  explanation=Explained(c, float(_row(m.base, c)),
                                                        _row(m.contributions, i)[:, c],
                                                        float(_row(m.scores, i)[c])))
                for m in self.members
            ]
            results.append(RowResult(
                probabilities=self.probabilities[i], label=c,
                prediction_set=self.prediction_sets[i], explanation=explained[c],
                members=members, ood=findings[i],
                other_classes=[e for e in explained if e.explained_class != c]
                if n_classes > 2 else []))
        return results


def _row(values: np.ndarray | None, i: int) -> Any:
    assert values is not None
    return values[i]


def _explained_transform(space: OutputSpace, n_classes: int) -> np.ndarray:
    """Matrix L with explained-space outputs = scores @ L.T (see module docstring)."""
    if space is OutputSpace.PROBABILITY:
        return np.eye(n_classes)
    if n_classes == 2:
        return np.array([[1.0, -1.0], [-1.0, 1.0]])
    return np.eye(n_classes) - 1.0 / n_classes


def served_probabilities(space: OutputSpace, scores: np.ndarray) -> np.ndarray:
    """Aggregated scores as probabilities. A weighted mean of probabilities can leave [0, 1]
    by a rounding error (-1.7e-16): clipped, so what is served is a probability."""
    return np.clip(scores, 0.0, 1.0) if space is OutputSpace.PROBABILITY else softmax(scores)


@dataclass(frozen=True)
class ReleaseCalibration:
    """What a release stores for routing, as one JSON object: the conformal calibration's
    keys, plus ``ood`` for the out-of-distribution detector and ``risk_rows`` for risk
    control. Kept flat so releases stored before either existed still load (without)."""

    conformal: ConformalCalibration
    ood: OodDetector | None = None
    risk_rows: CalibrationRows | None = None

    def to_json(self) -> dict[str, Any]:
        data = self.conformal.to_json()
        if self.ood is not None:
            data["ood"] = self.ood.to_json()
        if self.risk_rows is not None:
            data["risk_rows"] = self.risk_rows.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReleaseCalibration:
        ood, rows = data.get("ood"), data.get("risk_rows")
        return cls(
            ConformalCalibration.from_json(data),
            None if ood is None else OodDetector.from_json(ood),
            None if rows is None else CalibrationRows.from_json(rows),
        )

    def risk(self, task: TaskSpec, policy: ReviewPolicy) -> RiskControl | None:
        """The thresholds certified on the stored rows for the policy's ``max_auto_error``
        (None when it is unset; nothing certified for a release stored without rows)."""
        if policy.max_auto_error is None:
            return None
        return control_risk(self.risk_rows or CalibrationRows.from_json(None), task.classes,
                            policy.max_auto_error, policy.risk_confidence,
                            policy.auto_error_scope)


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
        risk: RiskControl | None = None,
    ) -> None:
        self.task = task
        self.release_id = release_id
        self.version = version
        self.members = members
        self.calibration = calibration
        self.ood = ood
        self.policy = policy or task.review  # the release's overrides applied, if any
        self.risk = risk  # certified AUTO thresholds, when the policy sets max_auto_error
        self.hold: str | None = None  # why all its predictions go to review (app.quality)
        self.space = task.space
        self.transform = _explained_transform(self.space, len(task.classes))

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        """Aggregated probabilities only (training and evaluation; no explanation)."""
        total = sum(m.weight for m in self.members)
        scores = sum(m.weight / total * m.explainer.scores(X) for m in self.members)
        assert isinstance(scores, np.ndarray)
        return served_probabilities(self.space, scores)

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
        """Results per row (none when every member failed) and the errors of failed
        members (empty when all ran); see ``predict_columns``."""
        outputs, errors = self.predict_columns(X, timings)
        return ([] if outputs is None else outputs.rows()), errors

    def predict_columns(self, X: np.ndarray, timings: dict[str, float] | None = None
                        ) -> tuple[Outputs | None, dict[str, str]]:
        """The batch's results as arrays (None when every member failed) and the errors of
        failed members (empty when all ran); ``timings`` accumulates seconds spent in
        ``infer`` (models and aggregation) and in ``explain`` (SHAP)."""
        outputs = self._run_members(X, timings)
        started = time.perf_counter()
        ok = {n: o for n, o in outputs.items() if not isinstance(o, str)}
        errors = {n: o for n, o in outputs.items() if isinstance(o, str)}
        if not ok:
            return None, errors
        weights = {m.name: m.weight for m in self.members if m.name in ok}
        total = sum(weights.values())
        L = self.transform
        scores = sum(weights[n] / total * o[1].scores for n, o in ok.items())
        contrib = sum(weights[n] / total * o[1].contributions for n, o in ok.items())
        base = sum(weights[n] / total * o[1].base for n, o in ok.items())
        assert isinstance(scores, np.ndarray) and isinstance(contrib, np.ndarray)
        proba = served_probabilities(self.space, scores)
        members = [
            MemberColumns(m.name, m.version, m.weight, error=errors[m.name])
            if m.name in errors else
            # Members explain the ensemble's class, so their charts compare side by side:
            # each member's outputs in the explained space.
            MemberColumns(m.name, m.version, m.weight, probabilities=ok[m.name][0],
                          base=ok[m.name][1].base @ L.T,
                          contributions=ok[m.name][1].contributions @ L.T,
                          scores=ok[m.name][1].scores @ L.T)
            for m in self.members
        ]
        result = Outputs(
            probabilities=proba,
            labels=proba.argmax(axis=1),
            prediction_sets=self.calibration.prediction_sets(proba),
            base=np.asarray(base) @ L.T,
            contributions=contrib @ L.T,
            scores=scores @ L.T,
            members=members,
            X=X,
            ood=self.ood,
            ood_flags=self.ood.flags(X) if self.ood else np.zeros(len(X), dtype=bool),
        )
        if timings is not None:
            add_time(timings, "infer", time.perf_counter() - started)
        return result, errors
