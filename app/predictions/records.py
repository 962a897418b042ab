"""Prediction records built from an ensemble's outputs for a batch: labels, probabilities,
members, the explanation and the routing decision of each row, ready to store."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np

from app.db.rows import built
from app.db.tables import Prediction, Status
from app.db.types import utcnow
from app.ml.ensemble import Ensemble, MemberColumns, Outputs
from app.ml.routing import Reason, Route, decide_routes
from app.ml.task import TaskSpec
from app.predictions.explanation import Contribution, Explanation, OtherClass
from app.predictions.inputs import Inputs, input_hash
from app.quality.holds import held


class ClassProbability(TypedDict):
    """One class's probability, stored as it is."""

    label: str
    probability: float


@dataclass(frozen=True)
class Shape:
    """What every record of a task and release repeats: worked out once per call."""

    task: TaskSpec
    ensemble: Ensemble
    space: str
    columns: list[tuple[int, str, bool]]  # (index, model column, derived?)

    @classmethod
    def of(cls, task: TaskSpec, ensemble: Ensemble) -> Shape:
        """The shape of ``task``'s records answered by ``ensemble``."""
        derived = {d.name for d in task.derived}
        return cls(task, ensemble, ensemble.space.value,
                   [(j, name, name in derived) for j, name in enumerate(task.model_columns)])


def _probabilities(classes: tuple[str, ...], p: list[float]) -> list[ClassProbability]:
    return [{"label": c, "probability": v} for c, v in zip(classes, p, strict=True)]


@dataclass
class _MemberLists:
    """A member's outputs for a batch as Python lists (one conversion per array, not per
    element: per element costs 3x more), for the predicted class of each row."""

    name: str
    version: str
    weight: float
    error: str | None
    probabilities: list[list[float]]
    labels: list[int]
    base: list[float]
    shap: list[list[float]]  # per row, the predicted class's SHAP values
    output: list[float]

    @classmethod
    def of(cls, m: MemberColumns, labels: np.ndarray) -> _MemberLists:
        """``labels``: the ensemble's class of each row, which members explain."""
        if m.error is not None:
            return cls(m.name, m.version, m.weight, m.error, [], [], [], [], [])
        assert m.probabilities is not None and m.base is not None
        assert m.contributions is not None and m.scores is not None
        rows = np.arange(len(labels))
        return cls(m.name, m.version, m.weight, None, m.probabilities.tolist(),
                   m.probabilities.argmax(axis=1).tolist(), m.base.tolist(),
                   m.contributions[rows, :, labels].tolist(), m.scores[rows, labels].tolist())

    def json(self, shape: Shape, i: int, c: int) -> dict[str, Any]:
        """Row i's entry in ``members`` (c: the ensemble's class). Its explanation is stored
        compact: SHAP values alone, in the order of the prediction's
        ``explanation.contributions``, whose features and values they share (a third of the
        bytes of a full one; the API returns both the same way)."""
        if self.error is not None:
            return {"name": self.name, "version": self.version, "weight": self.weight,
                    "error": self.error, "label": None, "probabilities": None,
                    "explanation": None}
        classes = shape.task.classes
        explanation = Explanation("OK", shape.space, classes[c], self.base[c], self.output[i],
                                  shap=self.shap[i])
        return {
            "name": self.name,
            "version": self.version,
            "weight": self.weight,
            "error": None,
            "label": classes[self.labels[i]],
            "probabilities": _probabilities(classes, self.probabilities[i]),
            "explanation": explanation.to_json(),
        }


@dataclass(frozen=True)
class _Batch:
    """A batch's outputs as Python lists (one conversion per array), with the ids and
    routing decisions of its rows: each row's record is read from these columns."""

    shape: Shape
    inputs: Inputs
    latency_ms: float
    ids: list[str]
    routes: list[tuple[Route, list[Reason]]]
    labels: list[int]
    probabilities: list[list[float]]
    sets: list[list[bool]]
    base: list[float]
    scores: list[list[float]]
    shap: list[list[list[float]]]  # (rows, classes, model columns): contributions order
    model_values: list[list[Any]]
    members: list[_MemberLists]
    status: str  # PARTIAL when a member failed

    @classmethod
    def of(cls, shape: Shape, out: Outputs, inputs: Inputs, latency_ms: float) -> _Batch:
        """The columns of ``out``, whose rows are ``inputs``."""
        ids = [str(uuid.uuid4()) for _ in inputs.rows]
        routes = held(decide_routes(shape.ensemble.policy, shape.task.classes, out, ids,
                                    shape.ensemble.risk), shape.ensemble.hold)
        members = [_MemberLists.of(m, out.labels) for m in out.members]
        return cls(shape, inputs, latency_ms, ids, routes, out.labels.tolist(),
                   out.probabilities.tolist(), out.prediction_sets.tolist(), out.base.tolist(),
                   out.scores.tolist(), out.contributions.transpose(0, 2, 1).tolist(),
                   out.X.tolist(), members, "PARTIAL" if any(m.error for m in members) else "OK")

    def explanation(self, i: int) -> Explanation:
        """Row i's explanation of its predicted class."""
        classes = self.shape.task.classes
        c, raw, values, shap, scores = (self.labels[i], self.inputs.rows[i],
                                        self.model_values[i], self.shap[i], self.scores[i])
        contributions: list[Contribution] = [
            {"feature": name, "value": values[j] if derived else raw.get(name),
             "shap": shap[c][j], "derived": derived}
            for j, name, derived in self.shape.columns
        ]
        others = None
        if len(classes) > 2:  # so that a picture of any class can be drawn from what is stored
            others = [OtherClass(classes[k], self.base[k], scores[k], shap[k])
                      for k in range(len(classes)) if k != c]
        return Explanation(self.status, self.shape.space, classes[c], self.base[c], scores[c],
                           contributions=contributions, other_classes=others)

    def record(self, i: int) -> Prediction:
        """Row i's record. Every value is made here, of the column's type: the row is built
        without the constructor's validation (see ``built``)."""
        shape, inputs, raw, c = self.shape, self.inputs, self.inputs.rows[i], self.labels[i]
        classes = shape.task.classes
        route, reasons = self.routes[i]
        label = classes[c]
        return built(Prediction, {
            "id": self.ids[i],
            "task": shape.task.name,
            "release_id": shape.ensemble.release_id,
            "release_version": shape.ensemble.version,
            "caller_key_id": inputs.caller_id,
            "idempotency_key": inputs.keys[i],
            "entity_key": inputs.traffic_keys[i] if inputs.traffic_keys else None,
            "input_hash": input_hash(raw),
            "input": raw,
            "label": label,
            "confidence": self.probabilities[i][c],
            "probabilities": _probabilities(classes, self.probabilities[i]),
            "prediction_set": [k for k, inside in zip(classes, self.sets[i], strict=True)
                               if inside],
            "members": [m.json(shape, i, c) for m in self.members],
            "explanation": self.explanation(i).to_json(),
            "route": route.value,
            "reasons": [r.to_json() for r in reasons],
            "status": Status.ACCEPTED if route is Route.AUTO else Status.PENDING_REVIEW,
            "final_label": label if route is Route.AUTO else None,
            "latency_ms": self.latency_ms,
            "created_at": utcnow(),
        })


def records(shape: Shape, out: Outputs, inputs: Inputs, latency_ms: float) -> list[Prediction]:
    """The records of a batch's rows (``inputs``, in the order of ``out``), built from whole
    columns."""
    batch = _Batch.of(shape, out, inputs, latency_ms)
    return [batch.record(i) for i in range(len(inputs.rows))]
