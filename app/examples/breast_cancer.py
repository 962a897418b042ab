"""Wisconsin diagnostic breast cancer data, as scikit-learn ships it (569 rows, 30 numeric
features computed from digitised images of fine-needle aspirates of breast masses)."""

from __future__ import annotations

import pandas as pd
from sklearn.datasets import load_breast_cancer


def column_name(raw: str) -> str:
    """'mean radius' -> 'mean_radius'."""
    return raw.replace(" ", "_")


def load() -> pd.DataFrame:
    """The bundled data set with snake_case columns and a `diagnosis` label column."""
    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns=column_name)
    frame["diagnosis"] = frame.pop("target").map(dict(enumerate(data.target_names)))
    return frame
