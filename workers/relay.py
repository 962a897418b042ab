"""Sends committed outbox rows to Dramatiq and schedules the periodic jobs.

At least once: a row is marked sent after the broker accepted it, so a crash in between
sends it again (the actors are idempotent). On PostgreSQL, relays in several processes skip
each other's rows (FOR UPDATE SKIP LOCKED)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from typing import Any

import dramatiq
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db.tables import OutboxMessage
from app.db.types import utcnow

log = logging.getLogger("arbiter.relay")

BATCH = 100
POLL_SECONDS = 1.0
SWEEP_SECONDS = 30.0
# Sent every sweep: lapsed leases back to the queue; retraining triggers and stalled jobs;
# the canary guard; drift reports (each task stores one per its `check_every_minutes`); the
# shadow outputs serving processes did not write.
PERIODIC = ("review.expire_leases", "training.check", "releases.check_canaries", "drift.check",
            "releases.backfill_shadows")


class OutboxRelay:
    """One per process: ``run`` until cancelled; ``wake`` after a commit for low latency."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession],
                 actors: dict[str, dramatiq.Actor[Any, Any]],
                 poll_seconds: float = POLL_SECONDS, sweep_seconds: float = SWEEP_SECONDS) -> None:
        self.sessions = sessions
        self.actors = actors
        self.poll_seconds = poll_seconds
        self.sweep_seconds = sweep_seconds
        self._wake = asyncio.Event()
        self._last_sweep = float("-inf")

    def wake(self) -> None:
        self._wake.set()

    async def relay_once(self) -> int:
        """Send up to one batch of unsent rows; the number sent."""
        async with self.sessions() as session, session.begin():
            rows = list((await session.exec(
                select(OutboxMessage).where(col(OutboxMessage.sent_at).is_(None))
                .order_by(col(OutboxMessage.id)).limit(BATCH)
                .with_for_update(skip_locked=True))).all())
            for row in rows:
                self._send(row)
                row.sent_at = utcnow()
                row.attempts += 1
                session.add(row)
        return len(rows)

    def _send(self, row: OutboxMessage) -> None:
        payload = dict(row.payload)
        delay_ms = 0
        if "not_before" in payload:
            due = datetime.fromisoformat(payload["not_before"])
            delay_ms = max(0, int((due - utcnow()).total_seconds() * 1000))
        self.actors[row.actor].send_with_options(kwargs=payload, delay=delay_ms or None)

    def sweep_if_due(self) -> None:
        if time.monotonic() - self._last_sweep >= self.sweep_seconds:
            self._last_sweep = time.monotonic()
            for name in PERIODIC:
                self.actors[name].send()

    async def run(self) -> None:
        while True:
            try:
                self.sweep_if_due()
                while await self.relay_once() == BATCH:
                    pass
            except Exception:  # the database or broker is away: try again next round
                log.exception("outbox relay round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
            self._wake.clear()
