"""Input rows for the benchmarks: generated loans, or a sample of a task's training data."""

from __future__ import annotations

from typing import Any

import pandas as pd

from app.ml.data import load_frame
from app.ml.task import Feature, FeatureType, TaskSpec, load_tasks
from app.settings import EXAMPLE_TASKS_DIR

INPUT_ROWS = 500
INPUT_SEED = 123

Row = dict[str, Any]


def source_frame(task: TaskSpec, rows: int, seed: int) -> pd.DataFrame:
    """Realistic raw inputs: fresh generated loans, else a sample of the training data."""
    if task.name == "loan_default":
        from app.examples.loan import generate

        return generate(rows=rows, seed=seed)
    frame = load_frame(task)
    return frame.sample(n=min(rows, len(frame)), random_state=seed)


def plain_value(feature: Feature, value: Any) -> Any:
    """A pandas/numpy cell as the JSON type the contract wants."""
    if feature.type is FeatureType.BOOLEAN:
        return bool(value)
    if feature.type is FeatureType.CATEGORICAL:
        return str(value)
    number = float(value)
    return int(number) if number.is_integer() else number


def input_rows(task: TaskSpec, rows: int = INPUT_ROWS, seed: int = INPUT_SEED) -> list[Row]:
    """Input objects for ``predict``; missing (NaN) optional values are left out."""
    frame = source_frame(task, rows, seed)
    records = frame.to_dict(orient="records")
    return [
        {f.name: plain_value(f, r[f.name]) for f in task.features if not pd.isna(r[f.name])}
        for r in records
    ]


def check_task(name: str, member: str) -> TaskSpec:
    """The example task ``name``, which must have a member ``member``."""
    tasks = load_tasks(EXAMPLE_TASKS_DIR)
    if name not in tasks:
        raise SystemExit(f"unknown task {name!r}; choose one of {sorted(tasks)}")
    task = tasks[name]
    if member not in {m.name for m in task.members}:
        raise SystemExit(f"{name} has no member {member!r}")
    return task
