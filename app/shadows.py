"""Scoring inputs with releases that did not answer them, off the response path.

Shadow work must never slow or break serving: it runs after the prediction's transaction,
as background tasks with a bounded number in flight; beyond that, work is dropped, counted
and logged. Outputs go to ``ShadowOutput`` and are never returned to callers.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app.batching import InferencePool
from app.db.tables import ShadowOutput
from app.ml.ensemble import Ensemble

MAX_IN_FLIGHT = 8  # scoring batches at once per process

log = logging.getLogger("arbiter.shadows")


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
            log.warning("shadow scoring overloaded: dropped %d inputs for release #%s "
                        "(%d dropped so far)", len(prediction_ids), ensemble.release_id,
                        self.dropped)
            return False
        task = asyncio.get_running_loop().create_task(self._score(ensemble, prediction_ids, X))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _score(self, ensemble: Ensemble, prediction_ids: list[str], X: np.ndarray) -> None:
        try:
            proba = await self.inference.run(len(X), ensemble.probabilities, X)
            classes = ensemble.task.classes
            rows = [
                ShadowOutput(
                    prediction_id=pid,
                    release_id=ensemble.release_id,
                    label=classes[int(p.argmax())],
                    confidence=float(p.max()),
                    probabilities=[{"label": c, "probability": float(p[i])}
                                   for i, c in enumerate(classes)],
                )
                for pid, p in zip(prediction_ids, proba, strict=True)
            ]
            async with self.sessions() as session, session.begin():
                session.add_all(rows)
            self.stored += len(rows)
        except Exception:  # a shadow failure is counted and logged, never seen by callers
            self.failed += len(prediction_ids)
            log.exception("shadow scoring by release #%s failed for %d inputs",
                          ensemble.release_id, len(prediction_ids))

    async def drain(self) -> None:
        """Wait until every scheduled scoring has finished (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
