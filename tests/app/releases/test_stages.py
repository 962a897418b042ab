"""Promotion and rollback on real databases (SQLite and PostgreSQL), through app.stages."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.errors import ArbiterError, StageChangeError, StageConflictError
from app.ml.training import TrainedRelease
from app.predictions.services import Services
from app.releases import stages
from app.releases.store import Stage
from app.settings import Settings
from tests.app.releases.conftest import TASK, add_release, change_count, promote, stages_of
from tests.support.services import run_with


async def rollback(services: Services, reason: str = "bad release") -> list[Any]:
    async with services.sessions() as session, session.begin():
        return await stages.rollback(session, TASK, "tester", reason)


def moves(changes: list[Any], versions: dict[int, int]) -> list[tuple[int, str | None, str]]:
    return [(versions[c.release_id], c.from_stage, c.to_stage) for c in changes]


async def _three_releases(services: Services, trained: dict[str, TrainedRelease]) -> dict[int, int]:
    """Releases 2 and 3 of the task beside LIVE 1; release id -> version."""
    r2 = await add_release(services, trained[TASK])
    r3 = await add_release(services, trained[TASK])
    async with services.sessions() as session:
        r1 = await stages.live_of(session, TASK)
    return {r.id or 0: r.version for r in (r1, r2, r3)}


def test_promotions_move_the_other_releases_and_record_history(
    settings: Settings, trained: dict[str, TrainedRelease]
) -> None:
    async def work(services: Services) -> None:
        v = await _three_releases(services, trained)
        assert moves(await promote(services, 2, "SHADOW"), v) == [(2, "CANDIDATE", "SHADOW")]
        assert moves(await promote(services, 2, "CANARY", 20), v) == [(2, "SHADOW", "CANARY")]
        # A second canary replaces the first, which goes back to CANDIDATE.
        assert moves(await promote(services, 3, "CANARY", 10), v) == [
            (2, "CANARY", "CANDIDATE"), (3, "CANDIDATE", "CANARY")]
        # The canary's share can change.
        [change] = await promote(services, 3, "CANARY", 35)
        assert (change.from_stage, change.to_stage, change.traffic_percent) == (
            "CANARY", "CANARY", 35)
        assert moves(await promote(services, 3, "LIVE", reason="canary looked good"), v) == [
            (1, "LIVE", "RETIRED"), (3, "CANARY", "LIVE")]
        assert await stages_of(services) == {1: "RETIRED", 2: "CANDIDATE", 3: "LIVE"}
        async with services.sessions() as session:
            live = await stages.live_of(session, TASK)
            assert live.traffic_percent == 100
            history = await stages.stage_history(session, live.id or 0)
        assert [(h.from_stage, h.to_stage, h.actor) for h in history] == [
            (None, "CANDIDATE", "tests"), ("CANDIDATE", "CANARY", "tester"),
            ("CANARY", "CANARY", "tester"), ("CANARY", "LIVE", "tester")]
        assert history[-1].reason == "canary looked good"
        assert [h.at for h in history] == sorted(h.at for h in history)

    run_with(settings, work)


@pytest.mark.parametrize(
    ("version", "stage", "percent", "message"),
    [
        (9, "SHADOW", None, "has no release 9"),
        (2, "CANARY", None, "CANARY needs trafficPercent strictly between 0 and 100"),
        (2, "CANARY", 0, "strictly between 0 and 100, got 0"),
        (2, "CANARY", 100, "strictly between 0 and 100, got 100"),
        (2, "SHADOW", 50, "SHADOW takes 0 % of traffic"),
        (2, "LIVE", 50, "LIVE takes 100 % of traffic"),
        (2, "CANDIDATE", None, "already CANDIDATE; nothing to change"),
        (1, "RETIRED", None, "is LIVE and a task always keeps one LIVE release"),
        (1, "CANARY", 10, "is LIVE and a task always keeps one LIVE release"),
    ],
)
def test_invalid_promotions_are_refused_and_write_nothing(
    settings: Settings, trained: dict[str, TrainedRelease], version: int, stage: str,
    percent: float | None, message: str,
) -> None:
    async def work(services: Services) -> None:
        await add_release(services, trained[TASK])
        before = (await stages_of(services), await change_count(services))
        with pytest.raises(StageChangeError, match=message):
            await promote(services, version, stage, percent)
        assert (await stages_of(services), await change_count(services)) == before

    run_with(settings, work)


def test_shadows_are_capped(settings: Settings, trained: dict[str, TrainedRelease]) -> None:
    async def work(services: Services) -> None:
        for _ in range(stages.SHADOW_LIMIT + 1):
            await add_release(services, trained[TASK])
        for version in range(2, 2 + stages.SHADOW_LIMIT):
            await promote(services, version, "SHADOW")
        with pytest.raises(StageChangeError, match=r"already has 3 SHADOW releases \(2, 3, 4\)"):
            await promote(services, 2 + stages.SHADOW_LIMIT, "SHADOW")

    run_with(settings, work)


def test_rollback_restores_the_previous_live_release_and_withdraws_the_canary(
    settings: Settings, trained: dict[str, TrainedRelease]
) -> None:
    async def work(services: Services) -> None:
        v = await _three_releases(services, trained)
        with pytest.raises(StageChangeError, match="no earlier LIVE release"):
            await rollback(services)
        await promote(services, 2, "LIVE")
        await promote(services, 3, "CANARY", 25)
        changes = await rollback(services, reason="error rate doubled")
        assert moves(changes, v) == [(2, "LIVE", "RETIRED"), (3, "CANARY", "CANDIDATE"),
                                     (1, "RETIRED", "LIVE")]
        assert changes[-1].reason == "error rate doubled"
        assert "rolled back to release 1" in changes[0].reason
        assert await stages_of(services) == {1: "LIVE", 2: "RETIRED", 3: "CANDIDATE"}
        # A second rollback undoes the first.
        assert moves(await rollback(services), v) == [(1, "LIVE", "RETIRED"),
                                                      (2, "RETIRED", "LIVE")]

    run_with(settings, work)


def test_a_change_based_on_a_stale_read_conflicts_and_writes_nothing(
    settings: Settings, trained: dict[str, TrainedRelease]
) -> None:
    async def work(services: Services) -> None:
        await _three_releases(services, trained)
        async with services.sessions() as session:
            stale_live = await stages.live_of(session, TASK)  # release 1, read as LIVE
        await promote(services, 2, "LIVE")  # commits: release 1 is RETIRED now
        before = await change_count(services)
        with pytest.raises(StageConflictError, match="release 1 of 'breast_cancer'"):
            async with services.sessions() as session, session.begin():
                await stages.change_stage(session, stale_live, Stage.RETIRED, 0.0, "t", "r")
        assert await change_count(services) == before
        assert await stages_of(services) == {1: "RETIRED", 2: "LIVE", 3: "CANDIDATE"}

    run_with(settings, work)


def test_concurrent_promotions_leave_exactly_one_live_release(
    settings: Settings, trained: dict[str, TrainedRelease]
) -> None:
    async def work(services: Services) -> None:
        await _three_releases(services, trained)
        before = await change_count(services)
        outcomes = await asyncio.gather(
            *(promote(services, v, "LIVE") for v in (2, 3, 2, 3)), return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        assert all(isinstance(f, ArbiterError) for f in failures), failures
        final = await stages_of(services)
        assert list(final.values()).count("LIVE") == 1
        # Every success wrote its two rows; every failure wrote none.
        successes = len(outcomes) - len(failures)
        assert successes >= 1
        assert await change_count(services) == before + 2 * successes

    run_with(settings, work)


def test_announce_names_versions_of_committed_changes(
    settings: Settings, trained: dict[str, TrainedRelease]
) -> None:
    async def work(services: Services) -> None:
        await add_release(services, trained[TASK])
        changes = await promote(services, 2, "LIVE", reason="better")
        notices = await stages.stage_notices(services.sessions, changes)
        assert [(n.version, n.from_stage, n.to_stage, n.traffic_percent, n.actor)
                for n in notices] == [(1, "LIVE", "RETIRED", 0, "tester"),
                                      (2, "CANDIDATE", "LIVE", 100, "tester")]
        assert notices[1].reason == "better" and notices[1].at == changes[1].at
        assert await stages.stage_notices(services.sessions, []) == []

    run_with(settings, work)


def test_concurrent_canary_promotions_leave_one_canary(
    settings: Settings, trained: dict[str, TrainedRelease]
) -> None:
    async def work(services: Services) -> None:
        for _ in range(3):
            await add_release(services, trained[TASK])
        outcomes = await asyncio.gather(
            *(promote(services, v, "CANARY", 10.0 * v) for v in (2, 3, 4, 2, 3, 4)),
            return_exceptions=True)
        assert all(isinstance(o, list | ArbiterError) for o in outcomes), outcomes
        assert list((await stages_of(services)).values()).count("CANARY") == 1

    run_with(settings, work)
