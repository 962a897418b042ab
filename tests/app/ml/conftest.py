"""Fixtures of the ML tests: the example tasks, real trained releases and loaded ensembles.

Training runs once per session (about a second per task). Ensembles are built the way
``app.registry.build_ensemble`` builds them: every member pipeline goes through a real skops
file (saved, hash-checked and loaded), then ``MemberExplainer`` with the algorithm's explainer
kind and space, the task's fold matrix and the member's background mean.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from app.ml.algorithms import ALGORITHMS
from app.ml.artifacts import load_pipeline, save_pipeline
from app.ml.ensemble import Ensemble, LoadedMember, ReleaseCalibration
from app.ml.explain import MemberExplainer
from app.ml.pipeline import fold_matrix
from app.ml.task import TaskSpec, load_tasks
from app.ml.training import TrainedRelease, fit_release
from app.settings import EXAMPLE_TASKS_DIR


def synthetic_probability_task(n_classes: int) -> TaskSpec:
    """A PROBABILITY-space task (random forest + extra trees) with a categorical input and a
    derived feature, declared in the test rather than in a TOML file."""
    return TaskSpec.model_validate({
        "name": f"synthetic_{n_classes}",
        "classes": [f"class_{i}" for i in range(n_classes)],
        "features": [
            {"name": "x1", "type": "numeric", "min": -10, "max": 10},
            {"name": "x2", "type": "numeric", "min": 0, "max": 10, "required": False},
            {"name": "colour", "type": "categorical", "categories": ["red", "green", "blue"]},
            {"name": "flag", "type": "boolean"},
        ],
        "derived": [{"name": "x_sum", "function": "numpy:add", "inputs": ["x1", "x2"]}],
        "members": [
            {"name": "forest", "algorithm": "random_forest", "weight": 1.0,
             "params": {"n_estimators": 40, "max_depth": 6}},
            {"name": "extra", "algorithm": "extra_trees", "weight": 3.0,
             "params": {"n_estimators": 40, "max_depth": 6}},
        ],
        "review": {"confidence_level": 0.9},
        "data": {"loader": "unused:in_these_tests"},
        "training": {"seed": 3},
    })


def synthetic_rows(n: int, seed: int) -> list[dict[str, object]]:
    """Raw (JSON-like) inputs of the synthetic task; x2 is left out for some rows."""
    rng = np.random.default_rng(seed)
    colours = ["red", "green", "blue"]
    rows: list[dict[str, object]] = []
    for _ in range(n):
        row: dict[str, object] = {
            "x1": float(np.round(rng.normal(0, 2), 3)),
            "colour": colours[int(rng.integers(0, 3))],
            "flag": bool(rng.random() < 0.3),
        }
        if rng.random() >= 0.1:
            row["x2"] = float(np.round(rng.uniform(0, 10), 3))
        rows.append(row)
    return rows


def synthetic_labels(rows: list[dict[str, object]], n_classes: int, seed: int) -> np.ndarray:
    """Labels that depend on every input, the categorical one included."""
    rng = np.random.default_rng(seed + 1)
    score = np.array([
        float(r["x1"])  # type: ignore[arg-type]
        + 0.4 * float(r.get("x2", 5.0))  # type: ignore[arg-type]
        + 1.5 * (r["colour"] == "blue") - 1.0 * (r["colour"] == "red")
        + 1.0 * bool(r["flag"])
        for r in rows
    ]) + rng.logistic(0, 0.5, len(rows))
    cuts = np.quantile(score, np.linspace(0, 1, n_classes + 1)[1:-1])
    return np.digitize(score, cuts).astype(int)


def ensemble_from_release(release: TrainedRelease, folder: Path) -> Ensemble:
    """Like ``app.registry.build_ensemble``, from a ``TrainedRelease`` instead of DB rows."""
    task = release.task
    fold = fold_matrix(task)
    loaded = []
    for m in release.members:
        algo = ALGORITHMS[m.spec.algorithm]
        path = folder / f"{task.name}-{m.spec.name}.skops"
        sha = save_pipeline(m.pipeline, path)
        pipeline = load_pipeline(path, sha)
        background = np.asarray(json.loads(json.dumps(m.background_mean.tolist())), dtype=float)
        explainer = MemberExplainer(pipeline, algo.explainer, algo.space, fold, background)
        loaded.append(LoadedMember(m.spec.name, "1", m.spec.algorithm, m.spec.weight, explainer))
    calibration = ReleaseCalibration.from_json(
        json.loads(json.dumps(release.calibration.to_json())))
    return Ensemble(task, 1, 1, loaded, calibration.conformal, calibration.ood)


@pytest.fixture(scope="session")
def example_tasks() -> dict[str, TaskSpec]:
    return load_tasks(EXAMPLE_TASKS_DIR)


@pytest.fixture(scope="session")
def breast_cancer_task(example_tasks: dict[str, TaskSpec]) -> TaskSpec:
    return example_tasks["breast_cancer"]


@pytest.fixture(scope="session")
def loan_task(example_tasks: dict[str, TaskSpec]) -> TaskSpec:
    return example_tasks["loan_default"]


@pytest.fixture(scope="session")
def breast_cancer_release(breast_cancer_task: TaskSpec) -> TrainedRelease:
    return fit_release(breast_cancer_task)


@pytest.fixture(scope="session")
def loan_release(loan_task: TaskSpec) -> TrainedRelease:
    return fit_release(loan_task)


@pytest.fixture(scope="session")
def make_ensemble(tmp_path_factory: pytest.TempPathFactory) -> Callable[[TrainedRelease], Ensemble]:
    """Build a fresh ensemble (through real skops files) from a trained release."""

    def make(release: TrainedRelease) -> Ensemble:
        return ensemble_from_release(release, tmp_path_factory.mktemp("artifacts"))

    return make


@pytest.fixture(scope="session")
def loan_ensemble(loan_release: TrainedRelease,
                  make_ensemble: Callable[[TrainedRelease], Ensemble]) -> Ensemble:
    return make_ensemble(loan_release)


@pytest.fixture(scope="session")
def synthetic_data() -> Callable[[int, int, int], tuple[list[dict[str, object]], np.ndarray]]:
    """``(n_rows, n_classes, seed) -> (raw rows, labels)`` of the synthetic task."""

    def make(n: int, n_classes: int, seed: int) -> tuple[list[dict[str, object]], np.ndarray]:
        rows = synthetic_rows(n, seed)
        return rows, synthetic_labels(rows, n_classes, seed)

    return make


@pytest.fixture(scope="session")
def synthetic_task_factory() -> Callable[[int], TaskSpec]:
    return synthetic_probability_task
