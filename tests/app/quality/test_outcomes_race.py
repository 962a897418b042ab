"""Two writers of one prediction's outcome at once (PostgreSQL, where they really overlap):
the one that loses the race reads again and answers "unchanged", not INTERNAL_ERROR."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from app.db.engine import make_engine, make_sessionmaker
from app.main import build_services
from app.ml.task import TaskSpec
from app.predictions.path import predict_batch
from app.quality.outcomes import OutcomeInput, OutcomesRecorded, record_outcomes
from app.settings import Settings
from tests.support.inputs import example_inputs

TASK = "loan_default"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SQLite: one writer
def test_an_outcome_stored_meanwhile_makes_ours_unchanged(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    async def scenario() -> OutcomesRecorded:
        services, engine = build_services(settings)
        try:
            await services.registry.load_all()
            [made] = await predict_batch(services, None, TASK,
                                         example_inputs(example_tasks[TASK], 1), actor="t")
        finally:
            services.close()
            await engine.dispose()
        dsn = settings.resolved_database_url.replace("postgresql+asyncpg://", "postgresql://")
        other, watcher = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
        engine = make_engine(settings.resolved_database_url)
        try:
            racer = other.transaction()
            await racer.start()  # another call's insert, not yet committed
            await other.execute(
                "INSERT INTO outcomes (prediction_id, task, release_id, label, observed_at, "
                "recorded_at, recorded_by) VALUES ($1, $2, $3, $4, now(), now(), 'other')",
                made.id, TASK, made.release_id, made.label)
            ours = asyncio.create_task(record_outcomes(
                make_sessionmaker(engine), example_tasks[TASK],
                [OutcomeInput("outcome 1", made.label, made.id)], "ours", 100))
            while not await watcher.fetchval(  # ours waits on the unique index
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"):
                assert not ours.done(), ours.result()
                await asyncio.sleep(0.05)
            await racer.commit()
            return await ours
        finally:
            await other.close()
            await watcher.close()
            await engine.dispose()

    assert asyncio.run(scenario()) == OutcomesRecorded(recorded=0, unchanged=1)
