"""Sends committed outbox rows to Dramatiq and schedules the periodic jobs.

At least once: a row is marked sent after the broker accepted it, so a crash in between
sends it again (the actors are idempotent). On PostgreSQL, relays in several processes skip
each other's rows (FOR UPDATE SKIP LOCKED)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import dramatiq
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db.tables import OutboxMessage
from app.db.types import utcnow
from app.events.breaker import CircuitBreaker

log = logging.getLogger("arbiter.relay")

BATCH = 100
POLL_SECONDS = 1.0
SWEEP_SECONDS = 30.0
# Sent every sweep: lapsed leases back to the queue; retraining triggers and stalled jobs;
# the canary guard; drift reports (each task stores one per its `check_every_minutes`); the
# shadow outputs serving processes did not write; live AUTO quality (a confidence sequence:
# checking it this often inflates no false alarm).
PERIODIC = ("review.expire_leases", "training.check", "releases.check_canaries", "drift.check",
            "releases.backfill_shadows", "quality.check")
# A batch's sends must be done within this; the broker's sockets time out sooner.
SEND_TIMEOUT_SECONDS = 5.0
Job = tuple[str, dict[str, Any]]  # (actor name, keyword arguments)


class OutboxRelay:
    """One per process: ``run`` until cancelled; ``wake`` after a commit for low latency.

    Dramatiq's ``send`` is synchronous network I/O: the relay makes it in a thread, within
    ``send_timeout`` seconds, behind a circuit breaker. While Redis is down the rows wait
    in the database (they are the durable copy) and the event loop never waits on Redis."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession],
                 actors: dict[str, dramatiq.Actor[Any, Any]],
                 poll_seconds: float = POLL_SECONDS, sweep_seconds: float = SWEEP_SECONDS,
                 send_timeout: float = SEND_TIMEOUT_SECONDS) -> None:
        self.sessions = sessions
        self.actors = actors
        self.poll_seconds = poll_seconds
        self.sweep_seconds = sweep_seconds
        self.send_timeout = send_timeout
        self.breaker = CircuitBreaker("broker")
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
            if not rows or not self.breaker.allow():
                return 0  # nothing to send, or Redis is failing: the rows wait
            jobs = [(row.actor, dict(row.payload)) for row in rows]
            sent = await self._off_loop(self._send_all, jobs)
            for row in rows[:sent]:
                row.sent_at = utcnow()
                row.attempts += 1
                session.add(row)
        return sent

    async def _off_loop(self, send: Callable[[list[Job]], int], jobs: list[Job]) -> int:
        """``send(jobs)`` in a thread, given up after ``send_timeout`` (the thread ends by
        its sockets' timeouts; what it sent meanwhile is sent again later, at least once)."""
        try:
            return await asyncio.wait_for(asyncio.to_thread(send, jobs), self.send_timeout)
        except TimeoutError as exc:
            self.breaker.failed(exc)
            return 0

    def _send_all(self, jobs: list[Job]) -> int:
        """Send in order until one fails; how many were sent. Runs in a thread."""
        for done, (actor, payload) in enumerate(jobs):
            try:
                self._send(actor, payload)
            except Exception as exc:  # the broker's error tree is Redis's and Dramatiq's
                self.breaker.failed(exc)
                return done
        self.breaker.succeeded()
        return len(jobs)

    def _send(self, actor: str, payload: dict[str, Any]) -> None:
        delay_ms = 0
        if "not_before" in payload:
            due = datetime.fromisoformat(payload["not_before"])
            delay_ms = max(0, int((due - utcnow()).total_seconds() * 1000))
        self.actors[actor].send_with_options(kwargs=payload, delay=delay_ms or None)

    async def sweep_if_due(self) -> None:
        if time.monotonic() - self._last_sweep < self.sweep_seconds or not self.breaker.allow():
            return
        if await self._off_loop(self._send_all, [(name, {}) for name in PERIODIC]):
            self._last_sweep = time.monotonic()

    async def run(self) -> None:
        while True:
            try:
                await self.sweep_if_due()
                while await self.relay_once() == BATCH:
                    pass
            except Exception:  # the database is away: try again next round
                log.exception("outbox relay round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
            self._wake.clear()
