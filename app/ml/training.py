"""Fitting a release: every member, the conformal calibration, the out-of-distribution
detector, the rows risk control certifies on, and the evaluation report.

Pure: no database. ``app.releases.store`` stores what this returns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline

from app.errors import TrainingError
from app.ml.algorithms import ALGORITHMS
from app.ml.conformal import ConformalCalibration, calibrate
from app.ml.data import load_frame, training_arrays
from app.ml.ensemble import Ensemble, LoadedMember, ReleaseCalibration
from app.ml.explain import MemberExplainer
from app.ml.ood import fit_ood
from app.ml.pipeline import build_pipeline, member_fold
from app.ml.task import Member, TaskSpec
from app.risk.binomial import clopper_pearson
from app.risk.control import CalibrationRows


@dataclass
class TrainedMember:
    """One fitted member with its background and metrics."""

    spec: Member
    pipeline: Pipeline
    background_mean: np.ndarray
    metrics: dict[str, Any]
    origin: dict[str, Any] = field(default_factory=dict)  # see MemberPlan


@dataclass(frozen=True)
class MemberPlan:
    """How a release gets one member: fitted from its spec (the default), a fitted
    ``pipeline`` kept as it is, or a ``template`` whose clone (same hyperparameters) is fitted
    on the release's training rows. ``origin`` is its lineage ({} for a trained member)."""

    spec: Member
    pipeline: Pipeline | None = None
    template: Pipeline | None = None
    origin: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReviewedRows:
    """Rows people labelled, each with the split it belongs to (see app.training.snapshots)."""

    X: np.ndarray
    y: np.ndarray
    splits: np.ndarray  # "train", "calibration" or "holdout" per row


@dataclass
class Holdout:
    """The held-out rows a release was evaluated on, with which of them came from reviews:
    the evaluation gate scores the LIVE release on exactly these rows."""

    X: np.ndarray
    y: np.ndarray
    reviewed: np.ndarray  # bool per row
    proba: np.ndarray  # the release's probabilities on X

    def slices(self) -> dict[str, np.ndarray]:
        return {"all": np.ones(len(self.y), bool), "source": ~self.reviewed,
                "reviewed": self.reviewed}


@dataclass
class TrainedRelease:
    """A whole fitted release, before it is stored."""

    task: TaskSpec
    members: list[TrainedMember]
    calibration: ReleaseCalibration
    metrics: dict[str, Any]
    data_hash: str
    rows: dict[str, int]
    holdout: Holdout | None = None


COVERAGE_INTERVAL = 0.95  # confidence of the reported coverage's interval
CROSS_FIT_FOLDS = 5  # with risk_calibration = "cross_fit"

# progress(fraction of the fit done, what is happening); called from the fitting thread
Progress = Callable[[float, str], None]


def _no_progress(_: float, __: str) -> None:
    return None


def _balanced_accuracy(y: np.ndarray, predicted: np.ndarray) -> float:
    """Mean recall over the classes present (as scikit-learn's, which warns on the small
    one-class slices the evaluation gate meets)."""
    return float(np.mean([np.mean(predicted[y == c] == c) for c in np.unique(y)]))


