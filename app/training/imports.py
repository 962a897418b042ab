"""Members trained elsewhere: a fitted scikit-learn estimator or Pipeline from a skops file
(``artifact =`` in the task file, or ``arbiter members import``), checked against the
task's feature contract, explained exactly by the explainer its type calls for, calibrated
and gated like a trained member, and refit as a clone (same hyperparameters) once
reviewers' labels exist.

The estimator takes the task's columns (``TaskSpec.model_columns``: inputs, then derived
features) as a pandas DataFrame, categories as their strings; ``ModelFrame`` builds that
frame from the model matrix in front of it, so the rest of Arbiter sees a member pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from pydantic import ValidationError
from sklearn.pipeline import Pipeline
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit import log as audit
from app.db.tables import Release, ReleaseMember
from app.errors import BadRequestError, ConfigurationError
from app.events import announcements
from app.events.bus import EventBus, LocalBus
from app.ml.algorithms import Algorithm, algorithm_of, supported_estimators
from app.ml.artifacts import load_pipeline, read_estimator
from app.ml.data import load_frame, training_arrays
from app.ml.explain import MemberExplainer
from app.ml.gate import GateDecision
from app.ml.pipeline import SUPPORTED_STEPS, ModelFrame, member_fold
from app.ml.task import FeatureType, Member, TaskSpec
from app.ml.training import MemberPlan, calibration_rows, fit_release
from app.releases import stages
from app.releases.store import Lineage, live_release, release_members, store_release
from app.training import gating
from app.training.snapshots import SnapshotData, take_snapshot

EXACT = 1e-6  # how far base + contributions may be from the served output, at most


class OriginKind(StrEnum):
    """How a member that Arbiter did not design came to a release."""

    IMPORTED = "imported"  # the fitted estimator of the file, as it is
    REFIT = "refit"  # a clone of it, fitted on the release's rows (reviewers' labels too)


@dataclass(frozen=True)
class Adopted:
    """An estimator from a file, ready to be a member: its algorithm and its pipeline
    (``ModelFrame`` first), with the file it came from."""

    algorithm: Algorithm
    pipeline: Pipeline
    file: str
    sha256: str

    def origin(self, kind: OriginKind = OriginKind.IMPORTED) -> dict[str, Any]:
        return {"kind": kind.value, "file": self.file, "sha256": self.sha256,
                "estimator": type(self.pipeline[-1]).__name__}


def _refuse(name: str, why: str) -> BadRequestError:
    return BadRequestError(f"member {name!r}: {why}")


def _algorithm(task: TaskSpec, name: str, final: Any) -> Algorithm:
    algo = algorithm_of(final)
    if algo is None:
        raise _refuse(name, f"{type(final).__name__} has no exact explainer in Arbiter; "
                      f"supported estimators: {supported_estimators()}, alone or at the end "
                      f"of a Pipeline of {SUPPORTED_STEPS}")
    if algo.space is not task.space:
        raise _refuse(name, f"{type(final).__name__} explains in {algo.space} space but "
                      f"{task.name}'s members explain in {task.space}; choose an estimator "
                      "of that space so the ensemble explanation stays exact")
    if len(task.classes) > 2 and not algo.multiclass:
        raise _refuse(name, f"{type(final).__name__} is explained for two classes only")
    return algo


def _check_classes(task: TaskSpec, name: str, final: Any) -> None:
    found = [str(c) for c in getattr(final, "classes_", [])]
    indices = [str(i) for i in range(len(task.classes))]
    if found not in (list(task.classes), indices):
        raise _refuse(name, f"predicts classes {found}, not {task.name}'s {list(task.classes)} "
                      f"in that order; fit it on the task's labels (or on their indices "
                      f"0..{len(task.classes) - 1} when scikit-learn would sort them otherwise)")


def _frame(task: TaskSpec, name: str, estimator: Any) -> ModelFrame:
    columns = getattr(estimator, "feature_names_in_", None)
    if columns is None:
        raise _refuse(name, "was fitted without column names; fit it on a pandas DataFrame "
                      f"whose columns are {task.name}'s: {', '.join(task.model_columns)}")
    unknown = [c for c in columns if c not in task.model_columns]
    if unknown:
        raise _refuse(name, f"expects columns {unknown} that {task.name} does not have; its "
                      f"columns are {', '.join(task.model_columns)}")
    kinds = {f.name: f for f in task.features}
    categories = [list(kinds[c].categories)
                  if c in kinds and kinds[c].type is FeatureType.CATEGORICAL else []
                  for c in columns]
    return ModelFrame([str(c) for c in columns],
                      [task.model_columns.index(c) for c in columns], categories)


def adopt(task: TaskSpec, name: str, estimator: Any, file: str, sha256: str) -> Adopted:
    """Check an estimator's type, classes and columns against the task and put
    ``ModelFrame`` in front of it; refused with what is wrong."""
    final = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
    algo = _algorithm(task, name, final)
    if not hasattr(final, "predict_proba"):
        raise _refuse(name, f"{type(final).__name__} has no predict_proba")
    _check_classes(task, name, final)
    steps = list(estimator.steps) if isinstance(estimator, Pipeline) else [("model", estimator)]
    pipeline = Pipeline([("arbiter_frame", _frame(task, name, estimator)), *steps])
    try:
        member_fold(task, pipeline)
    except BadRequestError as exc:
        raise _refuse(name, str(exc)) from None
    return Adopted(algo, pipeline, file, sha256)


def check_rows(task: TaskSpec, name: str, adopted: Adopted, X: np.ndarray) -> None:
    """The member must predict these rows (the task's calibration rows), explain them
    exactly, and give the probabilities of its own ``predict_proba``."""
    algo, pipeline = adopted.algorithm, adopted.pipeline
    try:
        background = np.asarray(pipeline[:-1].transform(X), dtype=float).mean(axis=0)
        explainer = MemberExplainer(pipeline, algo.explainer, algo.space,
                                    member_fold(task, pipeline), background)
        proba, scores = explainer.explain(X)
        direct = np.asarray(pipeline.predict_proba(X), dtype=float)
    except Exception as exc:
        raise _refuse(name, f"cannot predict {task.name}'s calibration rows: "
                      f"{type(exc).__name__}: {exc}") from None
    gap = float(np.abs(scores.base + scores.contributions.sum(axis=1) - scores.scores).max())
    drift = float(np.abs(proba - direct).max())
    if gap > EXACT or drift > EXACT:
        raise _refuse(name, f"its {algo.explainer.value} explanation is not exact on "
                      f"{task.name}'s calibration rows (additivity off by {gap:.2g}, "
                      f"probabilities by {drift:.2g})")


def read_member(task: TaskSpec, name: str, path: Path) -> Adopted:
    """The estimator of a skops file, adopted and checked on the task's calibration rows."""
    estimator, sha256 = read_estimator(path)
    adopted = adopt(task, name, estimator, str(path), sha256)
    X, y = training_arrays(task, load_frame(task))
    check_rows(task, name, adopted, calibration_rows(task, X, y)[0])
    return adopted


def _declared(task: TaskSpec, spec: Member, relabelled: bool) -> MemberPlan:
    """A task-file member: fitted from its spec, or from its artifact (as it is until
    reviewers' labels exist, then a refit clone)."""
    if spec.artifact is None:
        return MemberPlan(spec)
    adopted = read_member(task, spec.name, Path(task.source_path).parent / spec.artifact)
    if adopted.algorithm.name != spec.algorithm:
        raise ConfigurationError(
            f"member {spec.name!r} of {task.name}: {adopted.file} holds a "
            f"{type(adopted.pipeline[-1]).__name__} ({adopted.algorithm.name}), not "
            f"{spec.algorithm} as declared")
    if relabelled:
        return MemberPlan(spec, template=adopted.pipeline,
                          origin=adopted.origin(OriginKind.REFIT))
    return MemberPlan(spec, pipeline=adopted.pipeline, origin=adopted.origin())


def _kept(row: ReleaseMember, pipeline: Pipeline, relabelled: bool) -> MemberPlan:
    """A member of the LIVE release carried into the next one: an imported member is refit
    as a clone once labels exist; any other stays as it is."""
    spec = Member(name=row.name, algorithm=row.algorithm, weight=row.weight)
    if relabelled and row.origin:
        return MemberPlan(spec, template=pipeline,
                          origin={**row.origin, "kind": OriginKind.REFIT.value})
    return MemberPlan(spec, pipeline=pipeline, origin=dict(row.origin))


async def _live_members(sessions: async_sessionmaker[AsyncSession], artifacts_dir: Path,
                        task: TaskSpec, imported_only: bool = False
                        ) -> tuple[Release | None, list[tuple[ReleaseMember, Pipeline]]]:
    """The LIVE release and its members (only the imported ones, if asked), loaded."""
    async with sessions() as session:
        live = await live_release(session, task.name)
        rows = [] if live is None else await release_members(session, live.id or 0)
    rows = [r for r in rows if r.origin or not imported_only]
    if live is not None and live.contract_hash != task.contract_hash():
        return live, []  # another contract: its members cannot serve this one
    loaded = [(r, await anyio.to_thread.run_sync(
        load_pipeline, artifacts_dir / r.artifact_path, r.sha256)) for r in rows]
    return live, loaded


async def member_plans(sessions: async_sessionmaker[AsyncSession], artifacts_dir: Path,
                       task: TaskSpec, data: SnapshotData) -> list[MemberPlan]:
    """The members a training of the task fits: the task file's, with the LIVE release's
    imported members kept beside them (replacing a declared one of the same name that is
    not itself an artifact), refit as clones when the snapshot holds reviewers' labels."""
    relabelled = len(data.y) > data.source_rows
    plans = {m.name: await anyio.to_thread.run_sync(_declared, task, m, relabelled)
             for m in task.members}
    _, live = await _live_members(sessions, artifacts_dir, task, imported_only=True)
    for row, pipeline in live:
        declared = next((m for m in task.members if m.name == row.name), None)
        if declared is None or declared.artifact is None:
            plans[row.name] = _kept(row, pipeline, relabelled)
    return list(plans.values())


def _weight(name: str, weight: float | None, rows: list[ReleaseMember]) -> float:
    if weight is None:
        return next((r.weight for r in rows if r.name == name), 1.0)
    if not weight > 0:
        raise _refuse(name, f"weight must be above 0, got {weight}")
    return weight


def _import_plans(task: TaskSpec, name: str, adopted: Adopted, weight: float | None,
                  live: list[tuple[ReleaseMember, Pipeline]]) -> list[MemberPlan]:
    """The LIVE release's members as they are, with ``name`` replaced by the import (or
    added after them)."""
    try:
        spec = Member(name=name, algorithm=adopted.algorithm.name,
                      weight=_weight(name, weight, [r for r, _ in live]))
    except ValidationError as exc:
        raise _refuse(name, exc.errors()[0]["msg"]) from None
    plans = [_kept(r, p, relabelled=False) for r, p in live if r.name != name]
    imported = MemberPlan(spec, pipeline=adopted.pipeline, origin=adopted.origin())
    at = next((i for i, (r, _) in enumerate(live) if r.name == name), len(plans))
    return [*plans[:at], imported, *plans[at:]]


async def import_member(sessions: async_sessionmaker[AsyncSession], artifacts_dir: Path,
                        task: TaskSpec, name: str, path: Path, weight: float | None,
                        actor: str, events: EventBus | None = None
                        ) -> tuple[Release, GateDecision]:
    """A new release whose members are the LIVE release's with ``name`` replaced by (or
    added as) the estimator of ``path``: calibrated on the task's rows, judged by the gate,
    stored as a CANDIDATE and promoted as the gate's rule says. Nothing is written when
    the estimator is refused."""
    live, members = await _live_members(sessions, artifacts_dir, task)
    if live is None:
        raise BadRequestError(f"{task.name} has no LIVE release to import into; train it "
                              f"first (`arbiter train {task.name}`) or declare the member "
                              "with `artifact =` in the task file")
    if not members:
        raise BadRequestError(f"LIVE v{live.version} of {task.name} has another feature "
                              f"contract; retrain it first (`arbiter train {task.name}`)")
    adopted = await anyio.to_thread.run_sync(read_member, task, name, path)
    plans = _import_plans(task, name, adopted, weight, members)
    snapshot, data = await take_snapshot(sessions, task, artifacts_dir, actor)
    n = data.source_rows
    trained = await anyio.to_thread.run_sync(
        lambda: fit_release(task, data.X[:n], data.y[:n], reviewed=data.reviewed, plans=plans))
    parent, decision = await gating.evaluate(sessions, artifacts_dir, task, trained)

    async def finish(session: AsyncSession, release: Release) -> None:
        audit.record(session, [gating.decided_entry(release, decision, "")])
        await gating.promote_passed(session, task, release, decision)

    lineage = Lineage(snapshot.id, parent.id if parent else None, None, decision)
    release = await store_release(sessions, artifacts_dir, trained, actor, lineage, finish)
    await _announce(events or LocalBus(), sessions, release, decision)
    return release, decision


async def _announce(events: EventBus, sessions: async_sessionmaker[AsyncSession],
                    release: Release, decision: GateDecision) -> None:
    await announcements.announce(events, [gating.decision_message(release, decision, "")])
    async with sessions() as session:
        changes = await stages.stage_history(session, release.id or 0)
    await stages.announce(events, sessions, changes)
