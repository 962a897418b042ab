"""Real rows of a task's data as the JSON inputs a client sends."""

from __future__ import annotations

from typing import Any

from app.ml.task import TaskSpec


def example_inputs(task: TaskSpec, n: int, seed: int = 5) -> list[dict[str, Any]]:
    """Real rows of the task's own data as JSON inputs (missing optional values left out)."""
    from app.ml.data import load_frame

    return frame_inputs(task, load_frame(task).sample(n, random_state=seed))


def frame_inputs(task: TaskSpec, frame: Any) -> list[dict[str, Any]]:
    """The rows of a data frame as JSON inputs of the task (target and NaNs left out)."""
    rows = []
    for record in frame.to_dict(orient="records"):
        row: dict[str, Any] = {}
        for f in task.features:
            value = record[f.name]
            if value is None or (isinstance(value, float) and value != value):
                continue
            row[f.name] = (
                bool(value)
                if f.type == "boolean"
                else (value if f.type == "categorical" else float(value))
            )
        rows.append(row)
    return rows
