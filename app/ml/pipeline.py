"""Building a member's scikit-learn pipeline and mapping its columns back to the features."""

from __future__ import annotations

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from app.ml.algorithms import ALGORITHMS
from app.ml.task import FeatureType, Member, TaskSpec


def _split_columns(task: TaskSpec) -> tuple[list[int], list[int]]:
    """Indices (into ``model_columns``) of the plain numeric and of the categorical columns."""
    categorical = {f.name for f in task.features if f.type is FeatureType.CATEGORICAL}
    cols = task.model_columns
    return (
        [i for i, c in enumerate(cols) if c not in categorical],
        [i for i, c in enumerate(cols) if c in categorical],
    )


def build_pipeline(task: TaskSpec, member: Member, seed: int) -> Pipeline:
    """Imputation, scaling (for linear models) and one-hot encoding, then the estimator."""
    algo = ALGORITHMS[member.algorithm]
    numeric, categorical = _split_columns(task)
    numeric_steps: list[tuple[str, object]] = [
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True))
    ]
    if algo.scale_numeric:
        numeric_steps.append(("scale", StandardScaler()))
    transformers: list[tuple[str, object, list[int]]] = [("num", Pipeline(numeric_steps), numeric)]
    if categorical:
        cats = [
            [float(i) for i in range(len(task.feature(task.model_columns[c]).categories))]
            for c in categorical
        ]
        transformers.append(
            (
                "cat",
                Pipeline(
                    [
                        (
                            "impute",
                            SimpleImputer(strategy="most_frequent", keep_empty_features=True),
                        ),
                        (
                            "onehot",
                            OneHotEncoder(
                                categories=cats, handle_unknown="ignore", sparse_output=False
                            ),
                        ),
                    ]
                ),
                categorical,
            )
        )
    params = {**algo.defaults, **member.params}
    if "random_state" in algo.build().get_params():
        params.setdefault("random_state", seed)
    return Pipeline(
        [
            ("preprocess", ColumnTransformer(transformers, sparse_threshold=0.0)),
            ("model", algo.build(**params)),
        ]
    )


def fold_matrix(task: TaskSpec) -> np.ndarray:
    """(transformed columns x model columns) 0/1 matrix: SHAP of one-hot children times this
    matrix sums them back onto their categorical column."""
    numeric, categorical = _split_columns(task)
    widths = [len(task.feature(task.model_columns[c]).categories) for c in categorical]
    fold = np.zeros((len(numeric) + sum(widths), len(task.model_columns)))
    for row, col in enumerate(numeric):
        fold[row, col] = 1.0
    row = len(numeric)
    for col, width in zip(categorical, widths, strict=True):
        fold[row : row + width, col] = 1.0
        row += width
    return fold
