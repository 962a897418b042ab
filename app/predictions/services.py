"""The parts the prediction path works with, held together (app.main builds them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db.tables import StageChange
from app.events.bus import EventBus
from app.ml.ensemble import Ensemble
from app.predictions.batching import Batcher, InferencePool
from app.predictions.store import Commit
from app.releases import stages
from app.releases.registry import Registry
from app.releases.shadows import ShadowScorer
from app.settings import Settings

# One submitter's rows for one release: what the inference micro-batcher gathers.
ModelCall = tuple[Ensemble, np.ndarray]


@dataclass
class Services:
    """What the prediction path needs, built once by the composition root."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    registry: Registry
    events: EventBus  # notices for subscriptions
    inference: InferencePool  # the threads models run on
    shadows: ShadowScorer
    model_calls: Batcher[ModelCall]  # ensemble calls of concurrent predictions, together
    commits: Batcher[Commit]  # their transactions, together (group commit)
    wake_relay: Callable[[], None] = lambda: None  # called after committing outbox rows

    async def drain(self) -> None:
        """Let the work in flight finish before the engine goes: batches whose callers
        went away (model calls, then the commits they feed), then shadow scoring."""
        await self.model_calls.drain()
        await self.commits.drain()
        await self.shadows.drain()

    def close(self) -> None:
        """Stop the inference threads (after the last request)."""
        self.inference.close()

    async def announce(self, changes: Sequence[StageChange]) -> None:
        """Publish committed stage changes on ``releaseEvents`` (and log them)."""
        await stages.announce(self.events, self.sessions, changes)
