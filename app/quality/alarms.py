"""The periodic live-quality check: each deployed (LIVE or CANARY) release of a task with a
``max_auto_error`` gets its AUTO error bounds; the first time they show the error above the
bound, the release stores the alarm (and, under ``on_bound_exceeded = "review_all"``, is
held to review: ``app.quality.holds``), the audit log records it, and
``AUTO_ERROR_BOUND_EXCEEDED`` is announced on the task's ``releaseEvents``.

The bounds are a confidence sequence (``app.quality.bounds``): checking at every sweep, for
as long as the release serves, keeps the chance of a false alarm below 1 - risk_confidence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit import log as audit
from app.db.engine import read
from app.db.tables import Release
from app.db.types import utcnow
from app.events.announcements import announce
from app.events.topics import ReleaseEventKind, release_event, releases_topic
from app.ml.task import TaskSpec
from app.quality import gauges
from app.quality.estimates import AutoQuality, QualityRow, auto_quality
from app.quality.holds import REVIEW_ALL
from app.releases.stages import releases_in
from app.releases.store import Stage
from app.training.jobs import JobContext

log = logging.getLogger("arbiter.quality")
QUALITY_ACTOR = "system:quality"

Sessions = async_sessionmaker[AsyncSession]


@dataclass(frozen=True)
class Alarm:
    """A release whose AUTO error was just shown above the bound, and what was done."""

    task: str
    version: int
    action: str
    reason: str


def describe(task: TaskSpec, quality: AutoQuality, row: QualityRow) -> str:
    """The alarm in words, with the numbers."""
    b = row.bounds
    which = "overall" if row.label is None else f"of predicted class {row.label!r}"
    action = ("every prediction of the release goes to review until another release is "
              "promoted" if task.review.on_bound_exceeded == REVIEW_ALL else "alert only")
    return (f"live AUTO error {which} of release {quality.release.version} is above "
            f"max_auto_error {row.max_auto_error:g}: {b.errors} wrong of {b.n} labelled "
            f"AUTO predictions, lower bound {b.lower:.4f} at {row.confidence:.3g} "
            f"(time-uniform); {action}")


def alarm_of(task: TaskSpec, quality: AutoQuality, row: QualityRow) -> dict[str, Any]:
    """What a release stores when its bound is broken."""
    return {"action": task.review.on_bound_exceeded, "reason": describe(task, quality, row),
            "at": utcnow().isoformat(), **row.to_json()}


async def _store_alarm(session: AsyncSession, release_id: int, alarm: dict[str, Any]) -> bool:
    """Store the alarm unless a concurrent check did. The first statement writes the row to
    itself: a concurrent check waits there until this one commits, then reads its alarm.
    (``SELECT ... FOR UPDATE`` did so on PostgreSQL only: SQLite ignores it and takes its
    write lock at the first write, so two checks both read no alarm and both stored one.)"""
    await session.exec(update(Release).where(col(Release.id) == release_id)
                       .values(quality_alarm=col(Release.quality_alarm))
                       .execution_options(synchronize_session=False))
    release = (await session.exec(select(Release).where(col(Release.id) == release_id))).one()
    if release.quality_alarm:
        return False
    release.quality_alarm = alarm
    session.add(release)
    audit.append(session, audit.Kind.BOUND_EXCEEDED, QUALITY_ACTOR, "release", str(release_id),
                 {"version": release.version, **alarm}, release.task)
    return True


async def check_release(ctx: JobContext, task: TaskSpec, release: Release) -> Alarm | None:
    """Bound one release; alarm (once) when its bound is broken."""
    quality = await read(ctx.sessions, auto_quality, task, release.version)
    assert quality is not None
    breached = quality.breached
    gauges.record(quality, bool(release.quality_alarm) or bool(breached))
    if release.quality_alarm or not breached:
        return None
    alarm = alarm_of(task, quality, breached[0])
    async with ctx.sessions() as session, session.begin():
        if not await _store_alarm(session, release.id or 0, alarm):
            return None
    log.warning("%s: %s", task.name, alarm["reason"])
    await announce(ctx.events, [(releases_topic(task.name), release_event(
        ReleaseEventKind.AUTO_ERROR_BOUND_EXCEEDED, task.name, version=release.version,
        status=alarm["action"], reason=alarm["reason"], actor=QUALITY_ACTOR))])
    return Alarm(task.name, release.version, alarm["action"], alarm["reason"])


async def check_all(ctx: JobContext) -> list[Alarm]:
    """``check_release`` for the LIVE and CANARY releases of every task with a bound."""
    alarms = []
    for task in ctx.tasks.values():
        if task.review.max_auto_error is None:
            continue
        async with ctx.sessions() as session:
            deployed = await releases_in(session, task.name, Stage.LIVE, Stage.CANARY)
        for release in deployed:
            alarm = await check_release(ctx, task, release)
            if alarm is not None:
                alarms.append(alarm)
    return alarms
