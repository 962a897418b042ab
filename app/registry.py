"""The model registry of a process: which release of each task is LIVE, loaded and ready.

It knows nothing of HTTP or GraphQL (as in MLServer, the runtime is apart from the protocol).
Other processes may promote releases, so the LIVE pointer is re-read at most every
``refresh_seconds``; loading happens off the event loop.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db.tables import Release, ReleaseMember
from app.errors import ArbiterError, ConfigurationError, NoLiveReleaseError, UnknownTaskError
from app.ml.algorithms import ALGORITHMS
from app.ml.artifacts import load_pipeline
from app.ml.conformal import ConformalCalibration
from app.ml.ensemble import Ensemble, LoadedMember, ReleaseCalibration
from app.ml.explain import MemberExplainer
from app.ml.pipeline import fold_matrix
from app.ml.task import TaskSpec, release_policy
from app.releases import live_release, release_members


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
    fold = fold_matrix(task)
    loaded = []
    for m in members:
        algo = ALGORITHMS[m.algorithm]
        pipeline = load_pipeline(artifacts_dir / m.artifact_path, m.sha256)
        explainer = MemberExplainer(
            pipeline, algo.explainer, algo.space, fold, np.asarray(m.background_mean, dtype=float)
        )
        loaded.append(LoadedMember(m.name, m.version, m.algorithm, m.weight, explainer))
    assert release.id is not None
    calibration = ReleaseCalibration.from_json(release.calibration)
    policy = release_policy(task.review, release.routing)
    conformal = ConformalCalibration(policy.confidence_level, calibration.conformal.alphas)
    return Ensemble(
        task, release.id, release.version, loaded, conformal, calibration.ood, policy
    )


@dataclass
class _Slot:
    ensemble: Ensemble | None = None
    checked_at: float = float("-inf")
    error: str | None = None
    routing: dict[str, Any] | None = None  # the overrides the loaded ensemble was built with


class Registry:
    """LIVE ensembles by task name."""

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
        task = self.task(name)
        slot = self._slots[name]
        if time.monotonic() - slot.checked_at < self.refresh_seconds and slot.ensemble:
            return slot.ensemble
        async with self._locks[name]:
            if time.monotonic() - slot.checked_at >= self.refresh_seconds or not slot.ensemble:
                await self._refresh(task, slot)
        if slot.ensemble is None:
            raise NoLiveReleaseError(name)
        return slot.ensemble

    async def _refresh(self, task: TaskSpec, slot: _Slot) -> None:
        async with self.sessions() as session:
            release = await live_release(session, task.name)
            if release is None:
                slot.ensemble, slot.error = None, "no LIVE release"
                slot.checked_at = time.monotonic()
                return
            if (slot.ensemble is not None and slot.ensemble.release_id == release.id
                    and slot.routing == release.routing):
                slot.checked_at = time.monotonic()
                return
            members = await release_members(session, release.id or 0)
        slot.ensemble = await anyio.to_thread.run_sync(
            build_ensemble, task, release, members, self.artifacts_dir
        )
        slot.error = None
        slot.routing = dict(release.routing)
        slot.checked_at = time.monotonic()

    async def load_all(self) -> None:
        """Load every task's LIVE release; failures are kept for ``/readyz`` to report."""
        for name in self.tasks:
            try:
                await self.live(name)
            except ArbiterError as exc:
                self._slots[name].error = str(exc)

    def readiness(self) -> dict[str, str]:
        """Task name -> "ready" or what is wrong."""
        return {
            name: "ready" if slot.ensemble else (slot.error or "not loaded")
            for name, slot in self._slots.items()
        }
