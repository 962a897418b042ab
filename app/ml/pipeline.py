"""Building a member's scikit-learn pipeline and mapping its columns back to the features."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


Transform = Callable[[np.ndarray], np.ndarray]


def _compile_step(step: Any) -> Transform | None:
    """A fitted step as NumPy arithmetic, for the steps ``build_pipeline`` uses."""
    if isinstance(step, SimpleImputer):
        if not (isinstance(step.missing_values, float) and np.isnan(step.missing_values)) \
                or step.add_indicator:
            return None
        fill = np.asarray(step.statistics_, dtype=float)
        return lambda X: np.where(np.isnan(X), fill, X)
    if isinstance(step, StandardScaler):
        if not (step.with_mean and step.with_std):
            return None
        mean, scale = np.asarray(step.mean_), np.asarray(step.scale_)
        return lambda X: (X - mean) / scale
    if isinstance(step, OneHotEncoder):
        if step.handle_unknown != "ignore" or step.drop_idx_ is not None \
                or getattr(step, "_infrequent_enabled", False):
            return None
        categories = [np.asarray(c, dtype=float) for c in step.categories_]
        return lambda X: np.hstack([(X[:, [j]] == c).astype(float)
                                    for j, c in enumerate(categories)])
    return None


def _compile_chain(steps: list[Any]) -> Transform | None:
    compiled = [_compile_step(s) for s in steps]
    if any(c is None for c in compiled):
        return None
    chain = [c for c in compiled if c is not None]

    def run(X: np.ndarray) -> np.ndarray:
        for c in chain:
            X = c(X)
        return X
    return run


def _probe(preprocess: ColumnTransformer) -> np.ndarray:
    """Rows that exercise every fitted step: missing values, negatives, large numbers,
    fractions, every known category code and an unknown one."""
    width = preprocess.n_features_in_
    columns: list[list[float]] = [[np.nan, 0.0, -3.0, 1e6, 7.25, 0.5] for _ in range(width)]
    for _, transformer, cols in preprocess.transformers_:
        for step in getattr(transformer, "steps", []):
            if isinstance(step[1], OneHotEncoder):
                for j, col in enumerate(cols):
                    known = list(np.asarray(step[1].categories_[j], dtype=float))
                    columns[col] = [np.nan, *known, max(known, default=0.0) + 1.0, -1.0]
    rows = max(len(c) for c in columns)
    return np.array([[c[i % len(c)] for c in columns] for i in range(rows)], dtype=float)


def compile_preprocess(preprocess: Any) -> Transform | None:
    """The fitted ``ColumnTransformer`` of ``build_pipeline`` as plain NumPy arithmetic, or
    None when it holds anything else. scikit-learn spends about 1.2 ms per call on input
    checks whatever the number of rows (the arithmetic itself: microseconds), which was a
    fifth of a micro-batch's time; the result must equal scikit-learn's on a probe of
    every case, to the bit, or it is not used."""
    if not isinstance(preprocess, ColumnTransformer) or preprocess.sparse_output_:
        return None
    parts: list[tuple[list[int], Transform]] = []
    for name, transformer, cols in preprocess.transformers_:
        if transformer == "drop" or (name == "remainder" and not len(cols)):
            continue
        steps = [s for _, s in transformer.steps] if isinstance(transformer, Pipeline) else None
        chain = _compile_chain(steps) if steps else None
        if chain is None:
            return None
        parts.append((list(cols), chain))

    width = preprocess.n_features_in_

    def transform(X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or X.shape[1] != width:
            raise ValueError(f"X has shape {X.shape}, but the preprocessing expects "
                             f"{width} features per row")
        return np.hstack([chain(X[:, cols]) for cols, chain in parts])

    probe = _probe(preprocess)
    try:
        same = np.array_equal(transform(probe), preprocess.transform(probe), equal_nan=True)
    except (ValueError, IndexError):
        return None
    return transform if same else None
