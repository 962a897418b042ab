"""A prediction's SHAP explanation as the prediction path makes it and pictures read it back.

It is stored as JSON (``predictions.explanation``, and compact in each member) with the
API's camelCase keys; ``to_json`` and ``from_json`` are the one place that spells them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NotRequired, TypedDict


class ExplanationStatus(StrEnum):
    """Whether every member's explanation went into the ensemble's."""

    OK = "OK"
    PARTIAL = "PARTIAL"  # a member failed; the others decided and are explained


class Contribution(TypedDict):
    """One feature's part of an explanation, stored as it is."""

    feature: str
    value: Any  # the input's value (a derived feature: the value the model saw)
    shap: float
    derived: NotRequired[bool]  # absent in rows stored before derived features


# Not frozen: a batch makes several per row, and a frozen dataclass's __init__ (one
# object.__setattr__ per field) made record building 10-20 % slower (measured).
@dataclass(slots=True)
class OtherClass:
    """A class other than the explained one (multiclass): base + sum(shap) = output."""

    name: str
    base_value: float
    output_value: float
    shap: list[float]  # in the order of the explanation's contributions

    def to_json(self) -> dict[str, Any]:
        """The stored spelling."""
        return {"class": self.name, "baseValue": self.base_value,
                "outputValue": self.output_value, "shap": self.shap}


@dataclass(slots=True)
class Explanation:
    """SHAP values of the explained class: base_value + sum(shap) = output_value in
    ``space``. A prediction's carries its ``contributions``; a member's is compact, its
    ``shap`` values alone, in the order of the prediction's contributions."""

    status: str  # OK, or PARTIAL when a member failed
    space: str
    explained_class: str
    base_value: float
    output_value: float
    contributions: list[Contribution] | None = None
    shap: list[float] | None = None
    other_classes: list[OtherClass] | None = None  # multiclass predictions: every other class

    def to_json(self) -> dict[str, Any]:
        """The stored spelling (key order as stored since the first release)."""
        stored: dict[str, Any] = {
            "status": self.status,
            "space": self.space,
            "explainedClass": self.explained_class,
            "baseValue": self.base_value,
            "outputValue": self.output_value,
        }
        if self.contributions is not None:
            stored["contributions"] = self.contributions
        if self.shap is not None:
            stored["shap"] = self.shap
        if self.other_classes is not None:
            stored["otherClasses"] = [o.to_json() for o in self.other_classes]
        return stored

    @classmethod
    def from_json(cls, stored: dict[str, Any]) -> Explanation:
        """An explanation read back from its stored spelling."""
        others = stored.get("otherClasses")
        return cls(
            status=stored["status"],
            space=stored["space"],
            explained_class=stored["explainedClass"],
            base_value=stored["baseValue"],
            output_value=stored["outputValue"],
            contributions=stored.get("contributions"),
            shap=stored.get("shap"),
            other_classes=None if others is None else [
                OtherClass(o["class"], o["baseValue"], o["outputValue"], o["shap"])
                for o in others],
        )
