"""Serving with a CANARY and SHADOWs: sticky assignment, off-path scoring, nothing returned."""

from __future__ import annotations

from typing import Any

from sqlmodel import select

from app.db.tables import ShadowOutput
from app.ml.contract import to_matrix, validate_inputs
from app.ml.training import TrainedRelease
from app.predictions.path import predict, predict_batch
from app.predictions.services import Services
from app.releases.deployment import observed_pairs
from app.releases.shadows import ShadowBackfill
from app.releases.store import release_members
from app.settings import Settings
from tests.app.releases.conftest import TASK, add_release, labels_of, promote
from tests.support.inputs import example_inputs
from tests.support.services import run_with


async def shadow_outputs(services: Services) -> dict[tuple[str, int], ShadowOutput]:
    """(prediction id, release id) -> what that release would have answered."""
    async with services.sessions() as session:
        rows = (await session.exec(select(ShadowOutput))).all()
    return {(r.prediction_id, r.release_id): r for r in rows}


def test_shadows_observe_live_and_live_observes_the_canary() -> None:
    """One rule, for loaded ensembles (serving) and release rows (the backfill) alike."""
    assert observed_pairs("live", None, []) == []
    assert observed_pairs("live", None, ["s1", "s2"]) == [("s1", "live"), ("s2", "live")]
    assert observed_pairs("live", "canary", ["s1"]) == [("s1", "live"), ("live", "canary")]


def test_canary_assignment_is_sticky_per_key_and_near_its_share(
    settings: Settings, trained: dict[str, TrainedRelease]
) -> None:
    async def work(services: Services) -> None:
        await add_release(services, trained[TASK])
        await promote(services, 2, "CANARY", 30)
        rows = example_inputs(services.registry.task(TASK), 200, seed=3)
        keys = [f"customer-{i}" for i in range(len(rows))]
        first = await predict_batch(services, None, TASK, rows, keys)
        on_canary = {k for k, p in zip(keys, first, strict=True) if p.release_version == 2}
        assert 0.2 < len(on_canary) / len(keys) < 0.4
        # The same entity lands on the same release again, whatever its input.
        again = await predict_batch(services, None, TASK, rows[::-1], keys)
        assert {k for k, p in zip(keys, again, strict=True) if p.release_version == 2} \
            == on_canary
        for key, row in zip(keys[:8], rows[100:108], strict=True):
            single = await predict(services, None, TASK, row, entity_key=key)
            assert (single.release_version == 2) == (key in on_canary)
        # Without an entity key, the idempotency key decides.
        by_key = await predict(services, None, TASK, rows[0], idempotency_key=keys[0])
        assert (by_key.release_version == 2) == (keys[0] in on_canary)
        # Widening the canary keeps its entities on it and adds others.
        await promote(services, 2, "CANARY", 60)
        wider = await predict_batch(services, None, TASK, rows, keys)
        on_wider = {k for k, p in zip(keys, wider, strict=True) if p.release_version == 2}
        assert on_canary < on_wider and 0.5 < len(on_wider) / len(keys) < 0.7

    run_with(settings, work)


def test_live_scores_canary_answers_off_the_response_path(
    settings: Settings, trained: dict[str, TrainedRelease]
) -> None:
    async def work(services: Services) -> None:
        await add_release(services, trained[TASK])
        await promote(services, 2, "CANARY", 50)
        rows = example_inputs(services.registry.task(TASK), 60, seed=4)
        answered = await predict_batch(services, None, TASK, rows,
                                       [f"e{i}" for i in range(len(rows))])
        await services.shadows.drain()
        deployment = await services.registry.deployment(TASK)
        live_id = deployment.live.release_id
        canary_ids = {p.id for p in answered if p.release_version == 2}
        assert 0 < len(canary_ids) < len(answered)
        outputs = await shadow_outputs(services)
        # Exactly the canary's answers were scored by LIVE; LIVE's own answers by nobody.
        assert set(outputs) == {(pid, live_id) for pid in canary_ids}
        # LIVE (the same trained models) would have said what the canary said.
        for p in answered:
            if p.id in canary_ids:
                assert outputs[(p.id, live_id)].label == p.label
                assert abs(outputs[(p.id, live_id)].confidence - p.confidence) < 1e-9

    run_with(settings, work)


def test_shadow_scores_live_answers_and_is_never_returned(
    settings: Settings, trained: dict[str, TrainedRelease], crippled: TrainedRelease
) -> None:
    async def work(services: Services) -> None:
        shadow = await add_release(services, crippled)
        await promote(services, 2, "SHADOW")
        task = services.registry.task(TASK)
        raws = example_inputs(task, 40, seed=6)
        answered = await predict_batch(services, None, TASK, raws)
        single = await predict(services, None, TASK, raws[0], idempotency_key="k-1")
        await services.shadows.drain()
        assert {p.release_version for p in [*answered, single]} == {1}
        outputs = await shadow_outputs(services)
        assert set(outputs) == {(p.id, shadow.id) for p in [*answered, single]}
        # Independently: the shadow release loaded on its own, on the same inputs.
        expected = await labels_of(services, shadow, raws)
        assert [outputs[(p.id, shadow.id)].label for p in answered] == expected
        # The crippled shadow is not what answered: it disagrees where LIVE is sure.
        assert any(outputs[(p.id, shadow.id)].label != p.label for p in answered)

    run_with(settings, work)


