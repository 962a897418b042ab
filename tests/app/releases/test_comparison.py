"""Release comparison against LIVE, checked against numbers computed apart from it."""

from __future__ import annotations

import pytest

from app.errors import BadRequestError
from app.ml.training import TrainedRelease
from app.predictions.path import predict_batch
from app.predictions.services import Services
from app.releases.comparison import Tally, compare_release
from app.releases.stages import live_of
from app.settings import Settings
from tests.app.releases.conftest import (
    TASK,
    add_release,
    labelled_inputs,
    labels_of,
    promote,
    settle,
)
from tests.support.services import run_with


def share(hits: int, n: int) -> float | None:
    return hits / n if n else None


@pytest.mark.parametrize(("stage", "percent"), [("SHADOW", None), ("CANARY", 50.0)])
def test_comparison_matches_an_independent_count(
    settings: Settings, trained: dict[str, TrainedRelease], crippled: TrainedRelease,
    stage: str, percent: float | None,
) -> None:
    async def work(services: Services) -> None:
        task = services.registry.task(TASK)
        compared = await add_release(services, crippled)
        await promote(services, 2, stage, percent)
        data = labelled_inputs(task, 90, seed=8)
        raws = [raw for raw, _ in data]
        answered = await predict_batch(services, None, TASK, raws,
                                       [f"patient-{i}" for i in range(len(raws))])
        await services.shadows.drain()
        # People settle the true class of every other prediction.
        truth = {p.id: label for i, (p, (_, label)) in enumerate(zip(answered, data, strict=True))
                 if i % 2 == 0}
        await settle(services, truth)
        async with services.sessions() as session:
            live = await live_of(session, TASK)
            report = await compare_release(session, TASK, 2, task.classes)
        mine = await labels_of(services, compared, raws)
        theirs = await labels_of(services, live, raws)
        # Pairs: what LIVE answered (SHADOW) or what the canary answered (CANARY).
        pairs = [(p.id, m, t) for p, m, t in zip(answered, mine, theirs, strict=True)
                 if p.release_version == (1 if stage == "SHADOW" else 2)]
        assert len(pairs) > 0 and report.live_version == 1 and report.stage == stage

        def expect(label: str | None) -> tuple[object, ...]:
            agreeing = [(m, t) for _, m, t in pairs if label is None or t == label]
            reviewed = [(truth[pid], m, t) for pid, m, t in pairs if pid in truth
                        and (label is None or truth[pid] == label)]
            return (len(agreeing), share(sum(m == t for m, t in agreeing), len(agreeing)),
                    len(reviewed), share(sum(y == m for y, m, _ in reviewed), len(reviewed)),
                    share(sum(y == t for y, _, t in reviewed), len(reviewed)))

        def got(t: Tally) -> tuple[object, ...]:
            return (t.paired, t.agreement, t.reviewed, t.release_accuracy, t.live_accuracy)

        assert got(report.overall) == expect(None)
        assert [c.label for c in report.by_class] == list(task.classes)
        for c in report.by_class:
            assert got(c.tally) == expect(c.label)
        # The crippled release is clearly worse on what people reviewed.
        overall = report.overall
        assert overall.release_accuracy is not None and overall.live_accuracy is not None
        assert overall.release_accuracy < overall.live_accuracy

    run_with(settings, work)


def test_the_live_release_is_not_compared_with_itself(settings: Settings) -> None:
    async def work(services: Services) -> None:
        async with services.sessions() as session:
            with pytest.raises(BadRequestError, match="is the LIVE release"):
                await compare_release(session, TASK, 1, ("malignant", "benign"))

    run_with(settings, work)
