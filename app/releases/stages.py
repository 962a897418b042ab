"""Release stages: promotion, rollback, and the record of who moved which release, when, why.

Each change runs inside the caller's transaction and returns the ``StageChange`` rows it
wrote; the caller commits, then hands them to ``announce`` (logs and publishes them). Every
move is a compare-and-set on the stage that was read, and the partial unique index keeps
one LIVE release per task, so of two conflicting promotions one fails with
``StageConflictError`` and writes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit import log as audit
from app.db.tables import Release, StageChange
from app.errors import NoLiveReleaseError, NotFoundError, StageChangeError, StageConflictError
from app.events import announcements
from app.events.bus import EventBus
from app.events.topics import ReleaseEventKind, release_event, releases_topic
from app.releases.store import Stage, live_release, release_by_version

# Every SHADOW scores every LIVE-answered input off the response path: each costs inference.
SHADOW_LIMIT = 3
DEPLOYED = (Stage.LIVE, Stage.CANARY, Stage.SHADOW)

log = logging.getLogger("arbiter.stages")


async def find_release(session: AsyncSession, task: str, version: int) -> Release:
    """The release to move; a version the task lacks is an invalid stage change."""
    try:
        return await release_by_version(session, task, version)
    except NotFoundError as exc:
        raise StageChangeError(str(exc)) from None


async def live_of(session: AsyncSession, task: str) -> Release:
    """The task's LIVE release; an error when it has none."""
    found = await live_release(session, task)
    if found is None:
        raise NoLiveReleaseError(task)
    return found


async def releases_in(session: AsyncSession, task: str, *stages: Stage) -> list[Release]:
    """The task's releases in any of ``stages``, oldest version first."""
    return list(
        (
            await session.exec(
                select(Release)
                .where(Release.task == task, col(Release.stage).in_([s.value for s in stages]))
                .order_by(col(Release.version))
            )
        ).all()
    )


async def stage_history(session: AsyncSession, release_id: int) -> list[StageChange]:
    """Every stage a release went through, oldest first."""
    return list(
        (
            await session.exec(
                select(StageChange)
                .where(StageChange.release_id == release_id)
                .order_by(col(StageChange.id))
            )
        ).all()
    )


async def lock_task(session: AsyncSession, task: str) -> None:
    """Serialise the stage changes of a task. The first statement of each writes the LIVE
    row (to itself), so a concurrent change waits until this one commits and then reads
    what it wrote; one whose LIVE release was replaced meanwhile fails with a conflict."""
    try:
        result = await session.exec(
            update(Release)
            .where(col(Release.task) == task, col(Release.stage) == Stage.LIVE.value)
            .values(stage=Stage.LIVE.value)
            .execution_options(synchronize_session=False)
        )
    except OperationalError as exc:  # SQLite: waited longer than the busy timeout
        if "locked" not in str(exc):
            raise
        raise StageConflictError(f"another stage change of {task!r} is being written") from exc
    if result.rowcount == 0 and await live_release(session, task) is not None:
        raise StageConflictError(
            f"the LIVE release of {task!r} changed while this change waited; read the "
            "stages again and retry"
        )


async def change_stage(
    session: AsyncSession, release: Release, to: Stage, percent: float, actor: str, reason: str
) -> StageChange:
    """Move one release and record it. A compare-and-set on the stage: it must still be the
    one we read, else another change of the task committed in between. No checks of the
    transition itself: ``promote`` and ``rollback`` make those. Call ``lock_task`` first."""
    before = release.stage
    what = f"release {release.version} of {release.task!r}"
    try:
        result = await session.exec(
            update(Release)
            .where(col(Release.id) == release.id, col(Release.stage) == before)
            .values(stage=to.value, traffic_percent=percent)
        )
    except IntegrityError as exc:  # the one-LIVE index: another release became LIVE first
        raise StageConflictError(
            f"{what} cannot become {to}: another stage change of the task committed first"
        ) from exc
    except OperationalError as exc:  # SQLite: another writer holds or changed the database
        if "locked" not in str(exc):
            raise
        raise StageConflictError(f"{what}: another stage change is being written") from exc
    if result.rowcount != 1:
        raise StageConflictError(
            f"{what} is no longer {before}: another stage change committed first"
        )
    release.stage, release.traffic_percent = to.value, percent
    change = StageChange(
        release_id=release.id or 0,
        task=release.task,
        from_stage=before,
        to_stage=to.value,
        traffic_percent=percent,
        actor=actor,
        reason=reason,
    )
    session.add(change)
    audit.append(session, audit.Kind.STAGE_CHANGED, actor, "release", str(release.id), {
        "version": release.version, "from": before, "to": to.value, "trafficPercent": percent,
        "reason": reason}, release.task)
    return change


