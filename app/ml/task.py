"""Task declarations: one TOML file per prediction problem, validated into a ``TaskSpec``."""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
import tomllib
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.errors import BadRequestError, ConfigurationError
from app.ml.algorithms import ALGORITHMS, OutputSpace
from app.ml.drift_settings import DriftSettings


class FeatureType(StrEnum):
    """The kind of values an input feature takes."""

    NUMERIC = "numeric"
    CATEGORICAL = "categorical"
    BOOLEAN = "boolean"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Feature(_Strict):
    """One input field of the contract."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    type: FeatureType
    required: bool = True
    min: float | None = None
    max: float | None = None
    categories: tuple[str, ...] = ()
    description: str = ""
    pii: bool = False

    @model_validator(mode="after")
    def _check(self) -> Feature:
        if self.type is FeatureType.CATEGORICAL and not self.categories:
            raise ValueError(f"categorical feature {self.name!r} needs `categories`")
        if self.type is not FeatureType.CATEGORICAL and self.categories:
            raise ValueError(f"only categorical features take `categories` ({self.name!r})")
        if self.type is not FeatureType.NUMERIC and (self.min is not None or self.max is not None):
            raise ValueError(f"only numeric features take `min`/`max` ({self.name!r})")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"feature {self.name!r}: min {self.min} > max {self.max}")
        return self


class DerivedFeature(_Strict):
    """A numeric feature computed from inputs by a vectorised function named by import path."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    function: str = Field(description="`module:function`, called with one array per input")
    inputs: tuple[str, ...]
    description: str = ""


