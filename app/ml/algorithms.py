"""The allow-list of estimators a member may use, and how each is built and explained.

Every algorithm states the space in which SHAP explains it exactly (TreeExplainer and
LinearExplainer are exact in the model's raw output): log-odds for logistic regression and
gradient boosting, probability for random forests. A release aggregates in that space, so
the ensemble explanation stays exact (see ``ensemble.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sklearn.base import ClassifierMixin
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier


class OutputSpace(StrEnum):
    """The space a member's explanation adds up in."""

    LOG_ODDS = "LOG_ODDS"
    PROBABILITY = "PROBABILITY"


class ExplainerKind(StrEnum):
    """Which SHAP explainer fits an algorithm."""

    LINEAR = "linear"
    TREE = "tree"


@dataclass(frozen=True)
class Algorithm:
    """An allowed estimator family."""

    name: str
    family: str
    build: Callable[..., ClassifierMixin]
    space: OutputSpace
    explainer: ExplainerKind
    multiclass: bool
    defaults: dict[str, Any]
    scale_numeric: bool


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm(
            "logistic_regression",
            "linear",
            LogisticRegression,
            OutputSpace.LOG_ODDS,
            ExplainerKind.LINEAR,
            True,
            {"max_iter": 2000},
            True,
        ),
        Algorithm(
            "hist_gradient_boosting",
            "boosted_trees",
            HistGradientBoostingClassifier,
            OutputSpace.LOG_ODDS,
            ExplainerKind.TREE,
            True,
            {"max_iter": 100},
            False,
        ),
        Algorithm(
            "gradient_boosting",
            "boosted_trees",
            GradientBoostingClassifier,
            OutputSpace.LOG_ODDS,
            ExplainerKind.TREE,
            False,
            {"n_estimators": 100},
            False,
        ),
        Algorithm(
            "random_forest",
            "bagged_trees",
            RandomForestClassifier,
            OutputSpace.PROBABILITY,
            ExplainerKind.TREE,
            True,
            {"n_estimators": 100, "n_jobs": 1},
            False,
        ),
        Algorithm(
            "extra_trees",
            "bagged_trees",
            ExtraTreesClassifier,
            OutputSpace.PROBABILITY,
            ExplainerKind.TREE,
            True,
            {"n_estimators": 100, "n_jobs": 1},
            False,
        ),
        Algorithm(
            "decision_tree",
            "trees",
            DecisionTreeClassifier,
            OutputSpace.PROBABILITY,
            ExplainerKind.TREE,
            True,
            {},
            False,
        ),
    )
}


def algorithm_of(estimator: object) -> Algorithm | None:
    """The allowed algorithm an estimator is an instance of (exactly that class: a subclass
    may change what its explainer relies on), or None."""
    return next((a for a in ALGORITHMS.values() if type(estimator) is a.build), None)


def supported_estimators() -> str:
    """The estimator classes members may be, for error messages."""
    return ", ".join(sorted(getattr(a.build, "__name__", a.name) for a in ALGORITHMS.values()))
