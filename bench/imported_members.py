"""What serving a member trained elsewhere costs: the same loan_default member explained per
batch when Arbiter built its pipeline (NumPy in, compiled preprocessing) and when it came
from a notebook (``ModelFrame`` builds a DataFrame, scikit-learn's ColumnTransformer runs).

    uv run python bench/imported_members.py [--repeats 30]

Both members are HistGradientBoosting pipelines with the same hyperparameters, fitted on
the task's rows in-process; the imported one goes through a skops file and
``app.training.imports.read_member`` (the checks an import runs). Times are medians of
``MemberExplainer.explain`` (inference + exact TreeSHAP) per batch size.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import skops.io as sio
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from app.ml.algorithms import ALGORITHMS
from app.ml.data import load_frame, training_arrays
from app.ml.explain import MemberExplainer
from app.ml.pipeline import build_pipeline, member_fold
from app.ml.task import FeatureType, Member, TaskSpec, load_tasks
from app.settings import EXAMPLE_TASKS_DIR
from app.training.imports import read_member

PARAMS = {"max_iter": 120, "learning_rate": 0.1, "max_leaf_nodes": 6, "random_state": 0}


def _notebook_pipeline(task: TaskSpec, X: np.ndarray, y: np.ndarray) -> object:
    frame = pd.DataFrame(X, columns=task.model_columns)
    categorical = [f.name for f in task.features if f.type is FeatureType.CATEGORICAL]
    for name in categorical:
        frame[name] = np.array(task.feature(name).categories, dtype=object)[
            frame[name].to_numpy().astype(int)]
    numeric = [c for c in task.model_columns if c not in categorical]
    return make_pipeline(ColumnTransformer([
        ("num", SimpleImputer(strategy="median"), numeric),
        ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical)]),
        HistGradientBoostingClassifier(**PARAMS)).fit(frame, y)


def _explainer(task: TaskSpec, pipeline: object, X: np.ndarray) -> MemberExplainer:
    algo = ALGORITHMS["hist_gradient_boosting"]
    background = np.asarray(pipeline[:-1].transform(X), dtype=float).mean(axis=0)  # type: ignore[index]
    return MemberExplainer(pipeline, algo.explainer, algo.space,  # type: ignore[arg-type]
                           member_fold(task, pipeline), background)  # type: ignore[arg-type]


def _median_ms(explainer: MemberExplainer, rows: np.ndarray, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        explainer.explain(rows)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    task = load_tasks(EXAMPLE_TASKS_DIR)["loan_default"]
    X, y = training_arrays(task, load_frame(task))
    member = Member(name="boosted", algorithm="hist_gradient_boosting", weight=1.0,
                    params={k: v for k, v in PARAMS.items() if k != "random_state"})
    built = build_pipeline(task, member, seed=0).fit(X, y)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "boosted.skops"
        sio.dump(_notebook_pipeline(task, X, y), path)
        started = time.perf_counter()
        imported = read_member(task, "boosted", path).pipeline
        checked = time.perf_counter() - started
    explainers = {"built": _explainer(task, built, X), "imported": _explainer(task, imported, X)}
    print(f"import checks (read, adopt, predict + explain the calibration rows): "
          f"{checked * 1000:.0f} ms")
    print("imported preprocessing compiled to NumPy:",
          explainers["imported"].transform is not explainers["imported"].preprocess.transform)
    print(f"{'rows':>6} {'built ms':>10} {'imported ms':>12} {'ratio':>6}")
    for n in (1, 8, 100, 1000):
        rows = X[:n]
        t = {k: _median_ms(e, rows, args.repeats) for k, e in explainers.items()}
        print(f"{n:>6} {t['built']:>10.2f} {t['imported']:>12.2f} "
              f"{t['imported'] / t['built']:>6.2f}")


if __name__ == "__main__":
    main()
