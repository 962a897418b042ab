"""Scoring inputs with releases that did not answer them, off the response path.

Shadow work must never slow or break serving: it runs after the prediction's transaction,
as background tasks with a bounded number in flight; beyond that, work is dropped, counted
and logged. Outputs go to ``ShadowOutput`` and are never returned to callers.

What a serving process did not score (it was killed with scoring in flight, or dropped the
work) is caught up by ``ShadowBackfill``, a periodic job: for every observer of a task's
deployment (each SHADOW on LIVE's answers, LIVE on the CANARY's) it scores the predictions
made since the observer took its stage that have no output of it yet. Both write with
"insert, ignore what exists", so they may overlap.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from sqlalchemy import exists, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db.tables import Prediction, Release, ShadowOutput, StageChange
from app.db.types import utcnow
from app.errors import ArbiterError
from app.metrics import SHADOW_INPUTS
from app.ml.contract import to_matrix
from app.ml.ensemble import Ensemble
from app.ml.task import TaskSpec
from app.predictions.batching import InferencePool
from app.releases.deployment import observed_pairs
from app.releases.registry import build_ensemble
from app.releases.stages import DEPLOYED, releases_in
from app.releases.store import Stage, release_members

MAX_IN_FLIGHT = 8  # scoring batches at once per process
BACKFILL_LIMIT = 2_000  # predictions read and scored at once (one page) per observer
BACKFILL_BUDGET_SECONDS = 10.0  # a run starts no new page after this; the next run goes on
# Younger predictions are left to the process that served them (its scoring may be in flight).
BACKFILL_SETTLE_SECONDS = 60.0

log = logging.getLogger("arbiter.shadows")


def shadow_rows(ensemble: Ensemble, prediction_ids: list[str], X: np.ndarray
                ) -> list[dict[str, Any]]:
    """What ``ensemble`` says for each input (blocking: run it off the event loop)."""
    proba = ensemble.probabilities(X)
    classes = ensemble.task.classes
    now = utcnow()
    return [
        {"prediction_id": pid, "release_id": ensemble.release_id,
         "label": classes[int(p.argmax())], "confidence": float(p.max()),
         "probabilities": [{"label": c, "probability": float(p[i])}
                           for i, c in enumerate(classes)],
         "created_at": now}
        for pid, p in zip(prediction_ids, proba, strict=True)
    ]


async def store_outputs(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Insert shadow outputs; one that exists already (the other path wrote it) is kept."""
    conn = await session.connection()
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    await conn.execute(dialect.insert(ShadowOutput).on_conflict_do_nothing(), rows)


