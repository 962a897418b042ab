"""The compute floor: the LIVE release's members, loaded in this process, timed bare.

The floor is what the model work alone costs: every member's ``predict_proba`` + SHAP
(``TreeExplainer``/``LinearExplainer``, built beforehand, as the server does) on the rows
as one NumPy matrix, with no validation, routing, storage or HTTP.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from app.ml.algorithms import ALGORITHMS
from app.ml.artifacts import load_pipeline
from app.ml.explain import MemberExplainer
from app.ml.pipeline import fold_matrix
from app.ml.task import TaskSpec

MEMBERS_SQL = sa.text(
    "SELECT m.name, m.algorithm, m.artifact_path, m.sha256, m.background_mean "
    "FROM releases r JOIN release_members m ON m.release_id = r.id "
    "WHERE r.task = :task AND r.stage = 'LIVE' ORDER BY m.name"
)


@dataclass
class Member:
    """One LIVE member, its explainer, and its single-row timings."""

    name: str
    pipeline: Any
    explainer: MemberExplainer
    proba_ms: float = 0.0  # single row, median
    shap_ms: float = 0.0  # single row, median


def live_members(data_dir: Path, task: TaskSpec) -> list[Member]:
    """The members of the task's LIVE release in the SQLite data dir, loaded."""
    engine = sa.create_engine(f"sqlite:///{data_dir / 'arbiter.db'}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(MEMBERS_SQL, {"task": task.name}).all()
    finally:
        engine.dispose()
    if not rows:
        raise SystemExit(f"no LIVE release of {task.name} in {data_dir}")
    fold = fold_matrix(task)
    members = []
    for name, algorithm, path, sha, background in rows:
        pipeline = load_pipeline(data_dir / "artifacts" / path, sha)
        algo = ALGORITHMS[algorithm]
        bg = json.loads(background) if isinstance(background, str) else background
        members.append(Member(name, pipeline, MemberExplainer(
            pipeline, algo.explainer, algo.space, fold, np.asarray(bg, dtype=float))))
    return members


def shap_values(m: Member, X: np.ndarray) -> Any:
    """The member's SHAP values of X (additivity unchecked, as the server computes them)."""
    Xt = m.explainer.preprocess.transform(X)
    if m.explainer.explainer.__class__.__name__ == "TreeExplainer":
        return m.explainer.explainer.shap_values(Xt, check_additivity=False)
    return m.explainer.explainer.shap_values(Xt)


def time_single_rows(members: list[Member], X: np.ndarray, repeats: int = 60) -> None:
    """Median single-row ``predict_proba`` and SHAP time of each member."""
    for m in members:
        proba, shap = [], []
        for i in range(repeats):
            row = X[i % len(X)][None, :]
            t0 = time.perf_counter()
            m.pipeline.predict_proba(row)
            t1 = time.perf_counter()
            shap_values(m, row)
            t2 = time.perf_counter()
            proba.append(t1 - t0)
            shap.append(t2 - t1)
        m.proba_ms = statistics.median(proba[5:]) * 1000
        m.shap_ms = statistics.median(shap[5:]) * 1000


def compute_floor(members: list[Member], X: np.ndarray, runs: int = 2) -> float:
    """Best-of-``runs`` seconds for every member's ``predict_proba`` + SHAP on all of X."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        for m in members:
            m.pipeline.predict_proba(X)
            shap_values(m, X)
        best = min(best, time.perf_counter() - started)
    return best
