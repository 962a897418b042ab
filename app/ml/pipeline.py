"""Building a member's scikit-learn pipeline and mapping its columns back to the features."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    MaxAbsScaler,
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    RobustScaler,
    StandardScaler,
)

from app.errors import BadRequestError
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


class ModelFrame(TransformerMixin, BaseEstimator):
    """The model matrix as the DataFrame an estimator trained elsewhere was fitted on: the
    columns it names, in its order, categories as their strings (the matrix holds codes).
    The first step of an imported member's pipeline; stateless."""

    def __init__(self, columns: list[str] | None = None, sources: list[int] | None = None,
                 categories: list[list[str]] | None = None) -> None:
        self.columns = columns
        self.sources = sources
        self.categories = categories

    def fit(self, X: Any, y: Any = None, **_: Any) -> ModelFrame:
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return True

    def transform(self, X: Any) -> pd.DataFrame:
        X = np.asarray(X, dtype=float)
        data: dict[str, Any] = {}
        for name, source, cats in zip(self.columns or [], self.sources or [],
                                      self.categories or [], strict=True):
            values = X[:, source]
            if cats:  # codes -> strings; a missing code stays missing (NaN)
                lookup = np.array([*cats, np.nan], dtype=object)
                data[name] = lookup[np.where(np.isnan(values), len(cats), values).astype(int)]
            else:
                data[name] = values
        return pd.DataFrame(data, columns=list(self.columns or []))


# Steps whose every output column is computed from one input column of the same position:
# SHAP of an output column belongs wholly to that input's feature, so folding stays exact.
_PER_COLUMN = (StandardScaler, MinMaxScaler, MaxAbsScaler, RobustScaler, OrdinalEncoder)
SUPPORTED_STEPS = ("ColumnTransformer, Pipeline, SimpleImputer (without add_indicator), "
                   "StandardScaler, MinMaxScaler, MaxAbsScaler, RobustScaler, OrdinalEncoder, "
                   "OneHotEncoder (without infrequent categories), 'passthrough', 'drop'")


def _one_hot_sources(step: OneHotEncoder, sources: list[int]) -> list[int]:
    if getattr(step, "_infrequent_enabled", False):
        raise BadRequestError("OneHotEncoder with infrequent categories cannot be explained "
                              "exactly per feature")
    drops = step.drop_idx_ if step.drop_idx_ is not None else [None] * len(sources)
    return [s for s, cats, d in zip(sources, step.categories_, drops, strict=True)
            for _ in range(len(cats) - (d is not None))]


def _column_transformer_sources(step: ColumnTransformer, sources: list[int]) -> list[int]:
    if step.sparse_output_:
        raise BadRequestError("its ColumnTransformer gives a sparse matrix; fit it with "
                              "sparse_threshold=0 (or OneHotEncoder(sparse_output=False))")
    out = np.full(sum(sl.stop - sl.start for sl in step.output_indices_.values()), -1)
    inputs = step._transformer_to_input_indices  # no public spelling of input indices
    for name, transformer, _ in step.transformers_:
        if isinstance(transformer, str) and transformer == "drop":
            continue
        mapped = step_sources(transformer, [sources[i] for i in inputs[name]])
        part = step.output_indices_[name]
        if len(mapped) != part.stop - part.start:
            raise BadRequestError(f"transformer {name!r} gives {part.stop - part.start} "
                                  f"columns, not the {len(mapped)} its steps account for")
        out[part] = mapped
    return [int(s) for s in out]


def step_sources(step: Any, sources: list[int]) -> list[int]:
    """For each output column of a fitted preprocessing step, the model column it comes
    from, given that of each input column; refused for steps that mix columns."""
    if step is None or (isinstance(step, str) and step == "passthrough"):
        return sources
    if isinstance(step, Pipeline):
        for _, inner in step.steps:
            sources = step_sources(inner, sources)
        return sources
    if isinstance(step, ColumnTransformer):
        return _column_transformer_sources(step, sources)
    if isinstance(step, OneHotEncoder):
        return _one_hot_sources(step, sources)
    if isinstance(step, SimpleImputer) and not step.add_indicator:
        kept = step.keep_empty_features or step.strategy == "constant"
        return [s for s, v in zip(sources, step.statistics_, strict=True)
                if kept or not pd.isna(v)]
    if isinstance(step, _PER_COLUMN):
        return sources
    raise BadRequestError(f"preprocessing step {type(step).__name__} cannot be explained "
                          f"exactly per feature; supported steps: {SUPPORTED_STEPS}")


def member_fold(task: TaskSpec, pipeline: Pipeline) -> np.ndarray:
    """The fold matrix of a member's fitted pipeline: ``fold_matrix`` for the pipelines
    Arbiter builds, traced step by step for an imported one (``ModelFrame`` first)."""
    frame = pipeline[0]
    if not isinstance(frame, ModelFrame):
        return fold_matrix(task)
    sources = list(frame.sources or [])
    for _, step in pipeline.steps[1:-1]:
        sources = step_sources(step, sources)
    fold = np.zeros((len(sources), len(task.model_columns)))
    fold[np.arange(len(sources)), sources] = 1.0
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


