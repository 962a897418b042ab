"""The rows risk control certifies on: the release's own calibration and held-out rows, and
with ``risk_calibration = "cross_fit"`` the training rows' out-of-fold scores after them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.model_selection import StratifiedKFold

from app.ml.data import load_frame, training_arrays
from app.ml.ensemble import Ensemble
from app.ml.task import TaskSpec
from app.ml.training import (
    CROSS_FIT_FOLDS,
    MemberPlan,
    TrainedRelease,
    _fit_member,
    _split,
    fit_release,
)
from app.risk.certificates import control_risk
from app.risk.control import CalibrationRows

MakeEnsemble = Callable[[TrainedRelease], Ensemble]


def _cross_fit(task: TaskSpec) -> TaskSpec:
    review = task.review.model_copy(update={"risk_calibration": "cross_fit"})
    return task.model_copy(update={"review": review})


def test_cross_fit_adds_the_training_rows_out_of_fold(breast_cancer_task: TaskSpec,
                                                      breast_cancer_release: TrainedRelease,
                                                      make_ensemble: MakeEnsemble) -> None:
    split_rows = breast_cancer_release.calibration.risk_rows
    assert split_rows is not None and split_rows.exact_rows is None
    task = _cross_fit(breast_cancer_task)
    release = fit_release(task)
    rows = release.calibration.risk_rows
    assert rows is not None
    n = release.rows
    assert rows.exact_rows == n["calibration"] + n["test"] == len(split_rows.scores)
    assert rows.cross_fitted == n["train"]
    # the release's own rows are the same as without cross-fitting
    assert np.array_equal(rows.scores[:rows.exact_rows], split_rows.scores)
    # the added rows are the training rows in order, each scored by members that never saw
    # it: refit one fold by hand and compare its training rows' scores
    X, y = training_arrays(task, load_frame(task))
    X_train, X_cal, _, y_train, y_cal, _ = _split(task, X, y)
    exact = rows.exact_rows
    assert np.array_equal(rows.errors[exact:], rows.predicted[exact:] != y_train)
    allX, ally = np.vstack([X_train, X_cal]), np.concatenate([y_train, y_cal])
    folds = StratifiedKFold(CROSS_FIT_FOLDS, shuffle=True, random_state=task.training.seed)
    fit, held = next(iter(folds.split(allX, ally)))
    mine = held[held < len(y_train)]
    by_hand = make_ensemble(_fold_release(task, allX[fit], ally[fit]))
    expected = CalibrationRows.of(by_hand.probabilities(allX[mine]), ally[mine])
    assert np.allclose(rows.scores[exact + mine], expected.scores)
    # out-of-fold rows are wronger than the release is on rows it was trained on
    served = make_ensemble(breast_cancer_release).probabilities(X_train).argmax(axis=1)
    assert rows.errors[exact:].mean() > (served != y_train).mean()
    risk = control_risk(rows, task.classes, 0.05, 0.9, "class")
    assert risk.cross_fitted == n["train"]
    assert risk.overall.calibration_rows == len(rows.scores)


def _fold_release(task: TaskSpec, X: np.ndarray, y: np.ndarray) -> TrainedRelease:
    """Members fitted on exactly these rows (every split of fit_release keeps them all)."""
    fitted = [_fit_member(task, MemberPlan(m), X, y, np.ones(len(y)))
              for m in task.members]
    plans = [MemberPlan(m, pipeline=p) for m, p in zip(task.members, fitted, strict=True)]
    return fit_release(task, X, y, plans=plans)


def test_kept_pipelines_are_not_cross_fitted(breast_cancer_task: TaskSpec,
                                             breast_cancer_release: TrainedRelease) -> None:
    task = _cross_fit(breast_cancer_task)
    plans = [MemberPlan(m.spec, pipeline=m.pipeline) for m in breast_cancer_release.members]
    rows = fit_release(task, plans=plans).calibration.risk_rows
    assert rows is not None and rows.exact_rows is None
    assert len(rows.scores) == breast_cancer_release.rows["calibration"] + \
        breast_cancer_release.rows["test"]