def _check_percent(stage: Stage, percent: float | None) -> float:
    if stage is Stage.CANARY:
        if percent is None or not 0 < percent < 100:
            raise StageChangeError(
                f"CANARY needs trafficPercent strictly between 0 and 100, got {percent}"
            )
        return percent
    expected = 100.0 if stage is Stage.LIVE else 0.0
    if percent is not None and percent != expected:
        raise StageChangeError(
            f"{stage} takes {expected:g} % of traffic; omit trafficPercent (got {percent:g})"
        )
    return expected


async def promote(
    session: AsyncSession,
    task: str,
    version: int,
    stage: Stage | str,
    traffic_percent: float | None,
    actor: str,
    reason: str,
) -> list[StageChange]:
    """Move a release to ``stage``. LIVE retires the old LIVE release; CANARY sends the
    previous canary back to CANDIDATE; at most ``SHADOW_LIMIT`` SHADOWs; the LIVE release
    itself is never demoted (a task always keeps one LIVE release: promote another or
    roll back)."""
    target = Stage(stage)
    percent = _check_percent(target, traffic_percent)
    await lock_task(session, task)
    release = await find_release(session, task, version)
    _check_move(release, target, percent)
    changes = await _make_room(session, release, target, actor, reason)
    changes.append(await change_stage(session, release, target, percent, actor, reason))
    await session.flush()
    return changes


def _check_move(release: Release, target: Stage, percent: float) -> None:
    """A LIVE release never moves by promotion, and a move must change something."""
    what = f"release {release.version} of {release.task!r}"
    if release.stage == Stage.LIVE:
        raise StageChangeError(
            f"{what} is LIVE and a task always keeps one LIVE release; "
            "promote another release to LIVE, or roll back"
        )
    if release.stage == target and (target is not Stage.CANARY
                                    or release.traffic_percent == percent):
        raise StageChangeError(f"{what} is already {target}; nothing to change")


async def _make_room(session: AsyncSession, release: Release, target: Stage, actor: str,
                     reason: str) -> list[StageChange]:
    """Before ``release`` becomes ``target``: retire the old LIVE release, send the other
    canary back, or refuse one SHADOW too many."""
    task, version = release.task, release.version
    changes: list[StageChange] = []
    if target is Stage.LIVE:
        old = await live_release(session, task)
        if old is not None:
            changes.append(await change_stage(session, old, Stage.RETIRED, 0.0, actor,
                                              f"replaced by release {version}: {reason}"))
    elif target is Stage.CANARY:
        for other in await releases_in(session, task, Stage.CANARY):
            if other.id != release.id:
                changes.append(await change_stage(
                    session, other, Stage.CANDIDATE, 0.0, actor,
                    f"replaced as canary by release {version}: {reason}"))
    elif target is Stage.SHADOW:
        shadows = [r.version for r in await releases_in(session, task, Stage.SHADOW)]
        if len(shadows) >= SHADOW_LIMIT:
            raise StageChangeError(
                f"task {task!r} already has {len(shadows)} SHADOW releases "
                f"({', '.join(map(str, shadows))}), the most allowed; demote one first"
            )
    return changes


async def _previous_live(session: AsyncSession, task: str, current_id: int) -> Release | None:
    """The release that most recently left LIVE, other than the current LIVE one."""
    return (
        await session.exec(
            select(Release)
            .join(StageChange, col(StageChange.release_id) == col(Release.id))
            .where(
                StageChange.task == task,
                StageChange.from_stage == Stage.LIVE.value,
                col(Release.id) != current_id,
            )
            .order_by(col(StageChange.id).desc())
            .limit(1)
        )
    ).first()


