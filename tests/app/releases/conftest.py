"""Helpers for release-stage tests: services on a real database, extra releases, inputs
with their true labels."""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import select

from app.db.tables import Release, StageChange, TrainingLabel
from app.ml.contract import to_matrix, validate_inputs
from app.ml.data import load_frame
from app.ml.task import TaskSpec
from app.ml.training import TrainedRelease, fit_release
from app.predictions.services import Services
from app.releases import stages
from app.releases.registry import build_ensemble
from app.releases.store import release_members, store_release
from tests.support.inputs import example_inputs

TASK = "breast_cancer"


@pytest.fixture(scope="session")
def crippled(example_tasks: dict[str, TaskSpec]) -> TrainedRelease:
    """breast_cancer with members too constrained to learn: a clearly worse release
    (it says the majority class for nearly everything)."""
    task = example_tasks[TASK]
    weak = {"logistic_regression": {"C": 1e-6},
            "hist_gradient_boosting": {"max_iter": 1, "learning_rate": 0.001}}
    members = [m.model_copy(update={"params": weak[m.algorithm]}) for m in task.members]
    return fit_release(task.model_copy(update={"members": members}))


async def add_release(services: Services, trained: TrainedRelease) -> Release:
    """Store another release of the task (CANDIDATE: the task already has a LIVE one)."""
    return await store_release(services.sessions, services.settings.artifacts_dir, trained,
                               "tests")


async def stages_of(services: Services, task: str = TASK) -> dict[int, str]:
    """version -> stage of every release of the task."""
    async with services.sessions() as session:
        rows = (await session.exec(select(Release).where(Release.task == task))).all()
    return {r.version: r.stage for r in rows}


async def change_count(services: Services) -> int:
    async with services.sessions() as session:
        return len((await session.exec(select(StageChange))).all())


def labelled_inputs(task: TaskSpec, n: int, seed: int = 5) -> list[tuple[dict[str, Any], str]]:
    """Real rows of the task's data as JSON inputs, each with its true class."""
    labels = load_frame(task).sample(n, random_state=seed)[task.data.target].tolist()
    return list(zip(example_inputs(task, n, seed), labels, strict=True))


async def promote(services: Services, version: int, stage: str,
                  percent: float | None = None, reason: str = "test") -> list[StageChange]:
    async with services.sessions() as session, session.begin():
        return await stages.promote(session, TASK, version, stage, percent, "tester", reason)


async def settle(services: Services, labels: dict[str, str]) -> None:
    """Labels people settled, by prediction id (what a resolved review item leaves behind)."""
    async with services.sessions() as session, session.begin():
        session.add_all([TrainingLabel(prediction_id=pid, task=TASK, label=label,
                                       source="review") for pid, label in labels.items()])


async def labels_of(services: Services, release: Release, raws: list[dict[str, Any]]) -> list[str]:
    """What ``release`` says for each input, computed apart from the serving path."""
    task = services.registry.task(TASK)
    async with services.sessions() as session:
        members = await release_members(session, release.id or 0)
    ensemble = build_ensemble(task, release, members, services.settings.artifacts_dir)
    proba = ensemble.probabilities(to_matrix(task, validate_inputs(task, raws, batch=True)))
    return [task.classes[int(q.argmax())] for q in proba]