class ShadowScorer:
    """Background scoring of stored predictions by observer releases."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], inference: InferencePool,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.sessions = sessions
        self.inference = inference
        self.max_in_flight = max_in_flight
        self.stored = 0
        self.dropped = 0
        self.failed = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, ensemble: Ensemble, prediction_ids: list[str], X: np.ndarray) -> bool:
        """Schedule scoring; False (and counted as dropped) when too much is in flight."""
        if len(self._tasks) >= self.max_in_flight:
            self.dropped += len(prediction_ids)
            SHADOW_INPUTS.labels(ensemble.task.name, "dropped").inc(len(prediction_ids))
            log.warning("shadow scoring overloaded: dropped %d inputs for release #%s "
                        "(%d dropped so far; the backfill job scores them later)",
                        len(prediction_ids), ensemble.release_id, self.dropped)
            return False
        task = asyncio.get_running_loop().create_task(self._score(ensemble, prediction_ids, X))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _score(self, ensemble: Ensemble, prediction_ids: list[str], X: np.ndarray) -> None:
        try:
            rows = await self.inference.run(len(X), shadow_rows, ensemble, prediction_ids, X)
            async with self.sessions() as session, session.begin():
                await store_outputs(session, rows)
            self.stored += len(rows)
            SHADOW_INPUTS.labels(ensemble.task.name, "scored").inc(len(rows))
        except Exception:  # a shadow failure is counted and logged, never seen by callers
            self.failed += len(prediction_ids)
            SHADOW_INPUTS.labels(ensemble.task.name, "failed").inc(len(prediction_ids))
            log.exception("shadow scoring by release #%s failed for %d inputs",
                          ensemble.release_id, len(prediction_ids))

    async def drain(self) -> None:
        """Wait until every scheduled scoring has finished (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


@dataclass(frozen=True)
class Backfilled:
    """One observer's catch-up in one run."""

    observer: int  # release version that scored
    answered: int  # release version that answered the predictions
    scored: int


class ShadowBackfill:
    """The catch-up of one process (a worker, or an embedded server's worker): the
    observers' ensembles it loaded, and per pair of releases the time before which every
    prediction is known to be scored, so that a run reads only what is newer."""

    def __init__(self, artifacts_dir: Path, limit: int = BACKFILL_LIMIT,
                 settle_seconds: float = BACKFILL_SETTLE_SECONDS,
                 budget_seconds: float = BACKFILL_BUDGET_SECONDS) -> None:
        self.artifacts_dir = artifacts_dir
        self.limit = limit
        self.settle_seconds = settle_seconds
        self.budget_seconds = budget_seconds
        # release id -> loaded (releases never change), or None: it cannot load (logged once)
        self._ensembles: dict[int, Ensemble | None] = {}
        self._observers: set[int] = set()  # release ids observing in this run
        self._scored_until: dict[tuple[int, int], datetime] = {}
        self._running = threading.Lock()  # worker threads: one run at a time per process

    async def run(self, sessions: async_sessionmaker[AsyncSession],
                  tasks: dict[str, TaskSpec]) -> list[Backfilled]:
        """Catch every task up once (a no-op while another run of this process is on)."""
        if not self._running.acquire(blocking=False):
            return []
        try:
            self._observers = set()
            done: list[Backfilled] = []
            deadline = time.monotonic() + self.budget_seconds
            for task in tasks.values():
                done += await self.backfill(sessions, task, deadline)
            # Releases no longer observing are let go (they may be scored again later).
            self._ensembles = {k: e for k, e in self._ensembles.items() if k in self._observers}
            return done
        finally:
            self._running.release()

    async def backfill(self, sessions: async_sessionmaker[AsyncSession], task: TaskSpec,
                       deadline: float) -> list[Backfilled]:
        """Score the unscored predictions of every observer of ``task``, ``limit`` at a time,
        oldest first, until none is left or ``deadline`` (``time.monotonic()``) has passed;
        each observer scores at least one page."""
        cutoff = utcnow() - timedelta(seconds=self.settle_seconds)
        done = []
        for observer, answered in await _observed_pairs(sessions, task.name):
            assert observer.id is not None and answered.id is not None
            self._observers.add(observer.id)
            while True:
                found = await self._unscored(sessions, task, observer, answered, cutoff)
                if found:
                    ensemble = await self._ensemble(sessions, task, observer)
                    if ensemble is None:
                        break
                    X = to_matrix(task, [row for _, row in found])
                    rows = await anyio.to_thread.run_sync(
                        shadow_rows, ensemble, [pid for pid, _ in found], X)
                    async with sessions() as session, session.begin():
                        await store_outputs(session, rows)
                    SHADOW_INPUTS.labels(task.name, "backfilled").inc(len(rows))
                    done.append(Backfilled(observer.version, answered.version, len(rows)))
                    log.info("release %s of %s scored %d predictions of release %s that its "
                             "serving processes had not", observer.version, task.name,
                             len(rows), answered.version)
                if len(found) < self.limit:
                    self._scored_until[(observer.id, answered.id)] = cutoff
                    break
                if time.monotonic() >= deadline:
                    break
        return done

    async def _unscored(self, sessions: async_sessionmaker[AsyncSession], task: TaskSpec,
                        observer: Release, answered: Release, cutoff: datetime
                        ) -> list[tuple[str, Any]]:
        """The oldest ``limit`` predictions ``answered`` made before ``cutoff`` that
        ``observer`` has not scored, since it took its stage (or the pair's watermark)."""
        assert observer.id is not None and answered.id is not None
        never = datetime.min.replace(tzinfo=cutoff.tzinfo)
        async with sessions() as session:
            since = max(await _stage_started(session, observer),
                        self._scored_until.get((observer.id, answered.id), never))
            found = (await session.exec(
                select(Prediction.id, Prediction.input).where(
                    Prediction.task == task.name, Prediction.release_id == answered.id,
                    col(Prediction.created_at) >= since,
                    col(Prediction.created_at) < cutoff,
                    ~exists().where(col(ShadowOutput.prediction_id) == col(Prediction.id),
                                    col(ShadowOutput.release_id) == observer.id))
                .order_by(col(Prediction.created_at), col(Prediction.id))
                .limit(self.limit))).all()
        return [(pid, row) for pid, row in found]

    async def _ensemble(self, sessions: async_sessionmaker[AsyncSession], task: TaskSpec,
                        release: Release) -> Ensemble | None:
        assert release.id is not None
        if release.id not in self._ensembles:
            async with sessions() as session:
                members = await release_members(session, release.id)
            try:
                self._ensembles[release.id] = await anyio.to_thread.run_sync(
                    build_ensemble, task, release, members, self.artifacts_dir)
            except ArbiterError as exc:  # a tampered artifact, a changed contract: not
                # retried while the release observes (the registry refuses it the same way)
                log.error("release %s of %s cannot score what it missed: %s",
                          release.version, task.name, exc)
                self._ensembles[release.id] = None
        return self._ensembles[release.id]


async def _observed_pairs(sessions: async_sessionmaker[AsyncSession], task: str
                          ) -> list[tuple[Release, Release]]:
    """(observer, answering release) of the task's deployment, by its stored stages."""
    async with sessions() as session:
        deployed = await releases_in(session, task, *DEPLOYED)
    live = next((r for r in deployed if r.stage == Stage.LIVE), None)
    if live is None:
        return []
    return observed_pairs(live, next((r for r in deployed if r.stage == Stage.CANARY), None),
                          [r for r in deployed if r.stage == Stage.SHADOW])


async def _stage_started(session: AsyncSession, release: Release) -> datetime:
    """When the release last took the stage it has now."""
    started = (await session.exec(select(func.max(StageChange.at)).where(
        StageChange.release_id == release.id, StageChange.to_stage == release.stage))).one()
    return started if started is not None else release.created_at
