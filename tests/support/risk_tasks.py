"""Two small binary tasks with ``max_auto_error`` set: "ample" (3,000 rows, enough to
certify AUTO error <= 10 % per class) and "scarce" (150 rows: too few)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

TASK = """
name = "{name}"
classes = ["good", "bad"]
[data]
csv = "{name}.csv"
target = "outcome"
[review]
audit_rate = 0.0
route_on_ood = false
max_auto_error = 0.1
risk_confidence = 0.9
auto_error_scope = "class"
[[features]]
name = "x1"
type = "numeric"
[[features]]
name = "x2"
type = "numeric"
[[members]]
name = "logistic"
algorithm = "logistic_regression"
weight = 1
"""


def risk_rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(0, 1, n), rng.normal(0, 1, n)
    outcome = np.where(2 * x1 - x2 + rng.logistic(0, 0.7, n) > 0, "bad", "good")
    return pd.DataFrame({"x1": x1, "x2": x2, "outcome": outcome})



def write_risk_tasks(folder: Path) -> Path:
    """Both task files and their CSV data in ``folder`` (made)."""
    folder.mkdir()
    for name, n in (("ample", 3000), ("scarce", 150)):
        risk_rows(n, 1).to_csv(folder / f"{name}.csv", index=False)
        (folder / f"{name}.toml").write_text(TASK.format(name=name))
    return folder
