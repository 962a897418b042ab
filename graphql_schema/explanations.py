"""Explanations over GraphQL: a prediction's SHAP contributions and class probabilities as
stored, with personal inputs redacted for roles that may not read them."""

from __future__ import annotations

from typing import Any

import strawberry
from strawberry.scalars import JSON

from app.access.pii import redact, sees_pii
from app.errors import UnknownTaskError
from app.ml.task import TaskSpec
from graphql_schema.context import Info
from graphql_schema.enums import OutputSpace
from graphql_schema.scalars import as_json


@strawberry.type(description="The probability of one class.")
class ClassProbability:
    label: str
    probability: float


def probabilities(items: list[dict[str, Any]] | None) -> list[ClassProbability] | None:
    """Stored ``{label, probability}`` pairs as GraphQL objects (None stays None)."""
    if items is None:
        return None
    return [ClassProbability(label=p["label"], probability=p["probability"]) for p in items]


def visible(info: Info, task: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` as the caller may read them: personal ones redacted unless auditor/admin."""
    if sees_pii(info.context.caller().role):
        return values
    try:
        spec: TaskSpec | None = info.context.services.registry.task(task)
    except UnknownTaskError:
        spec = None
    return redact(spec, values)


@strawberry.type(description="What one feature added to the explained output.")
class Contribution:
    feature: str
    shap: float
    derived: bool
    task: strawberry.Private[str]
    raw_value: strawberry.Private[Any]

    @strawberry.field(description="The feature's value in this input; \"[redacted]\" for "
                      "personal (pii) features unless the caller is an auditor or admin.")
    def value(self, info: Info) -> JSON | None:
        return as_json(visible(info, self.task, {self.feature: self.raw_value})[self.feature])


@strawberry.type(description="SHAP explanation: baseValue + sum(shap) = outputValue in `space`.")
class Explanation:
    status: str = strawberry.field(description="OK, or PARTIAL when a member failed.")
    space: OutputSpace
    explained_class: str
    base_value: float
    output_value: float
    task: strawberry.Private[str]
    stored: strawberry.Private[list[dict[str, Any]]]

    @strawberry.field
    def contributions(self) -> list[Contribution]:
        return [Contribution(feature=c["feature"], raw_value=c["value"], shap=c["shap"],
                             derived=c["derived"], task=self.task) for c in self.stored]

    @classmethod
    def from_json(cls, d: dict[str, Any], task: str,
                  features: list[dict[str, Any]] | None = None) -> Explanation:
        """A stored explanation; a compact one (a member's: ``shap`` values alone) takes
        its features and values from ``features``, the prediction's contributions."""
        if "contributions" in d:
            stored = d["contributions"]
        else:
            if features is None:
                raise ValueError("a compact explanation needs the prediction's features")
            stored = [{**c, "shap": s} for c, s in zip(features, d["shap"], strict=True)]
        return cls(
            status=d["status"],
            space=OutputSpace(d["space"]),
            explained_class=d["explainedClass"],
            base_value=d["baseValue"],
            output_value=d["outputValue"],
            task=task,
            stored=stored,
        )
