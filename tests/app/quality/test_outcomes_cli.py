"""`arbiter outcomes import` as a user runs it, on SQLite and PostgreSQL: a CSV or JSON Lines
file of outcomes is stored whole, or refused whole with every bad line named; importing it
again changes nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from sqlmodel import col, func, select

from app.db.monitoring import Outcome
from app.db.tables import Prediction
from app.main import build_services
from app.ml.task import TaskSpec
from app.predictions.path import predict_batch
from app.settings import Settings
from tests.support.inputs import example_inputs
from tests.support.processes import arbiter

TASK = "loan_default"


def _predict(settings: Settings, task: TaskSpec, n: int) -> list[Prediction]:
    async def work() -> list[Prediction]:
        services, engine = build_services(settings)
        try:
            await services.registry.load_all()
            return await predict_batch(services, None, TASK, example_inputs(task, n),
                                       entity_keys=[f"loan-{i}" for i in range(n)], actor="t")
        finally:
            services.close()
            await engine.dispose()
    return asyncio.run(work())


def _outcomes(settings: Settings) -> int:
    async def work() -> Any:
        services, engine = build_services(settings)
        try:
            async with services.sessions() as session:
                return (await session.exec(select(func.count(col(Outcome.id))))).one()
        finally:
            services.close()
            await engine.dispose()
    return int(asyncio.run(work()))


def test_import_stores_all_or_nothing_and_again_nothing(
        env: dict[str, str], settings: Settings, example_tasks: dict[str, TaskSpec],
        tmp_path: Path) -> None:
    task = example_tasks[TASK]
    made = _predict(settings, task, 6)
    bad = tmp_path / "bad.csv"
    bad.write_text("predictionId,entityKey,label,observedAt\n"
                   f"{made[0].id},,late,2026-01-01T00:00:00\n"
                   ",loan-1,nonsense,\n"
                   "nosuch,,late,\n"
                   f"{made[2].id},,late,yesterday\n")
    refused = arbiter(env, "outcomes", "import", TASK, str(bad))
    assert refused.returncode == 2
    said = " ".join(refused.stderr.split())
    assert "4 problem(s) in the outcomes, nothing was stored" in said
    assert "line 2: observedAt 2026-01-01T00:00:00+00:00 is before prediction" in said
    assert "line 3: label 'nonsense' is not a class" in said
    assert "line 4: no prediction nosuch" in said
    assert "line 5: observedAt 'yesterday' is not an ISO 8601 time" in said
    assert _outcomes(settings) == 0

    good = tmp_path / "outcomes.jsonl"
    good.write_text("\n".join(json.dumps(o) for o in [
        {"predictionId": made[0].id, "label": "late"},
        {"entityKey": "loan-1", "label": "repaid", "observedAt": "2099-01-01T00:00:00Z"}
        | {"observedAt": None},
        {"entity_key": "loan-2", "label": "default"}]) + "\n\n")
    first = arbiter(env, "outcomes", "import", TASK, str(good))
    assert first.returncode == 0, first.stderr
    assert "3 outcomes recorded, 0 already recorded" in first.stdout
    again = arbiter(env, "outcomes", "import", TASK, str(good))
    assert "0 outcomes recorded, 3 already recorded" in again.stdout
    assert _outcomes(settings) == 3

    garbled = tmp_path / "garbled.jsonl"
    garbled.write_text('{"entityKey": "loan-3", "label": "late"}\nnot json\n[1]\n'
                       '{"entityKey": "loan-4", "label": "late", "colour": "red"}\n')
    refused = arbiter(env, "outcomes", "import", TASK, str(garbled))
    assert refused.returncode == 2
    said = " ".join(refused.stderr.split())
    assert "line 2: not JSON" in said and "line 3: a JSON object is expected" in said
    assert "line 4: unknown field(s) colour" in said
    assert _outcomes(settings) == 3
