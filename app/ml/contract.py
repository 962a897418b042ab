"""The feature contract: validating raw inputs and turning rows into the model matrix.

One feature layer: training, batch and online serving all call ``to_matrix``, so derived
features are computed by the very same functions everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from app.access.pii import REDACTED
from app.errors import ConfigurationError, FieldProblem, InputValidationError
from app.ml.task import Feature, FeatureType, TaskSpec, resolve_callable


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float (JSON allows any length)
        return False


def _check_value(feature: Feature, value: Any) -> tuple[str, str] | None:
    """(problem, message) for a present, non-null value that breaks the contract; the
    message shows a personal (pii) feature's value as REDACTED (it is logged and sent to
    callers who may not see it)."""
    name = feature.name
    shown = REDACTED if feature.pii else value
    if feature.type is FeatureType.NUMERIC:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "WRONG_TYPE", f"{name}: expected a number, got {type(value).__name__}"
        if not _finite(value):
            return "NOT_FINITE", f"{name}: expected a finite number, got {str(shown)[:40]}"
        if feature.min is not None and value < feature.min:
            return "OUT_OF_RANGE", f"{name}: {shown} is below the minimum {feature.min:g}"
        if feature.max is not None and value > feature.max:
            return "OUT_OF_RANGE", f"{name}: {shown} is above the maximum {feature.max:g}"
    elif feature.type is FeatureType.CATEGORICAL:
        if not isinstance(value, str):
            return "WRONG_TYPE", f"{name}: expected a string category, got {type(value).__name__}"
        if value not in feature.categories:
            allowed = ", ".join(feature.categories)
            return "UNKNOWN_CATEGORY", f"{name}: {shown!r} is not one of {allowed}"
    elif not isinstance(value, bool):
        return "WRONG_TYPE", f"{name}: expected true or false, got {type(value).__name__}"
    return None


def input_problems(task: TaskSpec, raw: Any, index: int | None = None) -> list[FieldProblem]:
    """Every problem of one input; empty when it satisfies the contract."""
    if not isinstance(raw, Mapping):
        return [FieldProblem("", "NOT_AN_OBJECT", "input must be a JSON object", index)]
    problems: list[FieldProblem] = []
    known = {f.name for f in task.features}
    for key in raw:
        if key not in known:
            problems.append(
                FieldProblem(
                    str(key), "UNKNOWN_FIELD", f"{key}: not a feature of {task.name}", index
                )
            )
    for feature in task.features:
        value = raw.get(feature.name)
        if value is None:
            if feature.required:
                problems.append(
                    FieldProblem(feature.name, "MISSING", f"{feature.name}: required", index)
                )
            continue
        found = _check_value(feature, value)
        if found:
            problems.append(FieldProblem(feature.name, found[0], found[1], index))
    return problems


def validate_inputs(
    task: TaskSpec, raws: Sequence[Any], batch: bool = False
) -> list[dict[str, Any]]:
    """Check every input, raising one error that lists all problems of all rows."""
    problems = [
        p for i, raw in enumerate(raws) for p in input_problems(task, raw, i if batch else None)
    ]
    if problems:
        raise InputValidationError(task.name, problems)
    return [dict(raw) for raw in raws]


def _encode(feature: Feature, values: Sequence[Any]) -> np.ndarray:
    if feature.type is FeatureType.CATEGORICAL:
        codes = {c: float(i) for i, c in enumerate(feature.categories)}
        return np.array([codes.get(v, np.nan) if v is not None else np.nan for v in values])
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def derive(task: TaskSpec, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add the derived features to a dict of input columns (arrays of equal length)."""
    out = dict(columns)
    n = len(next(iter(columns.values())))
    for d in task.derived:
        func = resolve_callable(d.function, f"derived feature {d.name!r} of {task.name}")
        result = np.asarray(func(*(columns[i] for i in d.inputs)), dtype=float)
        if result.shape != (n,):
            raise ConfigurationError(
                f"derived feature {d.name!r} returned shape {result.shape}, expected ({n},)"
            )
        out[d.name] = result
    return out


def to_matrix(task: TaskSpec, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Validated rows -> float matrix in ``task.model_columns`` order (categories as codes)."""
    columns = {f.name: _encode(f, [r.get(f.name) for r in rows]) for f in task.features}
    columns = derive(task, columns)
    return np.column_stack([columns[c] for c in task.model_columns])


def frame_to_matrix(task: TaskSpec, frame: pd.DataFrame) -> np.ndarray:
    """Training data (a DataFrame with the input columns) -> the model matrix."""
    missing = [f.name for f in task.features if f.name not in frame.columns]
    if missing:
        raise ConfigurationError(f"training data of {task.name} lacks columns {missing}")
    columns = {}
    for f in task.features:
        series = frame[f.name]
        values = series.astype(object).where(series.notna(), None).tolist()
        columns[f.name] = _encode(f, values)
    columns = derive(task, columns)
    return np.column_stack([columns[c] for c in task.model_columns])
