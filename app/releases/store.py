"""The release registry in the database: storing trained releases, listing them, stages."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit import log as audit
from app.db.tables import Release, ReleaseMember, StageChange
from app.drift.report import prediction_reference
from app.errors import ArbiterError, BadRequestError, NotFoundError
from app.ml.algorithms import ALGORITHMS
from app.ml.artifacts import library_versions, save_pipeline
from app.ml.task import TaskSpec, release_policy
from app.risk.certificates import RiskControl, control_risk
from app.risk.control import CalibrationRows

if TYPE_CHECKING:
    from app.ml.gate import GateDecision
    from app.ml.training import TrainedRelease

VERSION_RETRIES = 5


class Stage(StrEnum):
    """Where a release stands in its lifecycle."""

    CANDIDATE = "CANDIDATE"
    SHADOW = "SHADOW"
    CANARY = "CANARY"
    LIVE = "LIVE"
    RETIRED = "RETIRED"


def _write_artifacts(artifacts_dir: Path, trained: TrainedRelease) -> dict[str, tuple[str, str]]:
    """member name -> (path relative to the artifacts dir, SHA-256). A fresh folder per
    attempt, so concurrent trainings never overwrite each other's files."""
    folder = Path(trained.task.name) / uuid.uuid4().hex
    out = {}
    for m in trained.members:
        relative = folder / f"{m.spec.name}.skops"
        out[m.spec.name] = (
            relative.as_posix(),
            save_pipeline(m.pipeline, artifacts_dir / relative),
        )
    return out


@dataclass(frozen=True)
class Lineage:
    """Where a release came from: its training snapshot, the LIVE release it was compared
    with (its parent), the job that trained it, and the gate's decision."""

    snapshot_id: str | None = None
    parent_id: int | None = None
    job_id: str | None = None
    gate: GateDecision | None = None


# Work that must commit or roll back with the new release (e.g. finishing its job).
InTransaction = Callable[[AsyncSession, Release], Awaitable[None]]


async def _insert(
    session: AsyncSession,
    trained: TrainedRelease,
    files: dict[str, tuple[str, str]],
    actor: str,
    lineage: Lineage,
) -> Release:
    task = trained.task
    latest = (
        await session.exec(select(func.max(Release.version)).where(Release.task == task.name))
    ).one()
    has_live = (
        await session.exec(
            select(Release.id).where(Release.task == task.name, Release.stage == Stage.LIVE)
        )
    ).first() is not None
    version = (latest or 0) + 1
    stage = Stage.CANDIDATE if has_live else Stage.LIVE
    release = Release(
        task=task.name,
        version=version,
        stage=stage,
        traffic_percent=100.0 if stage == Stage.LIVE else 0.0,
        space=task.space.value,
        contract_hash=task.contract_hash(),
        data_hash=trained.data_hash,
        calibration=trained.calibration.to_json(),
        metrics=trained.metrics,
        rows=trained.rows,
        created_by=actor,
        snapshot_id=lineage.snapshot_id,
        parent_id=lineage.parent_id,
        job_id=lineage.job_id,
        gate=lineage.gate.to_json() if lineage.gate else {},
        prediction_reference=(
            None if trained.holdout is None
            else prediction_reference(task, trained.holdout.proba)
        ),
    )
    session.add(release)
    await session.flush()
    assert release.id is not None
    versions = library_versions()
    for m in trained.members:
        path, sha = files[m.spec.name]
        session.add(
            ReleaseMember(
                release_id=release.id,
                name=m.spec.name,
                version=f"{version}.{sha[:8]}",
                algorithm=m.spec.algorithm,
                family=ALGORITHMS[m.spec.algorithm].family,
                weight=m.spec.weight,
                params=_jsonable_params(m.pipeline[-1].get_params(deep=False)),
                artifact_path=path,
                sha256=sha,
                background_mean=m.background_mean.tolist(),
                metrics=m.metrics,
                library_versions=versions,
                contract_hash=task.contract_hash(),
                created_by=actor,
                origin=m.origin,
            )
        )
    reason = "first release of the task" if stage == Stage.LIVE else "trained"
    session.add(
        StageChange(
            release_id=release.id,
            task=task.name,
            from_stage=None,
            to_stage=stage,
            traffic_percent=release.traffic_percent,
            actor=actor,
            reason=reason,
        )
    )
    audit.record(session, [
        audit.Entry(audit.Kind.RELEASE_STORED, actor, "release", str(release.id), {
            "version": version, "stage": stage.value, "snapshot": lineage.snapshot_id,
            "job": lineage.job_id, "contractHash": release.contract_hash,
            "dataHash": release.data_hash,
            "members": [{"name": m.spec.name, "algorithm": m.spec.algorithm,
                         "sha256": files[m.spec.name][1], **({"origin": m.origin}
                                                             if m.origin else {})}
                        for m in trained.members]},
            task.name),
        audit.Entry(audit.Kind.STAGE_CHANGED, actor, "release", str(release.id), {
            "version": version, "from": None, "to": stage.value,
            "trafficPercent": release.traffic_percent, "reason": reason}, task.name)])
    return release


