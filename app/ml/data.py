"""Loading a task's training rows from its declared source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from app.errors import ConfigurationError
from app.ml.contract import frame_to_matrix
from app.ml.task import TaskSpec, resolve_callable


def load_frame(task: TaskSpec) -> pd.DataFrame:
    """The source data as a DataFrame holding the input features and the target column."""
    source = task.data
    if source.loader:
        frame = resolve_callable(source.loader, f"data loader of {task.name}")()
        if not isinstance(frame, pd.DataFrame):
            raise ConfigurationError(f"data loader of {task.name} must return a DataFrame")
    else:
        path = Path(task.source_path).parent / str(source.csv)
        try:
            frame = pd.read_csv(path)
        except OSError as exc:
            raise ConfigurationError(f"cannot read training data {path}: {exc}") from None
    if source.target not in frame.columns:
        raise ConfigurationError(f"training data of {task.name} lacks target {source.target!r}")
    return frame


def training_arrays(task: TaskSpec, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(model matrix, class indices) of the frame; unknown labels name themselves."""
    labels = frame[task.data.target].astype(str)
    unknown = sorted(set(labels) - set(task.classes))
    if unknown:
        raise ConfigurationError(
            f"training data of {task.name} has labels {unknown[:5]} not in classes {task.classes}"
        )
    index = {c: i for i, c in enumerate(task.classes)}
    return frame_to_matrix(task, frame), labels.map(index).to_numpy(dtype=int)
