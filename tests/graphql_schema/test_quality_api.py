"""Outcomes and live AUTO quality over real HTTP, on SQLite and PostgreSQL: outcomes named by
prediction id or entity key are stored (and become training labels of source `outcome`),
bad ones are refused whole, a repeat changes nothing; autoQuality counts them; when they show
AUTO error above `max_auto_error`, the periodic check alarms once, announces
AUTO_ERROR_BOUND_EXCEEDED and holds the release to review."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from app.audit.log import Kind
from app.cli.context import run
from app.db.tables import AuditEvent, TrainingLabel
from app.events.bus import LocalBus
from app.events.topics import Message
from app.ml.task import TaskSpec
from app.quality import alarms
from app.settings import Settings
from app.training.jobs import JobContext
from tests.support.documents import RETRAIN, wait_for_job
from tests.support.inputs import example_inputs
from tests.support.server import Api, LiveServer, make_key

TASK = "loan_default"
POLICY = {"max_auto_error": 0.05, "audit_rate": 0.0}
BATCH = """mutation($i: [JSON!]!, $e: [String]) {
  predictBatch(task: "loan_default", inputs: $i, entityKeys: $e) {
    id label route reasons { code detail } } }"""
RECORD = """mutation($o: [OutcomeInput!]!) { recordOutcomes(task: "loan_default", outcomes: $o) {
  recorded unchanged } }"""
LEARNED = """{ release(task: "loan_default", version: 2) {
  learnedFrom(first: 100) {
    totalCount edges { node { label split source prediction { id } } } } } }"""
QUALITY = """query { autoQuality(task: "loan_default") {
  label n errors estimate lowerBound upperBound confidence maxAutoError exceeded } }"""


class Recorded(LocalBus):
    """An in-process bus that keeps what was published."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[Message] = []

    async def publish_many(self, messages: Any) -> None:
        self.messages += list(messages)


@pytest.fixture
def people(settings: Settings) -> Iterator[tuple[Api, Api, Api]]:
    """(predictor, admin, reviewer) on a server whose tasks bound AUTO error at 5 %."""
    # The server's own periodic check (every sweep) must not alarm before the test's does.
    quiet = settings.model_copy(update={"lease_sweep_seconds": 3600.0})
    with LiveServer(quiet, review=POLICY) as server, \
            httpx.Client(base_url=server.url, timeout=120) as client:
        yield (Api(client, make_key(settings, "predictor", "app")),
               Api(client, make_key(settings, "admin", "ops")),
               Api(client, make_key(settings, "reviewer", "rita")))


def data(body: dict[str, Any]) -> dict[str, Any]:
    assert "errors" not in body, body["errors"]
    result: dict[str, Any] = body["data"]
    return result


def error(body: dict[str, Any]) -> str:
    assert body.get("data") is None or not any(body["data"].values()), body
    return str(body["errors"][0]["message"])


def wrong(task: TaskSpec, label: str) -> str:
    return next(c for c in task.classes if c != label)


def quality(api: Api) -> dict[str | None, dict[str, Any]]:
    return {r["label"]: r for r in data(api(QUALITY))["autoQuality"]}