def classification_metrics(proba: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Accuracy, balanced accuracy, log loss and ROC AUC (one-vs-rest when multiclass)."""
    k = proba.shape[1]
    labels = np.arange(k)
    metrics = {
        "accuracy": float(accuracy_score(y, proba.argmax(1))),
        "balanced_accuracy": _balanced_accuracy(y, proba.argmax(1)),
        "log_loss": float(log_loss(y, proba, labels=labels)),
    }
    if len(np.unique(y)) == k:
        metrics["roc_auc"] = float(
            roc_auc_score(y, proba[:, 1])
            if k == 2
            else roc_auc_score(y, proba, multi_class="ovr", labels=labels)
        )
    return metrics


def _split(task: TaskSpec, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    s = task.training
    try:
        X_rest, X_test, y_rest, y_test = train_test_split(
            X, y, test_size=s.test_fraction, stratify=y, random_state=s.seed
        )
        X_train, X_cal, y_train, y_cal = train_test_split(
            X_rest,
            y_rest,
            test_size=s.calibration_fraction / (1 - s.test_fraction),
            stratify=y_rest,
            random_state=s.seed,
        )
    except ValueError as exc:
        raise TrainingError(f"cannot split the data of {task.name}: {exc}") from None
    return X_train, X_cal, X_test, y_train, y_cal, y_test


def _with_reviewed(
    task: TaskSpec, split: tuple[np.ndarray, ...], reviewed: ReviewedRows | None
) -> tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray]:
    """The source split with each reviewed row added to its own split; the training
    weights, and which test rows came from reviews."""
    X_train, X_cal, X_test, y_train, y_cal, y_test = split
    weights = np.ones(len(y_train))
    from_review = np.zeros(len(y_test), bool)
    if reviewed is None or not len(reviewed.y):
        return split, weights, from_review
    parts = {name: reviewed.splits == name for name in ("train", "calibration", "holdout")}
    n_train = int(parts["train"].sum())
    X_train = np.vstack([X_train, reviewed.X[parts["train"]]])
    y_train = np.concatenate([y_train, reviewed.y[parts["train"]]])
    weights = np.concatenate([weights, np.full(n_train, task.training.reviewed_weight)])
    X_cal = np.vstack([X_cal, reviewed.X[parts["calibration"]]])
    y_cal = np.concatenate([y_cal, reviewed.y[parts["calibration"]]])
    from_review = np.concatenate([from_review, np.ones(int(parts["holdout"].sum()), bool)])
    X_test = np.vstack([X_test, reviewed.X[parts["holdout"]]])
    y_test = np.concatenate([y_test, reviewed.y[parts["holdout"]]])
    return (X_train, X_cal, X_test, y_train, y_cal, y_test), weights, from_review


def calibration_rows(task: TaskSpec, X: np.ndarray, y: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The source rows a release of the task is calibrated on, and their classes."""
    split = _split(task, X, y)
    return split[1], split[4]


def _fit_member(
    task: TaskSpec, plan: MemberPlan, X: np.ndarray, y: np.ndarray, weights: np.ndarray
) -> Pipeline:
    if plan.pipeline is not None:
        return plan.pipeline
    if plan.template is not None:
        pipe = clone(plan.template)
    else:
        pipe = build_pipeline(task, plan.spec, task.training.seed)
    if np.all(weights == 1.0):
        return pipe.fit(X, y)
    return pipe.fit(X, y, **{f"{pipe.steps[-1][0]}__sample_weight": weights})


def _cross_fitted(task: TaskSpec, plans: list[MemberPlan], split: tuple[np.ndarray, ...],
                  weights: np.ndarray) -> np.ndarray | None:
    """Out-of-fold probabilities of the training rows, for risk control: stratified
    ``CROSS_FIT_FOLDS``-fold over training and calibration rows together (so each fold's
    members learn from about as many rows as the release's), each fold's training rows
    predicted by members fitted on the other folds. None when a member cannot be refitted
    (an imported pipeline kept as it is) or a class is too rare to stratify."""
    if any(p.pipeline is not None for p in plans):
        return None
    X_train, X_cal, _, y_train, y_cal, _ = split
    X, y = np.vstack([X_train, X_cal]), np.concatenate([y_train, y_cal])
    w = np.concatenate([weights, np.ones(len(y_cal))])
    if np.bincount(y, minlength=len(task.classes)).min() < CROSS_FIT_FOLDS:
        return None
    out = np.zeros((len(y_train), len(task.classes)))
    folds = StratifiedKFold(CROSS_FIT_FOLDS, shuffle=True, random_state=task.training.seed)
    for fit, held in folds.split(X, y):
        mine = held[held < len(y_train)]  # the held-out fold's training rows
        if len(np.unique(y[fit])) < len(task.classes) or not len(mine):
            continue
        loaded = []
        for plan in plans:
            pipe = _fit_member(task, plan, X[fit], y[fit], w[fit])
            algo = ALGORITHMS[plan.spec.algorithm]
            background = np.asarray(pipe[:-1].transform(X[fit]), dtype=float).mean(axis=0)
            loaded.append(LoadedMember(plan.spec.name, "", plan.spec.algorithm, plan.spec.weight,
                                       MemberExplainer(pipe, algo.explainer, algo.space,
                                                       member_fold(task, pipe), background)))
        out[mine] = Ensemble(task, 0, 0, loaded, ConformalCalibration(0.9, (0.0,))
                             ).probabilities(X[mine])
    return out


def _risk_rows(task: TaskSpec, plans: list[MemberPlan], split: tuple[np.ndarray, ...],
               weights: np.ndarray, proba: np.ndarray, progress: Progress) -> CalibrationRows:
    """The rows risk control certifies on: every row the members never trained on (the
    calibration and test splits, scored by the release itself; nothing is chosen on the test
    split's metrics, so they stay unbiased), and with ``risk_calibration = "cross_fit"`` the
    training rows' out-of-fold scores after them."""
    y_cal, y_test = split[4], split[5]
    rows = CalibrationRows.of(proba, np.concatenate([y_cal, y_test]))
    if task.review.risk_calibration != "cross_fit":
        return rows
    progress(0.9, f"cross-fitting {CROSS_FIT_FOLDS} folds for risk control")
    oof = _cross_fitted(task, plans, split, weights)
    if oof is None:
        return rows
    extra = CalibrationRows.of(oof, split[3])
    return CalibrationRows(np.concatenate([rows.scores, extra.scores]),
                           np.concatenate([rows.predicted, extra.predicted]),
                           np.concatenate([rows.errors, extra.errors]), len(rows.scores))


def fit_release(
    task: TaskSpec,
    X: np.ndarray | None = None,
    y: np.ndarray | None = None,
    *,
    reviewed: ReviewedRows | None = None,
    progress: Progress = _no_progress,
    plans: list[MemberPlan] | None = None,
) -> TrainedRelease:
    """Train every member and the OOD detector on one split, calibrate on another,
    evaluate on the third. Source rows are split as always (so every release of a task is
    judged on the same source rows); reviewed rows keep the split they were given. The
    members are the task's, unless ``plans`` say otherwise (app.training.imports)."""
    if plans is None:
        if any(m.artifact for m in task.members):
            raise TrainingError(f"{task.name} has members from artifacts: train it with "
                                "`arbiter train` (app.training.imports plans them)")
        plans = [MemberPlan(m) for m in task.members]
    if X is None or y is None:
        X, y = training_arrays(task, load_frame(task))
    source_split = _split(task, X, y)
    split, weights, from_review = _with_reviewed(task, source_split, reviewed)
    X_train, X_cal, X_test, y_train, y_cal, y_test = split
    if len(np.unique(y_train)) < len(task.classes):
        raise TrainingError(f"training data of {task.name} lacks some of its classes")
    members, loaded = [], []
    steps = len(plans) + 2
    for i, plan in enumerate(plans):
        spec = plan.spec
        progress(i / steps, f"fitting member {spec.name} ({spec.algorithm}) on {len(y_train)} rows")
        pipe = _fit_member(task, plan, X_train, y_train, weights)
        background = np.asarray(pipe[:-1].transform(X_train), dtype=float).mean(axis=0)
        algo = ALGORITHMS[spec.algorithm]
        explainer = MemberExplainer(pipe, algo.explainer, algo.space, member_fold(task, pipe),
                                    background)
        scores = classification_metrics(explainer.probabilities(X_test), y_test)
        members.append(TrainedMember(spec, pipe, background, scores, plan.origin))
        loaded.append(LoadedMember(spec.name, "", spec.algorithm, spec.weight, explainer))
    progress(len(plans) / steps, f"calibrating on {len(y_cal)} rows")
    level = task.review.confidence_level
    draft = Ensemble(task, 0, 0, loaded, ConformalCalibration(level, (0.0,)))
    cal_proba = draft.probabilities(X_cal)
    calibration = calibrate(cal_proba, y_cal, level)
    ood = fit_ood(task, X_train, X_cal, task.review.ood_quantile, task.training.seed)
    progress((len(plans) + 1) / steps, f"evaluating on {len(y_test)} held-out rows")
    test_proba = draft.probabilities(X_test)
    sets = calibration.prediction_sets(test_proba)
    metrics: dict[str, Any] = classification_metrics(test_proba, y_test)
    covered = sets[np.arange(len(y_test)), y_test]
    metrics.update(
        {
            "conformal_coverage": float(covered.mean()),
            # exact 95 % interval: a small test split pins coverage down only loosely
            "conformal_coverage_interval": list(
                clopper_pearson(int(covered.sum()), len(covered), COVERAGE_INTERVAL)),
            "conformal_mean_set_size": float(sets.sum(axis=1).mean()),
            "conformal_singleton_rate": float((sets.sum(axis=1) == 1).mean()),
            "confidence_level": level,
            # in-distribution rows flagged: the false-alarm rate, about 1 - ood_quantile
            "ood_rate_test": float(ood.flags(X_test).mean()),
            "ood_threshold": ood.threshold,
            "ood_quantile": ood.quantile,
            "members": {m.spec.name: m.metrics for m in members},
        }
    )
    if from_review.any():
        metrics["slices"] = {
            "source": classification_metrics(test_proba[~from_review], y_test[~from_review]),
            "reviewed": classification_metrics(test_proba[from_review], y_test[from_review]),
        }
    h = hashlib.sha256(np.ascontiguousarray(X).tobytes() + y.tobytes())
    if reviewed is not None:
        h.update(np.ascontiguousarray(reviewed.X).tobytes() + reviewed.y.tobytes())
        h.update("|".join(map(str, reviewed.splits)).encode())
    digest = h.hexdigest()
    rows = {
        "train": len(y_train),
        "calibration": len(y_cal),
        "test": len(y_test),
        "reviewed_train": len(y_train) - len(source_split[3]),
        "reviewed_test": int(from_review.sum()),
    }
    risk_rows = _risk_rows(task, plans, split, weights, np.vstack([cal_proba, test_proba]),
                           progress)
    progress(1.0, "fitted")
    return TrainedRelease(
        task, members,
        ReleaseCalibration(calibration, ood, risk_rows),
        metrics, digest, rows,
        Holdout(X_test, y_test, from_review, test_proba),
    )
