"""Fitting a release: every member, the conformal calibration, the out-of-distribution
detector and the evaluation report.

Pure: no database. ``app.releases`` stores what this returns.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, log_loss, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from app.errors import TrainingError
from app.ml.algorithms import ALGORITHMS
from app.ml.conformal import ConformalCalibration, calibrate
from app.ml.data import load_frame, training_arrays
from app.ml.ensemble import Ensemble, LoadedMember, ReleaseCalibration
from app.ml.explain import MemberExplainer
from app.ml.ood import fit_ood
from app.ml.pipeline import build_pipeline, fold_matrix
from app.ml.task import Member, TaskSpec


@dataclass
class TrainedMember:
    spec: Member
    pipeline: Pipeline
    background_mean: np.ndarray
    metrics: dict[str, Any]


@dataclass
class TrainedRelease:
    task: TaskSpec
    members: list[TrainedMember]
    calibration: ReleaseCalibration
    metrics: dict[str, Any]
    data_hash: str
    rows: dict[str, int]


def classification_metrics(proba: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Accuracy, balanced accuracy, log loss and ROC AUC (one-vs-rest when multiclass)."""
    k = proba.shape[1]
    labels = np.arange(k)
    metrics = {
        "accuracy": float(accuracy_score(y, proba.argmax(1))),
        "balanced_accuracy": float(balanced_accuracy_score(y, proba.argmax(1))),
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


def fit_release(
    task: TaskSpec, X: np.ndarray | None = None, y: np.ndarray | None = None
) -> TrainedRelease:
    """Train every member and the OOD detector on one split, calibrate on another,
    evaluate on the third."""
    if X is None or y is None:
        X, y = training_arrays(task, load_frame(task))
    X_train, X_cal, X_test, y_train, y_cal, y_test = _split(task, X, y)
    if len(np.unique(y_train)) < len(task.classes):
        raise TrainingError(f"training data of {task.name} lacks some of its classes")
    fold = fold_matrix(task)
    members, loaded = [], []
    for spec in task.members:
        pipe = build_pipeline(task, spec, task.training.seed).fit(X_train, y_train)
        background = np.asarray(pipe[:-1].transform(X_train)).mean(axis=0)
        algo = ALGORITHMS[spec.algorithm]
        explainer = MemberExplainer(pipe, algo.explainer, algo.space, fold, background)
        scores = classification_metrics(explainer.probabilities(X_test), y_test)
        members.append(TrainedMember(spec, pipe, background, scores))
        loaded.append(LoadedMember(spec.name, "", spec.algorithm, spec.weight, explainer))
    level = task.review.confidence_level
    draft = Ensemble(task, 0, 0, loaded, ConformalCalibration(level, (0.0,)))
    calibration = calibrate(draft.probabilities(X_cal), y_cal, level)
    ood = fit_ood(task, X_train, X_cal, task.review.ood_quantile, task.training.seed)
    test_proba = draft.probabilities(X_test)
    sets = calibration.prediction_sets(test_proba)
    metrics: dict[str, Any] = classification_metrics(test_proba, y_test)
    metrics.update(
        {
            "conformal_coverage": float(sets[np.arange(len(y_test)), y_test].mean()),
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
    digest = hashlib.sha256(np.ascontiguousarray(X).tobytes() + y.tobytes()).hexdigest()
    rows = {"train": len(y_train), "calibration": len(y_cal), "test": len(y_test)}
    return TrainedRelease(
        task, members, ReleaseCalibration(calibration, ood), metrics, digest, rows
    )