class Member(_Strict):
    """One model of the ensemble: an allow-listed algorithm, its params and its weight."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")
    algorithm: str
    weight: float = Field(gt=0)
    params: dict[str, Any] = Field(default_factory=dict)
    artifact: str | None = Field(
        default=None,
        description="A fitted scikit-learn estimator or Pipeline in a skops file (relative to "
        "the task file) served instead of one Arbiter fits; `algorithm` names its estimator.",
    )

    @model_validator(mode="after")
    def _check(self) -> Member:
        if self.artifact is not None and self.params:
            raise ValueError(f"member {self.name!r}: an artifact brings its own params")
        return self


MAX_LEASE_SECONDS = 7 * 24 * 3600.0  # longer only hides an item (and 1e12 s overflowed a date)


class ReviewPolicy(_Strict):
    """When a prediction goes to people instead of straight back to the caller."""

    confidence_level: float = Field(
        default=0.9, gt=0, lt=1, description="Conformal sets hold the true class this often."
    )
    route_on_disagreement: bool = True
    audit_rate: float = Field(default=0.0, ge=0, le=1)
    required_reviews: int = Field(
        default=1,
        ge=1,
        le=10,
        description="Independent reviews per item; if they disagree an adjudicator decides.",
    )
    sla_hours: float = Field(default=24.0, gt=0, description="An item is due this long after.")
    lease_seconds: float = Field(default=600.0, ge=1, le=MAX_LEASE_SECONDS,
                                 description="How long a claim holds (at most 7 days).")
    hide_explanation: bool = Field(
        default=False, description="Reviewers see explanations only on request (they bias some)."
    )
    route_on_ood: bool = True
    ood_quantile: float = Field(
        default=0.995,
        gt=0.5,
        le=1,
        description="In-distribution inputs stay under the out-of-distribution threshold this "
        "often (fixed at training); 1.0 switches the check off.",
    )
    max_auto_error: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Certified bound on the error rate among AUTO predictions (epsilon); "
        "unset leaves routing to the conformal, disagreement and OOD rules alone.",
    )
    risk_confidence: float = Field(
        default=0.9,
        ge=0.5,
        lt=1,
        description="The bound holds with this probability over the calibration draw (1 - delta).",
    )
    auto_error_scope: Literal["class", "overall"] = Field(
        default="class",
        description="The bound holds for the AUTO predictions of each predicted class, or overall.",
    )
    risk_calibration: Literal["split", "cross_fit"] = Field(
        default="split",
        description="Certify on the release's own calibration and held-out rows (exact), or "
        "add the training rows' out-of-fold scores from members cross-fitted on the other "
        "folds (more rows for small tasks; approximate, see app.risk.control).",
    )
    on_bound_exceeded: Literal["review_all", "alert"] = Field(
        default="review_all",
        description="When live quality shows the bound broken: route everything to review until "
        "a new release is certified, or only raise the alert.",
    )


# Review-policy fields a release may override without retraining. The conformal level can
# change freely (the stored calibration scores serve any level); the out-of-distribution
# quantile cannot (its threshold was fixed from held-out scores at training).
RELEASE_OVERRIDABLE = frozenset(
    {
        "confidence_level",
        "route_on_disagreement",
        "audit_rate",
        "route_on_ood",
        "required_reviews",
        "sla_hours",
        "lease_seconds",
        "hide_explanation",
    }
)


def release_policy(base: ReviewPolicy, overrides: dict[str, Any]) -> ReviewPolicy:
    """The task's policy with a release's overrides applied and validated."""
    unknown = sorted(set(overrides) - RELEASE_OVERRIDABLE)
    if unknown:
        raise BadRequestError(
            f"a release cannot override {', '.join(unknown)}; it may override "
            f"{', '.join(sorted(RELEASE_OVERRIDABLE))} (ood_quantile needs a new training)"
        )
    try:
        return ReviewPolicy.model_validate({**base.model_dump(), **overrides})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise BadRequestError(f"invalid routing override: {problems}") from None


class DataSource(_Strict):
    """Where training rows come from: a loader function or a CSV file beside the task file."""

    loader: str | None = None
    csv: str | None = None
    target: str = "target"

    @model_validator(mode="after")
    def _one_source(self) -> DataSource:
        if (self.loader is None) == (self.csv is None):
            raise ValueError("[data] needs exactly one of `loader` or `csv`")
        return self


class TrainingSettings(_Strict):
    """How a release is fitted, and what starts a retraining besides `retrain(task)`."""

    seed: int = 0
    test_fraction: float = Field(default=0.2, gt=0, lt=0.5)
    calibration_fraction: float = Field(default=0.2, gt=0, lt=0.5)
    reviewed_weight: float = Field(
        default=1.0, gt=0, le=100, description="Sample weight of a reviewed row (source: 1)."
    )
    retrain_after_labels: int = Field(
        default=0, ge=0, description="Retrain once this many new labels are settled (0: never)."
    )
    retrain_every_hours: float = Field(
        default=0.0, ge=0, description="Retrain this long after the last training (0: never)."
    )


class GateMetric(StrEnum):
    """The metrics the evaluation gate can judge a candidate by."""

    ACCURACY = "accuracy"
    BALANCED_ACCURACY = "balanced_accuracy"
    LOG_LOSS = "log_loss"  # lower is better
    ROC_AUC = "roc_auc"


class GateSettings(_Strict):
    """The evaluation gate a retrained candidate must pass against the LIVE release, what
    happens to it when it passes, and when a canary is rolled back automatically."""

    primary_metric: GateMetric = GateMetric.ACCURACY
    improve_on: Literal["all", "reviewed"] = Field(
        default="all",
        description="Held-out rows the improvement is measured on: all of them (source rows "
        "dominate until many labels arrive), or the reviewed ones only (recent traffic, for "
        "tasks whose data shift).",
    )
    min_improvement: float = Field(
        default=0.001, ge=0, description="Beat LIVE by at least this on `improve_on` rows."
    )
    max_regression: float = Field(
        default=0.01, ge=0, description="No held-out slice (source, reviewed) worse by more."
    )
    min_rows: int = Field(
        default=10, ge=0, description="Paired held-out rows the gate needs to judge at all; "
        "fewer is INSUFFICIENT_EVIDENCE (the candidate stays a CANDIDATE).")
    significance: float = Field(
        default=0.05, gt=0, le=1, description="A candidate passes only if the one-sided test "
        "of 'no better than LIVE' has a p-value below this (McNemar or paired bootstrap).")
    promote_to: Literal["CANDIDATE", "SHADOW", "CANARY", "LIVE"] = "SHADOW"
    canary_percent: float = Field(default=10.0, gt=0, lt=100)
    canary_max_shortfall: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Roll a canary back when its accuracy on reviewed predictions trails "
        "LIVE's on the same predictions by more than this.",
    )
    canary_min_reviewed: int = Field(
        default=30, ge=1, description="Reviewed canary predictions needed before judging it."
    )


class TaskSpec(_Strict):
    """A whole prediction problem as declared in its TOML file."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""
    classes: tuple[str, ...] = Field(min_length=2)
    features: tuple[Feature, ...] = Field(min_length=1)
    derived: tuple[DerivedFeature, ...] = ()
    members: tuple[Member, ...] = Field(min_length=1)
    review: ReviewPolicy = ReviewPolicy()
    data: DataSource
    training: TrainingSettings = TrainingSettings()
    gate: GateSettings = GateSettings()
    drift: DriftSettings = DriftSettings()
    # Whether prediction log lines may carry the input values (never the pii features).
    log_inputs: bool = False
    source_path: str = ""

    @model_validator(mode="after")
    def _check(self) -> TaskSpec:
        _unique("class", self.classes)
        _unique("feature", [f.name for f in self.features] + [d.name for d in self.derived])
        _unique("member", [m.name for m in self.members])
        inputs = {f.name for f in self.features}
        for d in self.derived:
            missing = [i for i in d.inputs if i not in inputs]
            if missing:
                raise ValueError(f"derived feature {d.name!r} uses unknown inputs {missing}")
        for m in self.members:
            algo = ALGORITHMS.get(m.algorithm)
            if algo is None:
                raise ValueError(
                    f"member {m.name!r}: algorithm {m.algorithm!r} is not allowed; "
                    f"choose one of {sorted(ALGORITHMS)}"
                )
            if len(self.classes) > 2 and not algo.multiclass:
                raise ValueError(f"member {m.name!r}: {m.algorithm} supports two classes only")
        self._check_drift(inputs)
        spaces = {ALGORITHMS[m.algorithm].space for m in self.members}
        if len(spaces) > 1:
            raise ValueError(
                "members must all explain in one space so the ensemble explanation is exact: "
                + ", ".join(f"{m.name}={ALGORITHMS[m.algorithm].space}" for m in self.members)
            )
        return self

    def _check_drift(self, inputs: set[str]) -> None:
        for name, override in self.drift.features.items():
            if name not in inputs:
                raise ValueError(
                    f"[drift.features.{name}]: {name!r} is not an input feature; "
                    f"choose one of {sorted(inputs)}"
                )
            numeric = self.feature(name).type is FeatureType.NUMERIC
            if override.test is not None and override.test.numeric != numeric:
                allowed = "ks, wasserstein" if numeric else "chi2, jensenshannon"
                raise ValueError(
                    f"[drift.features.{name}]: test {override.test.value!r} does not fit a "
                    f"{self.feature(name).type.value} feature; use one of {allowed}"
                )

    @property
    def space(self) -> OutputSpace:
        return ALGORITHMS[self.members[0].algorithm].space

    @property
    def model_columns(self) -> list[str]:
        """The columns the pipelines see: inputs in declared order, then derived features."""
        return [f.name for f in self.features] + [d.name for d in self.derived]

    def feature(self, name: str) -> Feature:
        return next(f for f in self.features if f.name == name)

    def contract_hash(self) -> str:
        """Hash of everything a trained model depends on: features, derivations, classes."""
        payload = {
            "classes": self.classes,
            "features": [f.model_dump(exclude={"description", "pii"}) for f in self.features],
            "derived": [d.model_dump(exclude={"description"}) for d in self.derived],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _unique(kind: str, names: Any) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{kind} {name!r} is declared twice")
        seen.add(name)


def load_task(path: Path) -> TaskSpec:
    """Read and validate one task file; errors name the file and the field."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"cannot read task file {path}: {exc}") from None
    try:
        return TaskSpec.model_validate({**raw, "source_path": str(path.resolve())})
    except ValidationError as exc:
        raise ConfigurationError(f"task file {path} is invalid:\n{exc}") from None


def load_tasks(folder: Path) -> dict[str, TaskSpec]:
    """Every ``*.toml`` task in a folder, by name. The folder joins ``sys.path`` so that
    derived-feature functions and loaders written beside the task files can be imported."""
    if not folder.is_dir():
        raise ConfigurationError(f"tasks folder {folder} does not exist (ARBITER_TASKS_DIR)")
    if str(folder.resolve()) not in sys.path:
        sys.path.append(str(folder.resolve()))
    tasks: dict[str, TaskSpec] = {}
    for path in sorted(folder.glob("*.toml")):
        task = load_task(path)
        if task.name in tasks:
            raise ConfigurationError(f"task {task.name!r} is declared twice (second: {path})")
        tasks[task.name] = task
    return tasks


def resolve_callable(path: str, what: str) -> Callable[..., Any]:
    """Import ``module:function``; a clear error names the task file's bad path."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(f"{what}: {path!r} is not of the form 'module:function'")
    try:
        func = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"{what}: cannot import {path!r}: {exc}") from None
    if not callable(func):
        raise ConfigurationError(f"{what}: {path!r} is not callable")
    return func
