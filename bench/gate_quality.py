"""Does the evaluation gate promote only what is better? And how fast does the live
AUTO-quality alarm fire?

Three tables, each from its own function (``no_gain_table``, ``shift_table``,
``alarm_table``) so they can be joined with other benches:
- no-gain candidates: loan_default retrained with labels of unshifted traffic (true gain
  about zero on fresh rows), judged by ``gate.decide`` as a retraining job judges them, on
  the reviewed held-out rows (as the task ships) and on all held-out rows: how many are
  promoted (refitting with another seed is no control: the seed also moves the source
  split, so LIVE would be judged on rows it trained on);
- a real shift (`generate(long_terms=0.5)`): labels are what routing sends to review (the
  release's own routing, audit rate 2 %), the first N of them, weighted by inverse review
  probability as a job weights them, in five label streams; the decision, and the share of
  the accuracy gap closed (against a release that learned 2,000 random shifted rows), on
  fresh shifted rows;
- the alarm: labelled AUTO predictions read before ``AUTO_ERROR_BOUND_EXCEEDED`` after a
  shift, and false alarms over 10,000 unshifted ones (simulated Bernoulli streams).

    uv run python bench/gate_quality.py            # all three (about 15 minutes)
    uv run python bench/gate_quality.py --quick    # fewer candidates
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
from learning_loop import ensemble  # bench/ is sys.path[0] when run as a script
from rich.table import Table
from tables import machine_line, print_wide

from app.examples.loan import generate
from app.ml import gate
from app.ml.conformal import ConformalCalibration
from app.ml.data import training_arrays
from app.ml.ensemble import Ensemble
from app.ml.routing import decide_routes
from app.ml.task import TaskSpec, load_tasks
from app.ml.training import ReviewedRows, TrainedRelease, classification_metrics, fit_release
from app.quality.bounds import first_alarm
from app.quality.selection import inclusion_weight
from app.settings import EXAMPLE_TASKS_DIR
from app.training.snapshots import Split, reviewed_split

FRESH_ROWS = 3_000


def served(task: TaskSpec, release: TrainedRelease) -> Ensemble:
    """The release as a server loads it: its members, calibration, OOD detector, policy."""
    bare = ensemble(task, release)
    policy = task.review
    conformal = ConformalCalibration(policy.confidence_level,
                                     release.calibration.conformal.alphas)
    return Ensemble(task, 0, 1, bare.members, conformal, release.calibration.ood, policy)


def accuracy(e: Ensemble, X: np.ndarray, y: np.ndarray) -> float:
    return float(classification_metrics(e.probabilities(X), y)["accuracy"])


def judge(task: TaskSpec, live: Ensemble, candidate: TrainedRelease,
          weights: np.ndarray | None = None) -> gate.GateDecision:
    assert candidate.holdout is not None
    return gate.decide(task.gate, candidate.holdout, live.probabilities(candidate.holdout.X),
                       1, weights)


def _judged_on(task: TaskSpec, rows: str) -> TaskSpec:
    return task.model_copy(update={"gate": task.gate.model_copy(update={"improve_on": rows})})


def no_gain_table(candidates: int = 20) -> Table:
    """No-gain candidates (loan_default retrained with labels of unshifted traffic: as good
    as LIVE, a little more data) and what the gate made of them, judged on the reviewed
    held-out rows (as shipped) and on all held-out rows."""
    loan = load_tasks(EXAMPLE_TASKS_DIR)["loan_default"]
    live = ensemble(loan, fit_release(loan))
    X_book, y_book = training_arrays(loan, generate(FRESH_ROWS, seed=992))
    table = Table("candidate", "labels", "judged on", "judged rows", "gain on judged rows",
                  "p-value", "true gain (fresh rows)", "decision",
                  title="No-gain candidates: how many the gate promotes",
                  caption=machine_line())
    decisions: Counter[str] = Counter()
    for i in range(candidates):
        n = (100, 300, 1000)[i % 3]
        X_r, y_r = training_arrays(loan, generate(n, seed=1000 + i))
        splits = np.array([reviewed_split(loan, f"no-gain-{i}-{j}") for j in range(n)])
        trained = fit_release(loan, reviewed=ReviewedRows(X_r, y_r, splits))
        true_gain = (accuracy(ensemble(loan, trained), X_book, y_book)
                     - accuracy(live, X_book, y_book))
        for rows in ("reviewed", "all"):
            decision = judge(_judged_on(loan, rows), live, trained)
            decisions[decision.decision] += 1
            test = decision.test
            assert test is not None
            table.add_row(str(i + 1), str(n), rows, str(test.rows), f"{test.estimate:+.4f}",
                          f"{test.p_value:.3g}", f"{true_gain:+.4f}", decision.decision)
    table.add_section()
    table.add_row(f"{candidates} candidates", "", "", "", "", "", "",
                  ", ".join(f"{k} {v}" for k, v in sorted(decisions.items())))
    return table


def routed_labels(task: TaskSpec, live: Ensemble, pool: int, seed: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shifted traffic through the release's own routing: the rows people label (routed by
    a rule, or audited), in traffic order, with each one's inverse review probability."""
    X, y = training_arrays(task, generate(pool, seed=seed, long_terms=0.5))
    outputs, _ = live.predict_columns(X)
    assert outputs is not None
    ids = [f"shift-{seed}-{i}" for i in range(pool)]
    routes = decide_routes(task.review, task.classes, outputs, ids)
    keep = [i for i, (route, _) in enumerate(routes) if route == "REVIEW"]
    weights = np.array([inclusion_weight([r.to_json() for r in routes[i][1]], False)
                        for i in keep])
    return X[keep], y[keep], weights