async def store_release(
    sessions: async_sessionmaker[AsyncSession],
    artifacts_dir: Path,
    trained: TrainedRelease,
    actor: str,
    lineage: Lineage = Lineage(),
    in_transaction: InTransaction | None = None,
) -> Release:
    """Save the artifacts, then record the release in one transaction: the next version
    number, LIVE when the task has no LIVE release yet, else CANDIDATE."""
    files = _write_artifacts(artifacts_dir, trained)
    for _attempt in range(VERSION_RETRIES):
        try:
            async with sessions() as session, session.begin():
                release = await _insert(session, trained, files, actor, lineage)
                if in_transaction is not None:
                    await in_transaction(session, release)
                return release
        except IntegrityError:
            continue  # another training took the version (or LIVE) first; number again
    raise ArbiterError(f"could not allocate a release version for {trained.task.name}")


def _jsonable_params(params: dict[str, object]) -> dict[str, object]:
    return {
        k: v if isinstance(v, str | int | float | bool | type(None)) else repr(v)
        for k, v in params.items()
    }


async def list_releases(session: AsyncSession, task: str) -> list[Release]:
    """The task's releases, newest version first."""
    return list(
        (
            await session.exec(
                select(Release).where(Release.task == task).order_by(col(Release.version).desc())
            )
        ).all()
    )


async def live_release(session: AsyncSession, task: str) -> Release | None:
    """The task's LIVE release, or None."""
    return (
        await session.exec(select(Release).where(Release.task == task, Release.stage == Stage.LIVE))
    ).first()


async def release_members(session: AsyncSession, release_id: int) -> list[ReleaseMember]:
    """A release's members, in the order they were stored."""
    return list(
        (
            await session.exec(
                select(ReleaseMember)
                .where(ReleaseMember.release_id == release_id)
                .order_by(col(ReleaseMember.id))
            )
        ).all()
    )


async def release_by_version(session: AsyncSession, task: str, version: int) -> Release:
    """The task's release ``version``; an error when it has none."""
    found = (
        await session.exec(select(Release).where(Release.task == task, Release.version == version))
    ).first()
    if found is None:
        raise NotFoundError(f"task {task!r} has no release {version}")
    return found


async def set_routing(session: AsyncSession, task: TaskSpec, version: int,
                      overrides: Any, actor: str) -> Release:
    """Replace a release's review-policy overrides (validated against the task's policy);
    servers pick the change up at their next LIVE-pointer refresh."""
    if not isinstance(overrides, dict):
        raise BadRequestError("policy must be a JSON object of review-policy fields")
    release_policy(task.review, overrides)
    release = await release_by_version(session, task.name, version)
    before = release.routing
    release.routing = dict(overrides)
    session.add(release)
    await session.flush()
    audit.append(session, audit.Kind.ROUTING_CHANGED, actor, "release", str(release.id),
                       {"version": version, "from": before, "to": release.routing}, task.name)
    return release


async def change_routing(sessions: async_sessionmaker[AsyncSession], task: TaskSpec,
                         version: int, overrides: Any, actor: str) -> Release:
    """``set_routing`` in a transaction of its own: the release, once committed."""
    async with sessions() as session, session.begin():
        return await set_routing(session, task, version, overrides, actor)


def calibration_summary(stored: dict[str, Any]) -> dict[str, Any]:
    """What people need to read of a release's calibration: levels and thresholds, not the
    calibration scores or the detector's training statistics (medians of PII features)."""
    summary: dict[str, Any] = {
        k: stored[k] for k in ("method", "confidence_level", "threshold") if k in stored
    }
    summary["calibration_rows"] = len(stored.get("alphas", []))
    ood = stored.get("ood")
    if ood:
        summary["ood"] = {k: ood[k] for k in ("method", "quantile", "threshold") if k in ood}
    return summary


def release_risk(task: TaskSpec, release: Release) -> RiskControl | None:
    """The AUTO thresholds the release serves with, certified on its stored calibration rows
    for the task's ``max_auto_error`` (None when unset). Derived, not stored: a changed bound
    in the task file applies to every release without retraining (nothing is certified for
    a release stored before risk control kept its rows)."""
    policy = release_policy(task.review, release.routing)
    if policy.max_auto_error is None:
        return None
    rows = CalibrationRows.from_json(release.calibration.get("risk_rows"))
    return control_risk(rows, task.classes, policy.max_auto_error, policy.risk_confidence,
                        policy.auto_error_scope)
