"""The checks an estimator from elsewhere passes before it becomes a member: its type, its
explanation space, its columns and their folding back onto the features, on real fitted
scikit-learn estimators written to and read from skops files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from app.errors import BadRequestError
from app.ml.data import load_frame, training_arrays
from app.ml.pipeline import compile_member, member_fold
from app.ml.task import Member, TaskSpec
from app.ml.training import MemberPlan, fit_release
from app.training.imports import OriginKind, read_member


def _frame(task: TaskSpec) -> tuple[pd.DataFrame, np.ndarray]:
    """The task's columns as a notebook builds them, and the class indices."""
    frame = load_frame(task)
    X, y = training_arrays(task, frame)
    columns = pd.DataFrame(X, columns=task.model_columns)
    for f in task.features:
        if f.categories:
            columns[f.name] = frame[f.name].astype(object)
    return columns, y


def _write(estimator: Any, path: Path) -> Path:
    sio.dump(estimator, path)
    return path


def test_a_bare_estimator_is_served_as_fitted_then_refit_as_a_clone(
    example_tasks: dict[str, TaskSpec], tmp_path: Path
) -> None:
    task = example_tasks["breast_cancer"]
    X, y = _frame(task)
    estimator = HistGradientBoostingClassifier(max_iter=25, max_leaf_nodes=5).fit(X, y)
    adopted = read_member(task, "boosted", _write(estimator, tmp_path / "hgb.skops"))
    assert adopted.algorithm.name == "hist_gradient_boosting"
    spec = Member(name="boosted", algorithm="hist_gradient_boosting", weight=1.0)
    kept = fit_release(task, plans=[MemberPlan(task.members[0]),
                                    MemberPlan(spec, pipeline=adopted.pipeline)])
    assert kept.members[1].pipeline is adopted.pipeline  # as fitted, not refit
    refit = fit_release(task, plans=[MemberPlan(spec, template=adopted.pipeline,
                                                origin=adopted.origin(OriginKind.REFIT))])
    model = refit.members[0].pipeline[-1]
    assert model is not adopted.pipeline[-1]
    assert model.get_params() == estimator.get_params()  # the same hyperparameters
    assert refit.members[0].origin["kind"] == "refit"


def test_an_estimator_of_another_explanation_space_is_refused(
    example_tasks: dict[str, TaskSpec], tmp_path: Path
) -> None:
    task = example_tasks["breast_cancer"]
    X, y = _frame(task)
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)
    with pytest.raises(BadRequestError, match="explains in PROBABILITY space but "
                       "breast_cancer's members explain in LOG_ODDS"):
        read_member(task, "forest", _write(forest, tmp_path / "forest.skops"))


def test_dropped_and_one_hot_columns_fold_back_onto_their_features(
    example_tasks: dict[str, TaskSpec], tmp_path: Path
) -> None:
    task = example_tasks["loan_default"]
    X, y = _frame(task)
    numeric = ["income", "loan_amount", "term_months", "has_cosigner"]
    pipeline = make_pipeline(ColumnTransformer([
        ("num", StandardScaler(), numeric),
        ("cat", OneHotEncoder(drop="first", sparse_output=False), ["employment", "purpose"]),
        ("skip", "drop", ["orders"]),
    ], remainder="drop"), LogisticRegression(max_iter=3000))
    pipeline.fit(X[[*numeric, "employment", "purpose", "orders"]], y)
    adopted = read_member(task, "logistic", _write(pipeline, tmp_path / "lr.skops"))
    fold = member_fold(task, adopted.pipeline)
    per_feature = dict(zip(task.model_columns, fold.sum(axis=0), strict=True))
    assert per_feature["employment"] == 3 and per_feature["purpose"] == 4  # one dropped each
    assert all(per_feature[c] == 1 for c in numeric)
    assert per_feature["orders"] == 0 and per_feature["payment_to_income"] == 0
    assert fold.sum(axis=1).tolist() == [1.0] * fold.shape[0]


def test_a_sparse_column_transformer_is_refused_with_the_fix(
    example_tasks: dict[str, TaskSpec], tmp_path: Path
) -> None:
    task = example_tasks["loan_default"]
    X, y = _frame(task)
    pipeline = make_pipeline(
        ColumnTransformer([("cat", OneHotEncoder(), ["employment", "purpose"])],
                          sparse_threshold=1.0),
        LogisticRegression(max_iter=3000)).fit(X[["employment", "purpose"]], y)
    with pytest.raises(BadRequestError, match="sparse_threshold=0"):
        read_member(task, "logistic", _write(pipeline, tmp_path / "sparse.skops"))


def test_an_imported_preprocessing_runs_as_numpy_arithmetic_equal_to_scikit_learns(
    example_tasks: dict[str, TaskSpec], tmp_path: Path
) -> None:
    task = example_tasks["loan_default"]
    X, y = _frame(task)
    categorical = ["employment", "home_ownership", "purpose"]
    numeric = [c for c in task.model_columns if c not in categorical]
    pipeline = make_pipeline(ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
        ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"),
                              OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
         categorical),
    ]), LogisticRegression(max_iter=3000)).fit(X[numeric + categorical], y)
    adopted = read_member(task, "logistic", _write(pipeline, tmp_path / "lr.skops"))
    compiled = compile_member(adopted.pipeline)
    assert compiled is not None
    rows, _ = training_arrays(task, load_frame(task))
    rows[::7, task.model_columns.index("employment")] = np.nan  # missing categories too
    np.testing.assert_array_equal(compiled(rows), adopted.pipeline[:-1].transform(rows))
