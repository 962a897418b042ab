"""The actors. Each receives ids, opens its own session, and is safe to run twice."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import dramatiq
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app.drift import checks as drift_checks
from app.events.bus import EventBus
from app.quality import alarms as quality_alarms
from app.releases import stages
from app.releases.canary import check_canary
from app.releases.shadows import ShadowBackfill
from app.training import jobs as retraining
from review import notices, queue

log = logging.getLogger("arbiter.workers")

Sessions = Callable[[], async_sessionmaker[AsyncSession]]


def _expire_lease(sessions: Sessions, events: EventBus) -> Callable[..., Awaitable[None]]:
    async def expire_lease(item_id: str, lease_version: int, **_: Any) -> None:
        """Return the item to the queue if this very lease is still unsettled."""
        if await queue.expire_lease(sessions(), item_id, lease_version):
            log.info("lease %s of item %s expired", lease_version, item_id)
            await notices.announce_expired(events, sessions(), [item_id])
    return expire_lease


def _expire_leases(sessions: Sessions, events: EventBus) -> Callable[..., Awaitable[None]]:
    async def expire_leases(**_: Any) -> None:
        """Sweep every lapsed lease back to the queue (safety net for lost messages)."""
        expired = await queue.expire_leases(sessions())
        if expired:
            log.info("returned %d lapsed leases to the queue", len(expired))
            await notices.announce_expired(events, sessions(), expired)
    return expire_leases


def _train(make_context: MakeContext) -> Callable[..., Awaitable[None]]:
    async def run(job_id: str, **_: Any) -> None:
        """Run one retraining job (a no-op when it is done or running elsewhere)."""
        await retraining.run_job(make_context(), job_id)
    return run


def _check_training(make_context: MakeContext) -> Callable[..., Awaitable[None]]:
    async def check(**_: Any) -> None:
        """Request the retrainings labels or schedules call for; resend stalled jobs."""
        ctx = make_context()
        for job in await retraining.check_triggers(ctx.sessions, ctx.tasks):
            log.info("requested retraining %s of %s (%s)", job.id, job.task, job.trigger)
        for job_id in await retraining.resend_stalled(ctx.sessions, ctx.stale_seconds):
            log.warning("training job %s stalled; sent again", job_id)
    return check


def _check_canaries(make_context: MakeContext) -> Callable[..., Awaitable[None]]:
    async def check(**_: Any) -> None:
        """Retire every canary whose reviewed answers trail LIVE's by the task's margin."""
        ctx = make_context()
        for task in ctx.tasks.values():
            async with ctx.sessions() as session, session.begin():
                changes = await check_canary(session, task)
            await stages.announce(ctx.events, ctx.sessions, changes)
    return check


def _check_drift(make_context: MakeContext) -> Callable[..., Awaitable[None]]:
    async def check(**_: Any) -> None:
        """Store each task's drift report once per `check_every_minutes`; announce drift."""
        for outcome in await drift_checks.check_all(make_context()):
            report = outcome.report
            log.info("drift of %s: %s%s", report.task, report.message,
                     f"; requested retraining {outcome.job.id}" if outcome.job else "")
    return check


def _check_quality(make_context: MakeContext) -> Callable[..., Awaitable[None]]:
    async def check(**_: Any) -> None:
        """Bound live AUTO error of every deployed release; alarm when a bound is broken."""
        for alarm in await quality_alarms.check_all(make_context()):
            log.warning("AUTO error bound exceeded: %s v%s (%s)", alarm.task, alarm.version,
                        alarm.action)
    return check


def _backfill_shadows(make_context: MakeContext, backfill: ShadowBackfill
                      ) -> Callable[..., Awaitable[None]]:
    async def backfill_shadows(**_: Any) -> None:
        """Score what serving processes left unscored for the release comparisons and the
        canary guard (killed with scoring in flight, or overloaded)."""
        ctx = make_context()
        await backfill.run(ctx.sessions, ctx.tasks)
    return backfill_shadows


MakeContext = Callable[[], retraining.JobContext]

ACTORS: dict[str, Callable[[Sessions, EventBus], Callable[..., Awaitable[None]]]] = {
    "review.expire_lease": _expire_lease,
    "review.expire_leases": _expire_leases,
}
TRAINING_ACTORS: dict[str, Callable[[MakeContext], Callable[..., Awaitable[None]]]] = {
    retraining.RUN_ACTOR: _train,
    "training.check": _check_training,
    "releases.check_canaries": _check_canaries,
    "drift.check": _check_drift,
    "quality.check": _check_quality,
}
SHADOW_BACKFILL_ACTOR = "releases.backfill_shadows"
TRAINING_TIME_LIMIT_MS = 3_600_000  # Dramatiq's default (10 min) is too short to train


def register(broker: dramatiq.Broker, sessions: Sessions, events: EventBus,
             make_context: MakeContext, backfill: ShadowBackfill
             ) -> dict[str, dramatiq.Actor[Any, Any]]:
    """Declare every actor on ``broker``; ``sessions`` gives the calling loop's sessions,
    ``events`` is where actors publish what they changed, ``make_context`` what a training
    job needs, on the calling loop; ``backfill`` keeps the shadow catch-up's loaded
    releases for the process."""
    def declare(name: str, fn: Callable[..., Awaitable[None]],
                **options: Any) -> dramatiq.Actor[Any, Any]:
        return dramatiq.actor(actor_name=name, broker=broker, queue_name="arbiter",
                              max_retries=5, **options)(fn)

    actors = {name: declare(name, make(sessions, events)) for name, make in ACTORS.items()}
    actors.update({name: declare(name, make(make_context), time_limit=TRAINING_TIME_LIMIT_MS)
                   for name, make in TRAINING_ACTORS.items()})
    actors[SHADOW_BACKFILL_ACTOR] = declare(SHADOW_BACKFILL_ACTOR,
                                            _backfill_shadows(make_context, backfill),
                                            time_limit=TRAINING_TIME_LIMIT_MS)
    return actors
