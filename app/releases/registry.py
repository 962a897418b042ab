"""The model registry of a process: each task's deployed releases (LIVE, CANARY, SHADOW),
loaded and ready.

It knows nothing of HTTP or GraphQL (as in MLServer, the runtime is apart from the protocol).
Other processes may promote releases, so the stages are re-read at most every
``refresh_seconds``; loading happens off the event loop, and a release already loaded is
reused when only its stage or traffic share changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app.access.pii import personal_columns
from app.db.tables import Release, ReleaseMember
from app.errors import (
    ArbiterError,
    ConfigurationError,
    ModelLoadError,
    NoLiveReleaseError,
    UnknownTaskError,
)
from app.ml.algorithms import ALGORITHMS
from app.ml.artifacts import load_pipeline
from app.ml.conformal import ConformalCalibration
from app.ml.ensemble import Ensemble, LoadedMember, ReleaseCalibration
from app.ml.explain import MemberExplainer
from app.ml.pipeline import member_fold
from app.ml.task import TaskSpec, release_policy
from app.quality.holds import hold_of
from app.releases.deployment import Deployment
from app.releases.stages import DEPLOYED, releases_in
from app.releases.store import Stage, release_members

log = logging.getLogger("arbiter.registry")


def build_ensemble(
    task: TaskSpec, release: Release, members: list[ReleaseMember], artifacts_dir: Path
) -> Ensemble:
    """Load and verify every member artifact of a release (blocking: run in a thread)."""
    if release.contract_hash != task.contract_hash():
        raise ConfigurationError(
            f"release {release.version} of {task.name} was trained on a different feature "
            f"contract than {task.source_path} now declares; "
            f"retrain with `arbiter train {task.name}`"
        )
    loaded = []
    for m in members:
        algo = ALGORITHMS[m.algorithm]
        pipeline = load_pipeline(artifacts_dir / m.artifact_path, m.sha256)
        explainer = MemberExplainer(pipeline, algo.explainer, algo.space,
                                    member_fold(task, pipeline),
                                    np.asarray(m.background_mean, dtype=float))
        loaded.append(LoadedMember(m.name, m.version, m.algorithm, m.weight, explainer))
    assert release.id is not None
    calibration = ReleaseCalibration.from_json(release.calibration)
    if calibration.ood is not None:  # its findings tell personal values as REDACTED
        calibration.ood.hidden = personal_columns(task)
    policy = release_policy(task.review, release.routing)
    conformal = ConformalCalibration(policy.confidence_level, calibration.conformal.alphas)
    ensemble = Ensemble(
        task, release.id, release.version, loaded, conformal, calibration.ood, policy,
        calibration.risk(task, policy),
    )
    ensemble.hold = hold_of(release.quality_alarm)
    return ensemble


def _served(release: Release) -> dict[str, Any]:
    """What a loaded ensemble is built with besides its artifacts: its routing overrides
    and whether it is held to review; a change of either reloads it."""
    return {"routing": dict(release.routing), "held": hold_of(release.quality_alarm)}


class TaskState(StrEnum):
    """Whether this process serves a task, and if not, why (``/readyz`` lists them)."""

    SERVING = "serving"
    NO_LIVE_RELEASE = "no live release"
    ARTIFACT_REFUSED = "artifact refused"  # missing, tampered with or of an untrusted type
    NOT_LOADED = "not loaded"  # not tried yet, or the database did not answer
    FAILED = "failed"  # another reason, named in the log


@dataclass
class _Slot:
    deployment: Deployment | None = None
    checked_at: float = float("-inf")
    error: str | None = None
    state: TaskState = TaskState.NOT_LOADED
    # release id -> (what it was built with, see _served; ensemble): reused across refreshes
    loaded: dict[int, tuple[dict[str, Any], Ensemble]] = field(default_factory=dict)
    # release id -> why a CANARY or SHADOW could not be loaded (not retried until it changes)
    failed: dict[int, tuple[dict[str, Any], str]] = field(default_factory=dict)


class Registry:
    """Deployed ensembles by task name."""

    def __init__(
        self,
        tasks: dict[str, TaskSpec],
        sessions: async_sessionmaker[AsyncSession],
        artifacts_dir: Path,
        refresh_seconds: float,
    ) -> None:
        self.tasks = tasks
        self.sessions = sessions
        self.artifacts_dir = artifacts_dir
        self.refresh_seconds = refresh_seconds
        self._slots = {name: _Slot() for name in tasks}
        self._locks = {name: asyncio.Lock() for name in tasks}

    def task(self, name: str) -> TaskSpec:
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTaskError(name, list(self.tasks)) from None

    async def live(self, name: str) -> Ensemble:
        """The task's LIVE ensemble, reloaded when another release became LIVE."""
        return (await self.deployment(name)).live

    async def deployment(self, name: str) -> Deployment:
        """The task's LIVE, CANARY and SHADOW ensembles, as of the last refresh."""
        task = self.task(name)
        slot = self._slots[name]
        if time.monotonic() - slot.checked_at < self.refresh_seconds and slot.deployment:
            return slot.deployment
        async with self._locks[name]:
            if time.monotonic() - slot.checked_at >= self.refresh_seconds or not slot.deployment:
                await self._refresh(task, slot)
        if slot.deployment is None:
            raise NoLiveReleaseError(name)
        return slot.deployment

    async def _refresh(self, task: TaskSpec, slot: _Slot) -> None:
        async with self.sessions() as session:
            deployed = await releases_in(session, task.name, *DEPLOYED)
            todo = [r for r in deployed if not _current(slot, r)]
            members = {r.id: await release_members(session, r.id or 0) for r in todo}
        live = next((r for r in deployed if r.stage == Stage.LIVE), None)
        if live is None:
            slot.deployment, slot.error = None, "no LIVE release"
            slot.state = TaskState.NO_LIVE_RELEASE
            slot.checked_at = time.monotonic()
            return
        fresh = {r.id for r in todo}
        ensembles = {r.id: slot.loaded[r.id or 0][1] for r in deployed
                     if r.id not in fresh and (r.id or 0) in slot.loaded}
        for r in todo:
            try:
                ensembles[r.id] = await anyio.to_thread.run_sync(
                    build_ensemble, task, r, members[r.id], self.artifacts_dir
                )
            except ArbiterError as exc:
                if r.id == live.id:
                    raise
                # A broken canary or shadow must not stop LIVE from serving.
                log.error("release %s of %s (%s) is not deployed: %s",
                          r.version, task.name, r.stage, exc)
                slot.failed[r.id or 0] = (_served(r), str(exc))
        slot.loaded = {r.id or 0: (_served(r), ensembles[r.id]) for r in deployed
                       if r.id in ensembles}
        canary = next((r for r in deployed if r.stage == Stage.CANARY and r.id in ensembles),
                      None)
        slot.deployment = Deployment(
            live=ensembles[live.id],
            canary=ensembles[canary.id] if canary else None,
            canary_percent=canary.traffic_percent if canary else 0.0,
            shadows=tuple(ensembles[r.id] for r in deployed
                          if r.stage == Stage.SHADOW and r.id in ensembles),
        )
        slot.error = None
        slot.checked_at = time.monotonic()

    async def load_all(self) -> None:
        """Load every task's LIVE release; failures are kept for ``/readyz`` to report."""
        for name in self.tasks:
            slot = self._slots[name]
            try:
                await self.live(name)
            except ArbiterError as exc:
                slot.error, slot.state = str(exc), _state_of(exc)
                log.warning("task %s is not served: %s", name, exc)
            except Exception as exc:  # the database is away: report it, retry on first use
                slot.error = f"not loaded: {type(exc).__name__}: {exc}"
                log.warning("task %s is not loaded yet: %s", name, slot.error)

    def live_versions(self) -> dict[str, int]:
        """Task name -> version of the LIVE release this process serves (loaded ones only)."""
        return {name: slot.deployment.live.version for name, slot in self._slots.items()
                if slot.deployment is not None}

    def readiness(self) -> dict[str, TaskState]:
        """Task name -> whether this process serves it (the reasons are in the log)."""
        return {name: TaskState.SERVING if slot.deployment else slot.state
                for name, slot in self._slots.items()}


def _state_of(exc: ArbiterError) -> TaskState:
    if isinstance(exc, NoLiveReleaseError):
        return TaskState.NO_LIVE_RELEASE
    if isinstance(exc, ModelLoadError):
        return TaskState.ARTIFACT_REFUSED
    return TaskState.FAILED


def _current(slot: _Slot, release: Release) -> bool:
    """Loaded (or, unless LIVE, known broken) with the routing overrides it has now."""
    rid = release.id or 0
    known = (slot.loaded,) if release.stage == Stage.LIVE else (slot.loaded, slot.failed)
    return any(rid in k and k[rid][0] == _served(release) for k in known)
