"""Does risk-controlled routing keep its promise? Per task, over repeated calibration seeds:
conformal coverage on fresh rows (overall and per class, with intervals), the realized error
of AUTO predictions against ``max_auto_error`` (overall and per predicted class), the routing
rate, and the plain max-probability policy at the same routing rate and at the same error.
Each seed refits the release with ``[training] seed`` = that seed (a new training and
calibration draw, as a new release would be) and judges it on rows it never saw: freshly
generated loans for ``loan_default``, else the release's held-out split (then certified on
the calibration split alone, as the held-out split judges).

    uv run python bench/decision_quality.py --task loan_default --eps 0.05 --scope class
    uv run python bench/decision_quality.py --task loan_default --eps 0.10 --scope overall
    uv run python bench/decision_quality.py --task breast_cancer --eps 0.05 --seeds 10

One function per table (``TABLES``): bench/gate_quality.py may add its own to the list.
Out-of-distribution inputs go to review under every policy compared, so the comparison is
between the scores' rules; the audit sample is left out (it is the same for all).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from rich.table import Table
from tables import machine_line, print_wide

from app.examples.loan import generate
from app.ml.algorithms import ALGORITHMS
from app.ml.contract import frame_to_matrix
from app.ml.ensemble import Ensemble, LoadedMember
from app.ml.explain import MemberExplainer
from app.ml.pipeline import fold_matrix
from app.ml.task import TaskSpec, load_tasks
from app.ml.training import TrainedRelease, fit_release
from app.risk.binomial import clopper_pearson
from app.risk.certificates import RiskControl, control_risk
from app.risk.control import CalibrationRows
from app.settings import EXAMPLE_TASKS_DIR

INTERVAL = 0.95


@dataclass
class Run:
    """One calibration seed's release, judged on fresh rows."""

    seed: int
    classes: tuple[str, ...]
    y: np.ndarray
    proba: np.ndarray
    sets: np.ndarray  # conformal sets (rows x classes)
    ood: np.ndarray  # out of distribution (bool per row)
    disagree: np.ndarray  # members predict different classes
    risk: RiskControl
    auto: np.ndarray  # AUTO under risk control (OOD rows excluded)

    @property
    def predicted(self) -> np.ndarray:
        return self.proba.argmax(axis=1)

    @property
    def wrong(self) -> np.ndarray:
        return self.predicted != self.y


def _ensemble(task: TaskSpec, trained: TrainedRelease) -> Ensemble:
    fold = fold_matrix(task)
    members = [LoadedMember(m.spec.name, "", m.spec.algorithm, m.spec.weight, MemberExplainer(
        m.pipeline, ALGORITHMS[m.spec.algorithm].explainer, ALGORITHMS[m.spec.algorithm].space,
        fold, m.background_mean)) for m in trained.members]
    return Ensemble(task, 0, 0, members, trained.calibration.conformal, trained.calibration.ood)


def _fresh(task: TaskSpec, trained: TrainedRelease, rows: int, seed: int
           ) -> tuple[np.ndarray, np.ndarray]:
    if task.name == "loan_default":
        frame = generate(rows=rows, seed=10_000 + seed)
        y = np.array([task.classes.index(v) for v in frame.pop("outcome")])
        return frame_to_matrix(task, frame), y
    assert trained.holdout is not None
    return trained.holdout.X, trained.holdout.y


def _risk(task: TaskSpec, trained: TrainedRelease) -> RiskControl:
    """The release's certificates; without generated rows, certified on the calibration split
    alone, since the held-out split (certified on too when serving) judges them here."""
    rows = trained.calibration.risk_rows
    assert rows is not None and task.review.max_auto_error is not None
    if task.name != "loan_default":  # the calibration split and any out-of-fold rows
        n, exact = trained.rows["calibration"], rows.exact_rows or len(rows.scores)
        keep = np.r_[0:n, exact:len(rows.scores)]
        rows = CalibrationRows(rows.scores[keep], rows.predicted[keep], rows.errors[keep])
    return control_risk(rows, task.classes, task.review.max_auto_error,
                        task.review.risk_confidence, task.review.auto_error_scope)


