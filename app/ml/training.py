"""Fitting a release: every member, the conformal calibration, the out-of-distribution
detector and the evaluation report.

Pure: no database. ``app.releases.store`` stores what this returns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score
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
    """One fitted member with its background and metrics."""

    spec: Member
    pipeline: Pipeline
    background_mean: np.ndarray
    metrics: dict[str, Any]


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


def _fit_member(
    task: TaskSpec, spec: Member, X: np.ndarray, y: np.ndarray, weights: np.ndarray
) -> Pipeline:
    pipe = build_pipeline(task, spec, task.training.seed)
    if np.all(weights == 1.0):
        return pipe.fit(X, y)
    return pipe.fit(X, y, **{f"{pipe.steps[-1][0]}__sample_weight": weights})


def fit_release(
    task: TaskSpec,
    X: np.ndarray | None = None,
    y: np.ndarray | None = None,
    *,
    reviewed: ReviewedRows | None = None,
    progress: Progress = _no_progress,
) -> TrainedRelease:
    """Train every member and the OOD detector on one split, calibrate on another,
    evaluate on the third. Source rows are split as always (so every release of a task is
    judged on the same source rows); reviewed rows keep the split they were given."""
    if X is None or y is None:
        X, y = training_arrays(task, load_frame(task))
    source_split = _split(task, X, y)
    (X_train, X_cal, X_test, y_train, y_cal, y_test), weights, from_review = _with_reviewed(
        task, source_split, reviewed
    )
    if len(np.unique(y_train)) < len(task.classes):
        raise TrainingError(f"training data of {task.name} lacks some of its classes")
    fold = fold_matrix(task)
    members, loaded = [], []
    steps = len(task.members) + 2
    for i, spec in enumerate(task.members):
        progress(i / steps, f"fitting member {spec.name} ({spec.algorithm}) on {len(y_train)} rows")
        pipe = _fit_member(task, spec, X_train, y_train, weights)
        background = np.asarray(pipe[:-1].transform(X_train)).mean(axis=0)
        algo = ALGORITHMS[spec.algorithm]
        explainer = MemberExplainer(pipe, algo.explainer, algo.space, fold, background)
        scores = classification_metrics(explainer.probabilities(X_test), y_test)
        members.append(TrainedMember(spec, pipe, background, scores))
        loaded.append(LoadedMember(spec.name, "", spec.algorithm, spec.weight, explainer))
    progress(len(task.members) / steps, f"calibrating on {len(y_cal)} rows")
    level = task.review.confidence_level
    draft = Ensemble(task, 0, 0, loaded, ConformalCalibration(level, (0.0,)))
    calibration = calibrate(draft.probabilities(X_cal), y_cal, level)
    ood = fit_ood(task, X_train, X_cal, task.review.ood_quantile, task.training.seed)
    progress((len(task.members) + 1) / steps, f"evaluating on {len(y_test)} held-out rows")
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
    progress(1.0, "fitted")
    return TrainedRelease(
        task, members, ReleaseCalibration(calibration, ood), metrics, digest, rows,
        Holdout(X_test, y_test, from_review, test_proba),
    )
