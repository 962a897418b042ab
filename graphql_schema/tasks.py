"""Tasks over GraphQL: the declared contracts (features, members, review policy) from the
registry."""

from __future__ import annotations

import strawberry

from app.ml.task import TaskSpec
from graphql_schema.enums import FeatureType, OutputSpace
from graphql_schema.permissions import GUARDED, Info


@strawberry.type(description="One input field of a task's contract: enough to build a form.")
class Feature:
    name: str
    type: FeatureType
    required: bool
    min: float | None
    max: float | None
    categories: list[str]
    description: str


@strawberry.type(description="A feature computed from inputs by a named Python function.")
class DerivedFeature:
    name: str
    function: str
    inputs: list[str]
    description: str


@strawberry.type(description="A declared ensemble member.")
class MemberSpec:
    name: str
    algorithm: str
    weight: float


@strawberry.type(description="A prediction problem declared in a task file.")
class Task:
    name: str
    description: str
    classes: list[str]
    features: list[Feature]
    derived: list[DerivedFeature]
    members: list[MemberSpec]
    space: OutputSpace = strawberry.field(description="Where the ensemble aggregates.")
    confidence_level: float = strawberry.field(
        description="Conformal prediction sets hold the true class at least this often."
    )
    hide_explanation: bool = strawberry.field(
        description="Reviewers see a claimed item's explanation only when they ask for it "
        "(ReviewItem.prediction(revealExplanation: true)); the review page shows a button."
    )
    lease_seconds: float = strawberry.field(description="How long a review claim holds.")

    @classmethod
    def from_spec(cls, t: TaskSpec) -> Task:
        return cls(
            name=t.name,
            description=t.description,
            classes=list(t.classes),
            features=[
                Feature(name=f.name, type=f.type, required=f.required, min=f.min, max=f.max,
                        categories=list(f.categories), description=f.description)
                for f in t.features
            ],
            derived=[
                DerivedFeature(name=d.name, function=d.function, inputs=list(d.inputs),
                               description=d.description)
                for d in t.derived
            ],
            members=[
                MemberSpec(name=m.name, algorithm=m.algorithm, weight=m.weight) for m in t.members
            ],
            space=t.space,
            confidence_level=t.review.confidence_level,
            hide_explanation=t.review.hide_explanation,
            lease_seconds=t.review.lease_seconds,
        )


@strawberry.type
class TaskQuery:
    @strawberry.field(permission_classes=GUARDED, description="Every declared task.")
    def tasks(self, info: Info) -> list[Task]:
        return [Task.from_spec(t) for t in info.context.services.registry.tasks.values()]

    @strawberry.field(permission_classes=GUARDED, description="One task by name.")
    def task(self, info: Info, name: str) -> Task:
        return Task.from_spec(info.context.services.registry.task(name))
