"""Release stages over the GraphQL API, real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from app.db.engine import make_engine, make_sessionmaker
from app.ml.training import TrainedRelease
from app.releases.store import store_release
from app.settings import Settings
from tests.support.documents import COMPARE, PROMOTE, RELEASE_FIELDS
from tests.support.inputs import example_inputs
from tests.support.server import Api, make_key

TASK = "breast_cancer"
ROLLBACK = ("mutation($task: String!) { rollback(task: $task, reason: \"alarms\") { "
            + RELEASE_FIELDS + " } }")
RELEASES = "query($task: String!) { releases(task: $task) { version stage trafficPercent } }"
PREDICT = ("mutation($input: JSON!, $entity: String) { predict(task: \"breast_cancer\", "
           "input: $input, entityKey: $entity) { id release } }")


def store_again(settings: Settings, trained: TrainedRelease) -> None:
    async def work() -> None:
        engine = make_engine(settings.resolved_database_url)
        try:
            await store_release(make_sessionmaker(engine), settings.artifacts_dir, trained, "t")
        finally:
            await engine.dispose()

    asyncio.run(work())


def data(body: dict[str, Any], field: str) -> Any:
    assert "errors" not in body, body
    return body["data"][field]


def test_promote_canary_compare_go_live_and_roll_back(
    admin: Api, predictor: Api, settings: Settings, trained: dict[str, TrainedRelease],
    example_tasks: dict[str, Any],
) -> None:
    store_again(settings, trained[TASK])
    canary = data(admin(PROMOTE, task=TASK, v=2, stage="CANARY", p=40.0, why="try it"),
                  "promoteRelease")
    assert (canary["stage"], canary["trafficPercent"]) == ("CANARY", 40.0)
    last = canary["stageHistory"][-1]
    assert (last["fromStage"], last["toStage"], last["reason"]) == ("CANDIDATE", "CANARY",
                                                                   "try it")
    assert last["actor"].endswith(":ops")  # the admin key's name
    # Predictions: each entity sticks to one release; the answer never carries the other's.
    answered: dict[str, int] = {}
    on_canary = 0
    for i, row in enumerate(example_inputs(example_tasks[TASK], 30, seed=2)):
        p = data(predictor(PREDICT, input=row, entity=f"user-{i % 10}"), "predict")
        assert answered.setdefault(f"user-{i % 10}", p["release"]) == p["release"]
        on_canary += p["release"] == 2
    assert set(answered.values()) == {1, 2}
    # LIVE scores the canary's answers after each response: wait until all are paired.
    deadline = time.monotonic() + 120
    while True:
        report = data(admin(COMPARE, task=TASK, v=2), "releaseComparison")
        if report["overall"]["paired"] == on_canary or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert report["overall"]["paired"] == on_canary
    # The same trained models: LIVE agrees with every canary answer.
    assert report["overall"]["agreement"] == 1.0 and report["overall"]["reviewed"] == 0
    assert report["stage"] == "CANARY" and report["liveVersion"] == 1
    assert [c["label"] for c in report["byClass"]] == ["malignant", "benign"]
    live = data(admin(PROMOTE, task=TASK, v=2, stage="LIVE", p=None, why="canary held"),
                "promoteRelease")
    assert live["stage"] == "LIVE" and live["trafficPercent"] == 100.0
    stages = {r["version"]: r["stage"] for r in data(admin(RELEASES, task=TASK), "releases")}
    assert stages == {1: "RETIRED", 2: "LIVE"}
    back = data(admin(ROLLBACK, task=TASK), "rollback")
    assert back["version"] == 1 and back["stage"] == "LIVE"
    assert back["stageHistory"][-1]["reason"] == "alarms"
    assert [(h["fromStage"], h["toStage"]) for h in back["stageHistory"]] == [
        (None, "LIVE"), ("LIVE", "RETIRED"), ("RETIRED", "LIVE")]


@pytest.mark.parametrize(
    ("variables", "code", "message"),
    [
        ({"v": 7, "stage": "SHADOW"}, "STAGE_CHANGE_INVALID", "has no release 7"),
        ({"v": 1, "stage": "RETIRED"}, "STAGE_CHANGE_INVALID", "keeps one LIVE release"),
        ({"v": 2, "stage": "CANARY", "p": 120.0}, "STAGE_CHANGE_INVALID", "got 120"),
        ({"v": 2, "stage": "SHADOW", "task": "nope"}, "UNKNOWN_TASK", "unknown task 'nope'"),
    ],
)
def test_refused_promotions_say_why(
    admin: Api, settings: Settings, trained: dict[str, TrainedRelease],
    variables: dict[str, Any], code: str, message: str,
) -> None:
    store_again(settings, trained[TASK])
    body = admin(PROMOTE, **{"task": TASK, "p": None, "why": "x", **variables})
    [error] = body["errors"]
    assert error["extensions"]["code"] == code and message in error["message"]


def test_rollback_without_an_earlier_live_release_is_refused(admin: Api) -> None:
    [error] = admin(ROLLBACK, task=TASK)["errors"]
    assert error["extensions"]["code"] == "STAGE_CHANGE_INVALID"
    assert "no earlier LIVE release" in error["message"]


def test_only_admins_change_stages_and_auditors_read_comparisons(
    http: httpx.Client, settings: Settings, predictor: Api, trained: dict[str, TrainedRelease],
) -> None:
    store_again(settings, trained[TASK])
    auditor = Api(http, make_key(settings, "auditor", "audit"))
    for api in (auditor, predictor):
        for query, variables in ((PROMOTE, {"task": TASK, "v": 2, "stage": "SHADOW",
                                            "why": "x"}), (ROLLBACK, {"task": TASK})):
            [error] = api(query, **variables)["errors"]
            assert error["extensions"]["code"] == "FORBIDDEN"
    report = data(auditor(COMPARE, task=TASK, v=2), "releaseComparison")
    assert report["overall"]["paired"] == 0 and report["overall"]["agreement"] is None
    [error] = predictor(COMPARE, task=TASK, v=2)["errors"]
    assert error["extensions"]["code"] == "FORBIDDEN"