def test_shadow_work_beyond_the_bound_is_dropped_and_counted(
    settings: Settings, trained: dict[str, TrainedRelease]
) -> None:
    async def work(services: Services) -> Any:
        await add_release(services, trained[TASK])
        await promote(services, 2, "SHADOW")
        services.shadows.max_in_flight = 0
        answered = await predict_batch(
            services, None, TASK, example_inputs(services.registry.task(TASK), 5))
        await services.shadows.drain()
        assert len(answered) == 5 and services.shadows.dropped == 5
        assert await shadow_outputs(services) == {}

    run_with(settings, work)


def test_a_shadow_that_cannot_load_does_not_stop_live(
    settings: Settings, trained: dict[str, TrainedRelease]
) -> None:
    async def work(services: Services) -> None:
        shadow = await add_release(services, trained[TASK])
        async with services.sessions() as session:
            [first, *_] = await release_members(session, shadow.id or 0)
        artifact = services.settings.artifacts_dir / first.artifact_path
        artifact.write_bytes(artifact.read_bytes()[:-1] + b"!")  # tampered: hash mismatch
        await promote(services, 2, "SHADOW")
        answered = await predict_batch(
            services, None, TASK, example_inputs(services.registry.task(TASK), 5))
        await services.shadows.drain()
        assert {p.release_version for p in answered} == {1}
        assert await shadow_outputs(services) == {}
        assert services.registry.readiness()[TASK] == "serving"
        # The backfill refuses the tampered artifact as well, and scores nothing.
        backfill = ShadowBackfill(services.settings.artifacts_dir, settle_seconds=0)
        for _ in range(2):
            assert await backfill.run(services.sessions, services.registry.tasks) == []
        assert await shadow_outputs(services) == {}

    run_with(settings, work)


def test_what_serving_left_unscored_is_backfilled_once(
    settings: Settings, trained: dict[str, TrainedRelease], crippled: TrainedRelease
) -> None:
    """A server that scored nothing off the path (killed, or overloaded: here its bound is 0)
    leaves the comparisons without pairs; the backfill scores what each observer missed,
    as the serving path would have, and nothing twice or from before the observer's stage."""
    async def work(services: Services) -> None:
        task = services.registry.task(TASK)
        services.shadows.max_in_flight = 0
        before = await predict_batch(services, None, TASK, example_inputs(task, 5, seed=8))
        shadow = await add_release(services, crippled)
        await promote(services, 2, "SHADOW")
        await add_release(services, trained[TASK])
        await promote(services, 3, "CANARY", 50)
        raws = example_inputs(task, 60, seed=9)
        answered = await predict_batch(services, None, TASK, raws,
                                       [f"e{i}" for i in range(len(raws))])
        await services.shadows.drain()
        assert await shadow_outputs(services) == {}
        live_id = (await services.registry.deployment(TASK)).live.release_id
        on_live = [p for p in answered if p.release_version == 1]
        on_canary = [p for p in answered if p.release_version == 3]
        assert on_live and on_canary

        # Without time to spare, a run scores one page (`limit`) per observer.
        paged = ShadowBackfill(services.settings.artifacts_dir, limit=10, settle_seconds=0,
                               budget_seconds=0)
        first = await paged.run(services.sessions, services.registry.tasks)
        assert sorted(b.scored for b in first) == [10, 10]
        # With it, pages until every observer is caught up: the next run finds nothing.
        backfill = ShadowBackfill(services.settings.artifacts_dir, limit=8, settle_seconds=0)
        runs = [first] + [await backfill.run(services.sessions, services.registry.tasks)
                          for _ in range(2)]
        outputs = await shadow_outputs(services)
        assert set(outputs) == ({(p.id, shadow.id) for p in on_live}
                                | {(p.id, live_id) for p in on_canary})
        assert not any(pid == p.id for p in before for pid, _ in outputs)
        assert all(b.scored <= 8 for b in runs[1]) and runs[2] == []
        assert len(runs[1]) > 2 * 2  # about 20 left per observer: several pages each
        assert sum(b.scored for run in runs for b in run) == len(outputs)
        # The same as the shadow loaded apart from serving; LIVE agrees with its own
        # models' canary (the same training) on every canary answer.
        expected = await labels_of(services, shadow, [raws[answered.index(p)] for p in on_live])
        assert [outputs[(p.id, shadow.id)].label for p in on_live] == expected
        for p in on_canary:
            assert abs(outputs[(p.id, live_id)].confidence - p.confidence) < 1e-9

        # A serving process writing an output the backfill already wrote keeps the first.
        services.shadows.max_in_flight = 8
        [p] = on_live[:1]
        deployment = await services.registry.deployment(TASK)
        services.shadows.submit(deployment.shadows[0], [p.id], to_matrix(
            task, validate_inputs(task, [raws[answered.index(p)]])))
        await services.shadows.drain()
        assert services.shadows.failed == 0 and len(await shadow_outputs(services)) == len(outputs)

    run_with(settings, work)