def shift_table(labels: tuple[int, ...] = (50, 100, 200), streams: int = 5) -> Table:
    """A real shift: the decision on the first N routed labels of several label streams
    (their own routed traffic and held-out draws), and the share of the gap it closes."""
    loan = load_tasks(EXAMPLE_TASKS_DIR)["loan_default"]
    v1 = fit_release(loan)
    live = served(loan, v1)
    X_new, y_new = training_arrays(loan, generate(FRESH_ROWS, seed=991, long_terms=0.5))
    X_all, y_all = training_arrays(loan, generate(2_000, seed=55, long_terms=0.5))
    oracle = fit_release(loan, reviewed=ReviewedRows(X_all, y_all, np.array(
        [reviewed_split(loan, f"oracle-{j}") for j in range(2_000)])))
    before = accuracy(live, X_new, y_new)
    gap = accuracy(ensemble(loan, oracle), X_new, y_new) - before
    table = Table("stream", "routed labels", "judged rows", "weighted gain", "interval",
                  "p-value", "decision", "gap closed",
                  title=f"A real shift (loan_default, long_terms=0.5): v1 accuracy {before:.3f} "
                  f"on fresh shifted rows, gap {gap:.3f}", caption=machine_line())
    for stream in range(streams):
        X_r, y_r, w_r = routed_labels(loan, live, 2_000, seed=77 + stream)
        for n in labels:
            splits = np.array([reviewed_split(loan, f"shift-{stream}-{j}") for j in range(n)])
            trained = fit_release(loan, reviewed=ReviewedRows(X_r[:n], y_r[:n], splits))
            assert trained.holdout is not None
            weights = np.ones(len(trained.holdout.y))
            held = w_r[:n][splits == Split.HOLDOUT]
            if len(held):
                weights[trained.holdout.reviewed] = held / held.mean()
            decision = judge(loan, live, trained, weights)
            test = decision.test
            assert test is not None
            closed = (accuracy(ensemble(loan, trained), X_new, y_new) - before) / gap
            table.add_row(str(stream + 1), str(n), str(test.rows), f"{test.estimate:+.4f}",
                          f"{test.interval[0]:+.3f} to {test.interval[1]:+.3f}",
                          f"{test.p_value:.3g}", decision.decision, f"{closed:.0%}")
    return table


def alarm_table(seeds: int = 50, epsilon: float = 0.05, alpha: float = 0.1 / 3) -> Table:
    """Labelled AUTO predictions read before the alarm, and false alarms, per error rate."""
    table = Table("true AUTO error", "streams", "alarmed", "labels to alarm (median / max)",
                  title=f"Live alarm: max_auto_error {epsilon}, confidence sequence at "
                  f"alpha {alpha:.4f}, checked after every label")
    for rate, length in ((0.02, 10_000), (0.035, 10_000), (0.05, 10_000), (0.1, 500),
                         (0.15, 500), (0.2, 500), (0.3, 500)):
        firsts = [first_alarm(np.random.default_rng(s).random(length) < rate, epsilon, alpha)
                  for s in range(seeds)]
        hit = [f for f in firsts if f is not None]
        table.add_row(f"{rate:.3f} over {length} labels", str(seeds), str(len(hit)),
                      f"{int(np.median(hit))} / {max(hit)}" if hit else "-")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer candidates and labels")
    parser.add_argument("--only", choices=["alarm", "shift", "no-gain"], help="one table")
    args = parser.parse_args()
    if args.only in (None, "alarm"):
        print_wide(alarm_table(), 110)
    if args.only in (None, "shift"):
        print_wide(shift_table((100,), 2) if args.quick else shift_table(), 130)
    if args.only in (None, "no-gain"):
        print_wide(no_gain_table(6 if args.quick else 20), 130)


if __name__ == "__main__":
    main()