def _coded(value: Any, codes: dict[str, float] | None) -> float:
    """A fitted step's value in the model matrix's terms: a category as the task's code
    (-2, matching nothing, when the task lacks it), a number as itself."""
    if codes is None:
        return float(value)
    if isinstance(value, float) and np.isnan(value):
        return np.nan
    return codes.get(str(value), -2.0) if value is not None else np.nan


def _compile_coded(step: Any, codes: list[dict[str, float] | None]) -> Transform | None:
    """``_compile_step`` for a step fitted on category strings, run on their codes."""
    if all(c is None for c in codes):
        return _compile_step(step)
    if isinstance(step, SimpleImputer) and not step.add_indicator:
        fill = np.array([_coded(v, c) for v, c in zip(step.statistics_, codes, strict=True)])
        return lambda X: np.where(np.isnan(X), fill, X)
    if isinstance(step, OneHotEncoder) and step.drop_idx_ is None \
            and not getattr(step, "_infrequent_enabled", False):
        categories = [np.array([_coded(v, c) for v in cats])
                      for cats, c in zip(step.categories_, codes, strict=True)]
        return lambda X: np.hstack([(X[:, [j]] == c).astype(float)
                                    for j, c in enumerate(categories)])
    return None


def _compile_coded_chain(steps: list[Any], codes: list[dict[str, float] | None]
                         ) -> Transform | None:
    chain: list[Transform] = []
    for step in steps:
        if isinstance(step, str) and step == "passthrough":
            continue
        compiled = _compile_coded(step, codes)
        if compiled is None:
            return None
        chain.append(compiled)
        if isinstance(step, OneHotEncoder):
            codes = [None] * sum(len(c) for c in step.categories_)

    def run(X: np.ndarray) -> np.ndarray:
        for c in chain:
            X = c(X)
        return X
    return run


def _frame_probe(frame: ModelFrame) -> np.ndarray:
    """Model-matrix rows that exercise an imported preprocessing: missing values, negatives,
    large numbers, fractions, every category code."""
    columns: dict[int, list[float]] = {}
    for source, cats in zip(frame.sources or [], frame.categories or [], strict=True):
        columns[source] = ([np.nan, *map(float, range(len(cats)))] if cats
                           else [np.nan, 0.0, -3.0, 1e6, 7.25, 0.5])
    width, rows = max(columns) + 1, max(len(c) for c in columns.values())
    return np.array([[columns[j][i % len(columns[j])] if j in columns else 0.0
                      for j in range(width)] for i in range(rows)], dtype=float)


def _compile_frame(frame: ModelFrame, preprocess: ColumnTransformer) -> Transform | None:
    inputs = preprocess._transformer_to_input_indices
    parts: list[tuple[list[int], Transform]] = []
    for name, transformer, _ in preprocess.transformers_:
        if (isinstance(transformer, str) and transformer == "drop") or not len(inputs[name]):
            continue
        steps = ([s for _, s in transformer.steps] if isinstance(transformer, Pipeline)
                 else [transformer])
        codes = [{c: float(k) for k, c in enumerate((frame.categories or [])[i])} or None
                 for i in inputs[name]]
        chain = _compile_coded_chain(steps, codes)
        if chain is None:
            return None
        parts.append(([(frame.sources or [])[i] for i in inputs[name]], chain))
    return lambda X: np.hstack([chain(np.asarray(X, dtype=float)[:, cols])
                                for cols, chain in parts])


def compile_member(pipeline: Pipeline) -> Transform | None:
    """A member's fitted preprocessing as plain NumPy arithmetic on the model matrix, or
    None (then scikit-learn's own runs): ``compile_preprocess`` for the pipelines Arbiter
    builds; for an imported one (``ModelFrame`` and a ``ColumnTransformer`` of imputers,
    scalers and one-hot encoders, categories compared as the task's codes) only when it
    equals scikit-learn's result on a probe of every case, to the bit. scikit-learn's
    per-call checks of a DataFrame cost tens of milliseconds a batch."""
    first = pipeline[0]
    if not isinstance(first, ModelFrame):
        return compile_preprocess(first) if len(pipeline) == 2 else None
    if len(pipeline) != 3 or not isinstance(pipeline[1], ColumnTransformer) \
            or pipeline[1].sparse_output_:
        return None
    transform = _compile_frame(first, pipeline[1])
    if transform is None:
        return None
    probe = _frame_probe(first)
    try:
        expected = np.asarray(pipeline[:-1].transform(probe), dtype=float)
        same = np.array_equal(transform(probe), expected, equal_nan=True)
    except (ValueError, TypeError, IndexError):
        return None
    return transform if same else None