async def rollback(session: AsyncSession, task: str, actor: str, reason: str) -> list[StageChange]:
    """Make the previous LIVE release LIVE again and retire the current one. A CANARY goes
    back to CANDIDATE too: it was being judged against the release that is rolled back,
    and a rollback means "only what was known to be good answers". SHADOWs stay (they
    never answer). Rolling back twice undoes the first rollback."""
    await lock_task(session, task)
    current = await live_of(session, task)
    previous = await _previous_live(session, task, current.id or 0)
    if previous is None:
        raise StageChangeError(
            f"task {task!r} has no earlier LIVE release to roll back to "
            f"(release {current.version} is the only one that was ever LIVE)"
        )
    changes = [await change_stage(session, current, Stage.RETIRED, 0.0, actor,
                           f"rolled back to release {previous.version}: {reason}")]
    for canary in await releases_in(session, task, Stage.CANARY):
        if canary.id != previous.id:
            changes.append(await change_stage(session, canary, Stage.CANDIDATE, 0.0, actor,
                                       f"canary withdrawn by rollback: {reason}"))
    changes.append(await change_stage(session, previous, Stage.LIVE, 100.0, actor, reason))
    audit.append(session, audit.Kind.ROLLED_BACK, actor, "release", str(previous.id), {
        "from": current.version, "to": previous.version, "reason": reason}, task)
    await session.flush()
    return changes


@dataclass(frozen=True)
class StageNotice:
    """A committed stage change as the world hears of it (fields named as the
    ``releaseEvents`` payload takes them: ``release_event(STAGE_CHANGED, **asdict(n))``)."""

    task: str
    version: int
    from_stage: str | None
    to_stage: str
    traffic_percent: float
    actor: str
    reason: str
    at: datetime


async def stage_notices(
    sessions: async_sessionmaker[AsyncSession], changes: Sequence[StageChange]
) -> list[StageNotice]:
    """Call after commit with what ``promote``, ``rollback`` or the canary guard returned:
    logs each change and returns its notice."""
    if not changes:
        return []
    ids = {c.release_id for c in changes}
    async with sessions() as session:
        rows = (await session.exec(select(Release).where(col(Release.id).in_(ids)))).all()
    versions = {r.id: r.version for r in rows}
    notices = [StageNotice(c.task, versions[c.release_id], c.from_stage, c.to_stage,
                           c.traffic_percent, c.actor, c.reason, c.at) for c in changes]
    for n in notices:
        log.info("release %s of %s: %s -> %s (%g %%) by %s: %s", n.version, n.task,
                 n.from_stage, n.to_stage, n.traffic_percent, n.actor, n.reason)
    return notices


async def announce(
    bus: EventBus, sessions: async_sessionmaker[AsyncSession], changes: Sequence[StageChange]
) -> None:
    """Log committed changes and publish them on their tasks' ``releaseEvents``."""
    notices = await stage_notices(sessions, changes)
    await announcements.announce(bus, [
        (releases_topic(n.task), release_event(ReleaseEventKind.STAGE_CHANGED, **asdict(n)))
        for n in notices
    ])


Sessions = async_sessionmaker[AsyncSession]


async def _committed(sessions: Sessions, bus: EventBus,
                     change: Callable[[AsyncSession], Awaitable[list[StageChange]]],
                     after: Callable[[AsyncSession], Awaitable[Release]]) -> Release:
    """Run ``change`` in a transaction of its own, read ``after`` (the release it leaves)
    in the same one, and publish the committed changes."""
    async with sessions() as session, session.begin():
        changes = await change(session)
        release = await after(session)
    await announce(bus, sessions, changes)
    return release


async def promote_release(sessions: Sessions, bus: EventBus, task: str, version: int,
                          stage: str, percent: float | None, actor: str,
                          reason: str) -> Release:
    """``promote`` committed and published: the release as it now stands."""
    return await _committed(
        sessions, bus, lambda s: promote(s, task, version, stage, percent, actor, reason),
        lambda s: find_release(s, task, version))


async def rollback_release(sessions: Sessions, bus: EventBus, task: str, actor: str,
                           reason: str) -> Release:
    """``rollback`` committed and published: the release LIVE again."""
    return await _committed(sessions, bus, lambda s: rollback(s, task, actor, reason),
                            lambda s: live_of(s, task))