def fit_run(task: TaskSpec, seed: int, rows: int) -> Run:
    """Refit the task with this seed and route its fresh rows."""
    seeded = task.model_copy(update={"training": task.training.model_copy(update={"seed": seed})})
    trained = fit_release(seeded)
    X, y = _fresh(seeded, trained, rows, seed)
    ensemble = _ensemble(seeded, trained)
    proba = ensemble.probabilities(X)
    said = np.stack([m.explainer.probabilities(X).argmax(axis=1) for m in ensemble.members])
    ood = trained.calibration.ood.flags(X) if trained.calibration.ood else np.zeros(len(y), bool)
    risk = _risk(seeded, trained)
    _, auto = risk.auto(proba)
    return Run(seed, task.classes, y, proba, trained.calibration.conformal.prediction_sets(proba),
               ood, (said != said[0]).any(axis=0), risk, auto & ~ood)


def _rate(k: int, n: int) -> str:
    if n == 0:
        return "-"
    low, high = clopper_pearson(k, n, INTERVAL)
    return f"{k / n:.3f} [{low:.3f}, {high:.3f}] n={n}"


def coverage_table(runs: list[Run], eps: float) -> Table:
    """Conformal coverage of the true class, overall and per true class, per seed."""
    table = Table(title="conformal coverage on fresh rows (95 % Clopper-Pearson)")
    table.add_column("seed")
    table.add_column("overall")
    for c in runs[0].classes:
        table.add_column(f"true {c}")
    for r in runs:
        covered = r.sets[np.arange(len(r.y)), r.y]
        table.add_row(str(r.seed), _rate(int(covered.sum()), len(r.y)),
                      *[_rate(int(covered[r.y == k].sum()), int((r.y == k).sum()))
                        for k in range(len(r.classes))])
    return table


def risk_table(runs: list[Run], eps: float) -> Table:
    """Realized AUTO error (overall and per predicted class) and routing, per seed."""
    table = Table(title=f"risk-controlled routing, max_auto_error={eps}, scope="
                  f"{runs[0].risk.scope}: realized AUTO error (95 % CI) on fresh rows")
    for name in ("seed", "routed", "OOD / not certified / above threshold", "AUTO error",
                 *[f"AUTO {c}" for c in runs[0].classes],
                 "certified (threshold)", "holds"):
        table.add_column(name)
    held = 0
    for r in runs:
        per_class = [(int((r.auto & r.wrong & (r.predicted == k)).sum()),
                      int((r.auto & (r.predicted == k)).sum())) for k in range(len(r.classes))]
        ok = all(n == 0 or k / n <= eps for k, n in per_class) if r.risk.scope == "class" \
            else r.auto.sum() == 0 or (r.auto & r.wrong).sum() / r.auto.sum() <= eps
        held += ok
        certs = ", ".join(f"{c.label}:{'-' if c.threshold is None else f'{c.threshold:.3f}'}"
                          for c in r.risk.classes)
        table.add_row(str(r.seed), f"{1 - r.auto.mean():.2%}", _reasons(r),
                      _rate(int((r.auto & r.wrong).sum()), int(r.auto.sum())),
                      *[_rate(k, n) for k, n in per_class], certs, "yes" if ok else "NO")
    table.caption = f"bound held in {held} of {len(runs)} seeds; {machine_line()}"
    return table


def _max_probability(r: Run) -> dict[str, np.ndarray]:
    """The max-probability policy's curve: AUTO = the m most confident in-distribution rows,
    for every m: routing rate, AUTO error, and the worst predicted class's AUTO error."""
    inside = np.flatnonzero(~r.ood)
    order = inside[np.argsort(-r.proba[inside].max(axis=1), kind="stable")]
    m = np.arange(1, len(order) + 1)
    errors = np.cumsum(r.wrong[order]) / m
    worst = np.zeros(len(order))
    for k in range(len(r.classes)):
        mine = r.predicted[order] == k
        count = np.cumsum(mine)
        rate = np.cumsum(mine & r.wrong[order]) / np.maximum(count, 1)
        worst = np.maximum(worst, rate)
    return {"routed": 1 - m / len(r.y), "error": errors, "worst": worst}


