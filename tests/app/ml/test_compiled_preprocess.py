"""The compiled preprocessing: the fitted ColumnTransformer of every member as NumPy
arithmetic, equal to scikit-learn's own transform bit for bit, or not used at all."""

from __future__ import annotations

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from app.examples.loan import generate
from app.ml.contract import to_matrix, validate_inputs
from app.ml.pipeline import compile_preprocess
from app.ml.task import TaskSpec
from app.ml.training import TrainedRelease


def loan_matrix(task: TaskSpec, rows: int) -> np.ndarray:
    names = {f.name for f in task.features}
    records = [{k: v for k, v in r.items() if k in names and v == v}  # NaN = left out
               for r in generate(rows=rows, seed=41).to_dict("records")]
    return to_matrix(task, validate_inputs(task, records, batch=True))


def test_every_example_member_compiles_to_the_same_numbers(
    loan_task: TaskSpec, loan_release: TrainedRelease, breast_cancer_release: TrainedRelease
) -> None:
    X = loan_matrix(loan_task, 500)
    assert np.isnan(X).any()  # credit_history_years is optional: imputation is exercised
    for release, data in ((loan_release, X), (breast_cancer_release, None)):
        for member in release.members:
            preprocess = member.pipeline[0]
            compiled = compile_preprocess(preprocess)
            assert compiled is not None, member.spec.name
            if data is None:
                data = np.random.default_rng(3).normal(10, 5, (200, preprocess.n_features_in_))
                data[::7, 2] = np.nan
            assert np.array_equal(compiled(data), preprocess.transform(data)), member.spec.name


def test_unknown_categories_and_missing_values_as_scikit_learn_does(
    loan_task: TaskSpec, loan_release: TrainedRelease
) -> None:
    X = loan_matrix(loan_task, 50)
    categories = {f.name for f in loan_task.features if f.categories}
    categorical = [i for i, c in enumerate(loan_task.model_columns) if c in categories]
    X[:10, categorical[0]] = 99.0  # a code the encoder never saw: all zeros
    X[10:20, :] = np.nan  # everything missing: the imputers' fill values
    for member in loan_release.members:
        compiled = compile_preprocess(member.pipeline[0])
        assert compiled is not None
        assert np.array_equal(compiled(X), member.pipeline[0].transform(X))


def test_a_step_it_does_not_know_keeps_scikit_learn() -> None:
    rng = np.random.default_rng(5)
    X = np.column_stack([rng.normal(size=100), rng.integers(0, 3, 100).astype(float)])
    known = ColumnTransformer([
        ("num", Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())]), [0]),
        ("cat", Pipeline([("onehot", OneHotEncoder(handle_unknown="ignore",
                                                   sparse_output=False))]), [1]),
    ]).fit(X)
    assert compile_preprocess(known) is not None
    unknown = ColumnTransformer([
        ("num", Pipeline([("log", FunctionTransformer(np.log1p))]), [0]),
    ]).fit(np.abs(X))
    assert compile_preprocess(unknown) is None
