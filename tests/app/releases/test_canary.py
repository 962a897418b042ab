"""The canary guard after scripted reviews: a worse canary is retired, a good one stays."""

from __future__ import annotations

from typing import Any

from app.db.tables import StageChange
from app.ml.task import TaskSpec
from app.ml.training import TrainedRelease
from app.predictions.path import predict_batch
from app.predictions.services import Services
from app.releases.canary import CANARY_GUARD_ACTOR, check_canary
from app.releases.stages import live_of
from app.settings import Settings
from tests.app.releases.conftest import (
    TASK,
    add_release,
    labelled_inputs,
    labels_of,
    promote,
    settle,
    stages_of,
)
from tests.support.services import run_with

MIN_REVIEWED = 20


def guarded(task: TaskSpec) -> TaskSpec:
    gate = task.gate.model_copy(update={"canary_min_reviewed": MIN_REVIEWED,
                                        "canary_max_shortfall": 0.05})
    return task.model_copy(update={"gate": gate})


Answer = tuple[str, str, str, dict[str, Any]]  # prediction id, canary label, truth, input


async def canary_traffic(services: Services, n: int) -> list[Answer]:
    """Serve n labelled inputs with the canary at 50 %; the canary's answers."""
    data = labelled_inputs(services.registry.task(TASK), n, seed=12)
    answered = await predict_batch(services, None, TASK, [raw for raw, _ in data],
                                   [f"patient-{i}" for i in range(n)])
    await services.shadows.drain()
    return [(p.id, p.label, y, raw) for p, (raw, y) in zip(answered, data, strict=True)
            if p.release_version == 2]


async def judge(services: Services) -> list[StageChange]:
    async with services.sessions() as session, session.begin():
        return list(await check_canary(session, guarded(services.registry.task(TASK))))


def test_a_canary_behind_live_is_retired_once_enough_is_reviewed(
    settings: Settings, trained: dict[str, TrainedRelease], crippled: TrainedRelease
) -> None:
    async def work(services: Services) -> None:
        await add_release(services, crippled)
        await promote(services, 2, "CANARY", 50)
        on_canary = await canary_traffic(services, 120)
        assert len(on_canary) > MIN_REVIEWED
        # Too few reviews yet: no verdict, whatever they say.
        await settle(services, {pid: y for pid, _, y, _ in on_canary[:MIN_REVIEWED - 1]})
        assert await judge(services) == []
        await settle(services, {pid: y for pid, _, y, _ in on_canary[MIN_REVIEWED - 1:]})
        [change] = await judge(services)
        assert (change.to_stage, change.actor) == ("RETIRED", CANARY_GUARD_ACTOR)
        assert await stages_of(services) == {1: "LIVE", 2: "RETIRED"}
        # The reason carries both accuracies and n, as computed apart from the guard.
        async with services.sessions() as session:
            live = await live_of(session, TASK)
        live_labels = await labels_of(services, live, [raw for *_, raw in on_canary])
        n = len(on_canary)
        canary_acc = sum(label == y for _, label, y, _ in on_canary) / n
        live_acc = sum(label == y for label, (_, _, y, _) in
                       zip(live_labels, on_canary, strict=True)) / n
        assert live_acc - canary_acc > 0.05
        assert (f"canary accuracy {canary_acc:.3f} trails LIVE release 1's {live_acc:.3f} on "
                f"the same {n} reviewed predictions") in change.reason
        assert await judge(services) == []  # no canary left to judge

    run_with(settings, work)


def test_a_canary_as_good_as_live_stays(
    settings: Settings, trained: dict[str, TrainedRelease]
) -> None:
    async def work(services: Services) -> None:
        await add_release(services, trained[TASK])
        await promote(services, 2, "CANARY", 50)
        on_canary = await canary_traffic(services, 120)
        await settle(services, {pid: y for pid, _, y, _ in on_canary})
        assert len(on_canary) >= MIN_REVIEWED
        assert await judge(services) == []
        assert await stages_of(services) == {1: "LIVE", 2: "CANARY"}

    run_with(settings, work)