def _least_routing(curve: dict[str, np.ndarray], key: str, bound: float) -> float | None:
    ok = np.flatnonzero(curve[key] <= bound + 1e-12)
    return None if not len(ok) else float(curve["routed"][ok].min())


def _best_routing(curve: dict[str, np.ndarray], key: str, bound: float) -> str:
    least = _least_routing(curve, key, bound)
    return "-" if least is None else f"{least:.2%}"


def _reasons(r: Run) -> str:
    """Which rule routed each in-distribution row: its class is not certified, or its score
    is above the class's threshold (OOD rows go to review under every policy)."""
    certified = r.risk.certified(r.predicted)
    return (f"{r.ood.mean():.2%} / {(~r.ood & ~certified).mean():.2%} / "
            f"{(~r.ood & certified & ~r.auto).mean():.2%}")


def baseline_table(runs: list[Run], eps: float) -> Table:
    """Max-probability thresholds at the same routing rate and at the same error, and the
    OR-ed rules of routing without max_auto_error."""
    table = Table(title="max-probability policy beside risk control (same OOD routing)")
    for name in ("seed", "risk: routed / AUTO error", "maxprob same routing: AUTO error",
                 "maxprob same AUTO error: routed", "risk - maxprob (points)",
                 "maxprob every class <= eps: routed", "OR-ed rules: routed / AUTO error"):
        table.add_column(name)
    gaps = []
    for r in runs:
        curve = _max_probability(r)
        ours = float((r.auto & r.wrong).sum() / max(r.auto.sum(), 1))
        routed = 1 - r.auto.mean()
        same = int(np.argmin(np.abs(curve["routed"] - routed)))
        ored = r.ood | r.disagree | (r.sets.sum(axis=1) != 1)
        least = _least_routing(curve, "error", ours)
        gap = None if least is None else 100 * (routed - least)
        gaps += [] if gap is None else [gap]
        table.add_row(str(r.seed), f"{routed:.2%} / {ours:.4f}", f"{curve['error'][same]:.4f}",
                      _best_routing(curve, "error", ours), "-" if gap is None else f"{gap:+.2f}",
                      _best_routing(curve, "worst", eps),
                      f"{ored.mean():.2%} / {(r.wrong & ~ored).sum() / max((~ored).sum(), 1):.4f}")
    if gaps:
        table.caption = (f"risk routing minus the least max-probability routing reaching the "
                         f"same realized AUTO error: mean {np.mean(gaps):+.2f} points, "
                         f"{min(gaps):+.2f} to {max(gaps):+.2f} (target within 0.5)")
    return table


TABLES: list[Callable[[list[Run], float], Table]] = [coverage_table, risk_table, baseline_table]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="loan_default")
    parser.add_argument("--eps", type=float, default=0.05, help="max_auto_error")
    parser.add_argument("--scope", choices=["class", "overall"], default="class")
    parser.add_argument("--confidence", type=float, default=0.9, help="risk_confidence")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=20_000, help="fresh loans per seed")
    parser.add_argument("--calibration", choices=["split", "cross_fit"], default="split",
                        help="risk_calibration: the release's own rows, or out-of-fold too")
    args = parser.parse_args()
    task = load_tasks(EXAMPLE_TASKS_DIR)[args.task]
    review = task.review.model_copy(update={"max_auto_error": args.eps,
                                            "auto_error_scope": args.scope,
                                            "risk_confidence": args.confidence,
                                            "risk_calibration": args.calibration})
    task = task.model_copy(update={"review": review})
    runs = [fit_run(task, seed, args.rows) for seed in range(args.seeds)]
    for make in TABLES:
        print_wide(make(runs, args.eps), 200)


if __name__ == "__main__":
    main()
