"""The periodic live-quality check in a real worker: the embedded one of a server (SQLite,
PostgreSQL) and an `arbiter worker` process on PostgreSQL and Redis. Outcomes show every AUTO
prediction of loan_default wrong; the check publishes AUTO_ERROR_BOUND_EXCEEDED on the
subscription, and the release is held: new predictions go to review (BOUND_EXCEEDED)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.ml.task import load_tasks
from app.settings import EXAMPLE_TASKS_DIR, Settings
from tests.support import subscriber
from tests.support.documents import RELEASE_EVENTS, data
from tests.support.inputs import example_inputs
from tests.support.processes import start_worker
from tests.support.server import Api, LiveServer, make_key

BATCH = """mutation($i: [JSON!]!) { predictBatch(task: "loan_default", inputs: $i) {
  id label route reasons { code } } }"""
RECORD = """mutation($o: [OutcomeInput!]!) { recordOutcomes(task: "loan_default", outcomes: $o) {
  recorded } }"""
CLASSES = ("repaid", "late", "default")


def bounded_tasks(folder: Path) -> Path:
    """The example tasks, loan_default bounding AUTO error at 5 % with no audit sample."""
    shutil.copytree(EXAMPLE_TASKS_DIR, folder)
    toml = folder / "loan_default.toml"
    text = toml.read_text()
    assert "audit_rate = 0.02" in text
    toml.write_text(text.replace("audit_rate = 0.02", "audit_rate = 0.0\nmax_auto_error = 0.05"))
    return folder


@pytest.fixture(params=["embedded", "redis"])
def deployed(request: pytest.FixtureRequest, settings: Settings, tmp_path: Path
             ) -> Iterator[Settings]:
    """Settings whose periodic jobs run every half second, in the server's own worker or
    (redis) in an `arbiter worker` process."""
    tasks = bounded_tasks(tmp_path / "tasks")
    if request.param == "embedded":
        yield settings.model_copy(update={"tasks_dir": tasks, "lease_sweep_seconds": 0.5})
        return
    if settings.resolved_database_url.startswith("sqlite"):
        pytest.skip("a worker process shares PostgreSQL, not a SQLite file")
    scaled = request.getfixturevalue("scaled").model_copy(update={"tasks_dir": tasks})
    worker = start_worker(scaled, {"ARBITER_TASKS_DIR": str(tasks)})
    try:
        yield scaled
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_the_periodic_check_alarms_and_holds_the_release(deployed: Settings) -> None:
    settings = deployed
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=120) as c:
        admin_key = make_key(settings, "admin", "ops")
        predictor = Api(c, make_key(settings, "predictor", "app"))
        events: list[dict[str, Any]] = []
        task = load_tasks(settings.tasks_dir)["loan_default"]

        async def watch() -> None:
            async with subscriber.client(server.url, admin_key) as session:
                follow = asyncio.create_task(subscriber.follow(session, RELEASE_EVENTS, events))
                await asyncio.sleep(0.5)
                made = await asyncio.to_thread(
                    lambda: data(predictor(BATCH, i=example_inputs(task, 80)))["predictBatch"])
                outcomes = [{"predictionId": p["id"],
                             "label": next(k for k in CLASSES if k != p["label"])}
                            for p in made if p["route"] == "AUTO"]
                assert len(outcomes) >= 30
                await asyncio.to_thread(lambda: data(predictor(RECORD, o=outcomes)))
                await subscriber.until(
                    lambda: any(e["releaseEvents"]["kind"] == "AUTO_ERROR_BOUND_EXCEEDED"
                                for e in events), "an AUTO_ERROR_BOUND_EXCEEDED event")
                follow.cancel()

        asyncio.run(watch())
        [alarm] = [e["releaseEvents"] for e in events
                   if e["releaseEvents"]["kind"] == "AUTO_ERROR_BOUND_EXCEEDED"]
        assert alarm["version"] == 1 and alarm["actor"] == "system:quality"
        assert alarm["status"] == "review_all" and "max_auto_error 0.05" in alarm["reason"]
        after = data(predictor(BATCH, i=example_inputs(task, 10, seed=3)))["predictBatch"]
        assert {p["route"] for p in after} == {"REVIEW"}
        assert all("BOUND_EXCEEDED" in {r["code"] for r in p["reasons"]} for p in after)
        if settings.redis_url is None:  # the embedded worker's gauges, on this /metrics
            exposed = c.get("/metrics").text
            assert ('arbiter_auto_error_bound_exceeded{release="1",task="loan_default"} 1.0'
                    in exposed)