def test_outcomes_feed_live_quality_and_a_broken_bound_holds_the_release(
        people: tuple[Api, Api, Api], settings: Settings,
        example_tasks: dict[str, TaskSpec]) -> None:
    predictor, admin, reviewer = people
    task = example_tasks[TASK]
    made = data(predictor(BATCH, i=example_inputs(task, 120), e=[f"loan-{i}" for i in range(120)]))
    predictions = made["predictBatch"]
    auto = [(i, p) for i, p in enumerate(predictions) if p["route"] == "AUTO"]
    assert len(auto) >= 40

    # Bad outcomes: each named, nothing stored (the good first one neither).
    first_id = auto[0][1]["id"]
    message = error(predictor(RECORD, o=[
        {"predictionId": first_id, "label": wrong(task, auto[0][1]["label"])},
        {"predictionId": "no-such-prediction", "label": "late"},
        {"entityKey": f"loan-{auto[1][0]}", "label": "bogus"},
        {"entityKey": "nobody", "label": "late"},
        {"label": "late"}]))
    for place in ("outcome 2", "outcome 3", "outcome 4", "outcome 5"):
        assert place in message
    assert "bogus" in message and "nothing was stored" in message
    assert quality(admin)[None]["n"] == 0

    # Another predictor's key cannot name these predictions, by id or by entity key.
    stranger = Api(predictor.client, make_key(settings, "predictor", "stranger"))
    refused = error(stranger(RECORD, o=[
        {"predictionId": first_id, "label": wrong(task, auto[0][1]["label"])},
        {"entityKey": f"loan-{auto[1][0]}", "label": "late"}]))
    assert f"outcome 1: no prediction {first_id} of {TASK}" in refused
    assert f"outcome 2: no prediction of {TASK} for entity key 'loan-{auto[1][0]}'" in refused
    assert quality(admin)[None]["n"] == 0

    # Every AUTO prediction was wrong: half named by id, half by entity key.
    outcomes = [({"predictionId": p["id"]} if n % 2 else {"entityKey": f"loan-{i}"})
                | {"label": wrong(task, p["label"]), "observedAt": "2099-01-01T00:00:00+00:00"}
                for n, (i, p) in enumerate(auto)]
    assert "in the future" in error(predictor(RECORD, o=outcomes[:1]))
    for o in outcomes:
        del o["observedAt"]
    assert data(predictor(RECORD, o=outcomes))["recordOutcomes"] == {
        "recorded": len(auto), "unchanged": 0}
    assert data(predictor(RECORD, o=outcomes))["recordOutcomes"] == {
        "recorded": 0, "unchanged": len(auto)}
    conflict = {"predictionId": first_id, "label": auto[0][1]["label"]}
    assert "already has the outcome" in error(predictor(RECORD, o=[conflict]))
    assert "FORBIDDEN" in str(reviewer(RECORD, o=outcomes[:1]))
    assert "FORBIDDEN" in str(predictor(QUALITY))

    rows = quality(admin)
    assert rows[None]["n"] == rows[None]["errors"] == len(auto)
    assert rows[None]["exceeded"] and rows[None]["lowerBound"] > 0.05
    assert sum(rows[c]["n"] for c in task.classes) == len(auto)
    assert rows[None]["maxAutoError"] == 0.05

    async def learned(sessions: Any) -> set[str]:
        async with sessions() as session:
            found = await session.exec(select(TrainingLabel.source).where(
                col(TrainingLabel.prediction_id).in_([p["id"] for _, p in auto])))
            return set(found.all())
    assert run(settings, learned) == {"outcome"}

    # The periodic check alarms once, announces it, and holds the release to review.
    bus = Recorded()
    tasks = {TASK: task.model_copy(update={"review": task.review.model_copy(update=POLICY)})}

    async def check(sessions: Any) -> list[alarms.Alarm]:
        return await alarms.check_all(JobContext(sessions, tasks, settings.artifacts_dir, bus))

    async def two_checks(sessions: Any) -> list[alarms.Alarm]:  # two workers at once
        both = await asyncio.gather(check(sessions), check(sessions))
        return [alarm for found in both for alarm in found]
    [alarm] = run(settings, two_checks)
    assert alarm.action == "review_all" and "above max_auto_error 0.05" in alarm.reason
    [(topic, event)] = bus.messages
    assert topic == f"releases.{TASK}" and event["kind"] == "AUTO_ERROR_BOUND_EXCEEDED"
    assert run(settings, check) == []  # once

    async def audited(sessions: Any) -> int:
        async with sessions() as session:
            found = await session.exec(select(AuditEvent.id).where(
                AuditEvent.kind == Kind.BOUND_EXCEEDED))
            return len(found.all())
    assert run(settings, audited) == 1

    after = data(predictor(BATCH, i=example_inputs(task, 20, seed=9), e=None))["predictBatch"]
    assert {p["route"] for p in after} == {"REVIEW"}
    assert all("BOUND_EXCEEDED" in {r["code"] for r in p["reasons"]} for p in after)

    # Retraining learns the outcomes; lineage names their source; the gate shows its test.
    job = wait_for_job(admin, data(admin(RETRAIN, r="outcomes came in"))["retrain"]["id"])
    assert job["status"] == "SUCCEEDED", job
    gate = job["release"]["gate"]
    assert gate["decision"] in ("PASSED", "REJECTED", "INSUFFICIENT_EVIDENCE")
    assert {"rows", "estimate", "interval", "pValue", "method"} <= set(gate["test"])
    learned = data(admin(LEARNED))["release"]["learnedFrom"]
    assert learned["totalCount"] == len(auto)
    by_id = {p["id"]: p for _, p in auto}
    for edge in learned["edges"]:
        node = edge["node"]
        assert node["source"] == "outcome"
        assert node["label"] == wrong(task, by_id[node["prediction"]["id"]]["label"])
