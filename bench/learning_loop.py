"""How much reviewed labels of shifted inputs help: `loan_default` release 1 (the book)
against a retrained release that also learned from N reviewed loans of a market with long
terms (`generate(long_terms=0.5)`), scored on fresh rows neither has seen, with the gate's
decision. The same functions as a retraining job: reviewed rows split by prediction id,
`fit_release`, `gate.decide`.

    uv run python bench/learning_loop.py --reviewed 100 300 1000
"""

from __future__ import annotations

import argparse
import uuid

import numpy as np
from rich.console import Console
from rich.table import Table

from app.examples.loan import generate
from app.ml import gate
from app.ml.conformal import ConformalCalibration
from app.ml.data import training_arrays
from app.ml.ensemble import Ensemble, LoadedMember
from app.ml.task import TaskSpec, load_tasks
from app.ml.training import ReviewedRows, TrainedRelease, classification_metrics, fit_release
from app.settings import EXAMPLE_TASKS_DIR
from app.training.snapshots import reviewed_split


def ensemble(task: TaskSpec, release: TrainedRelease) -> Ensemble:
    from app.ml.algorithms import ALGORITHMS
    from app.ml.explain import MemberExplainer
    from app.ml.pipeline import fold_matrix

    members = [
        LoadedMember(m.spec.name, "", m.spec.algorithm, m.spec.weight, MemberExplainer(
            m.pipeline, ALGORITHMS[m.spec.algorithm].explainer,
            ALGORITHMS[m.spec.algorithm].space, fold_matrix(task), m.background_mean))
        for m in release.members
    ]
    return Ensemble(task, 0, 0, members, ConformalCalibration(0.9, (0.0,)))


def accuracy(e: Ensemble, X: np.ndarray, y: np.ndarray) -> float:
    return float(classification_metrics(e.probabilities(X), y)["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviewed", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--fresh", type=int, default=3000, help="fresh rows to score on")
    args = parser.parse_args()
    task = load_tasks(EXAMPLE_TASKS_DIR)["loan_default"]
    v1 = fit_release(task)
    e1 = ensemble(task, v1)
    X_shift, y_shift = training_arrays(task, generate(args.fresh, seed=991, long_terms=0.5))
    X_book, y_book = training_arrays(task, generate(args.fresh, seed=992))
    table = Table("reviewed rows", "shifted: v1", "shifted: retrained", "book: v1",
                  "book: retrained", "gate", title="loan_default, accuracy on fresh rows")
    for n in args.reviewed:
        X_r, y_r = training_arrays(task, generate(n, seed=77, long_terms=0.5))
        splits = np.array([reviewed_split(task, str(uuid.uuid4())) for _ in range(n)])
        v2 = fit_release(task, reviewed=ReviewedRows(X_r, y_r, splits))
        e2 = ensemble(task, v2)
        assert v2.holdout is not None
        decision = gate.decide(task.gate, v2.holdout, e1.probabilities(v2.holdout.X), 1)
        table.add_row(str(n), f"{accuracy(e1, X_shift, y_shift):.3f}",
                      f"{accuracy(e2, X_shift, y_shift):.3f}",
                      f"{accuracy(e1, X_book, y_book):.3f}", f"{accuracy(e2, X_book, y_book):.3f}",
                      decision.decision)
    Console().print(table)


if __name__ == "__main__":
    main()
