"""The periodic drift check in the embedded Dramatiq worker of a real server: predictions on
shifted loans lead to a stored report (``latestDriftReport``), the drift gauges, a
``DRIFT_DETECTED`` release event on the subscription, and a retraining job when the task
says ``retrain_on_drift`` (none when it does not)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from app.examples.loan import generate
from app.ml.task import TaskSpec
from app.ml.training import TrainedRelease
from app.settings import EXAMPLE_TASKS_DIR, Settings
from tests.support import subscriber
from tests.support.documents import RELEASE_EVENTS, data, wait_for_job
from tests.support.inputs import frame_inputs
from tests.support.loans import SEED, SHIFTED
from tests.support.releases import store_with_snapshots
from tests.support.server import Api, LiveServer, make_key

ROWS = 300
LATEST = """{ latestDriftReport(task: "loan_default") { drifted verdict release window
  driftedFeatures share computedAt } }"""
JOBS = """{ trainingJobs(task: "loan_default") { totalCount edges { node {
  id trigger reason requestedBy } } } }"""
BATCH = """mutation($i: [JSON!]!) { predictBatch(task: "loan_default", inputs: $i) { id } }"""


def drift_tasks(folder: Path, retrain: bool) -> Path:
    """The example tasks, loan_default checked every 3 s over the last hour, drifted when a
    quarter of its inputs drift."""
    folder.mkdir()
    for path in EXAMPLE_TASKS_DIR.glob("*.toml"):
        text = path.read_text()
        if path.stem == "loan_default":
            text += (f'\n[drift]\nwindow = "1h"\nshare = 0.25\ncheck_every_minutes = 0.05\n'
                     f"retrain_on_drift = {str(retrain).lower()}\n")
        (folder / path.name).write_text(text)
    return folder


def gauge(name: str, **labels: str) -> float | None:
    value = REGISTRY.get_sample_value(name, labels)
    return None if value is None else float(value)


@pytest.mark.parametrize("retrain", [True, False], ids=["retrain_on_drift", "report_only"])
def test_the_periodic_check_stores_announces_and_may_retrain(
        database_url: str, tmp_path: Path, trained: dict[str, TrainedRelease],
        example_tasks: dict[str, TaskSpec], retrain: bool) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url,
                        release_refresh_seconds=0.0, lease_sweep_seconds=0.5,
                        tasks_dir=drift_tasks(tmp_path / "tasks", retrain))
    settings.data_dir.mkdir(parents=True)
    asyncio.run(store_with_snapshots(settings, trained))
    inputs = frame_inputs(example_tasks["loan_default"],
                          generate(ROWS, SEED, shift=1.0, long_terms=0.5))

    with LiveServer(settings) as server, \
            httpx.Client(base_url=server.url, timeout=300) as c:
        admin_key = make_key(settings, "admin", "ops")
        admin = Api(c, admin_key)
        predictor = Api(c, make_key(settings, "predictor", "app"))
        events: list[dict[str, Any]] = []

        async def watch() -> None:
            async with subscriber.client(server.url, admin_key) as session:
                follow = asyncio.create_task(
                    subscriber.follow(session, RELEASE_EVENTS, events))
                await asyncio.sleep(0.5)  # subscribed before the predictions
                await asyncio.to_thread(lambda: data(predictor(BATCH, i=inputs)))
                await subscriber.until(
                    lambda: any(e["releaseEvents"]["kind"] == "DRIFT_DETECTED"
                                for e in events), "a DRIFT_DETECTED event")
                follow.cancel()

        asyncio.run(watch())
        drift_event = next(e["releaseEvents"] for e in events
                           if e["releaseEvents"]["kind"] == "DRIFT_DETECTED")
        assert drift_event["version"] == 1 and drift_event["actor"] == "system:drift"
        assert drift_event["status"] == "DRIFTED"
        for feature in SHIFTED:
            assert feature in drift_event["reason"]

        latest = data(admin(LATEST))["latestDriftReport"]
        assert latest["drifted"] is True and latest["verdict"] == "DRIFTED"
        assert set(latest["driftedFeatures"]) == SHIFTED and latest["window"] == "1h"

        # the gauges of the embedded worker, scraped from /metrics over HTTP
        exposed = c.get("/metrics").text
        assert 'arbiter_drift_detected{task="loan_default"} 1.0' in exposed
        assert 'arbiter_drift_score{feature="income",task="loan_default"}' in exposed
        assert gauge("arbiter_drift_detected", task="loan_default") == 1.0
        for f in example_tasks["loan_default"].features:
            score = gauge("arbiter_drift_score", task="loan_default", feature=f.name)
            assert score is not None
            # ks: 1 - p-value, drift above 0.95 (p < 0.05)
            assert (score > 0.95) == (f.name in SHIFTED), (f.name, score)
        assert gauge("arbiter_prediction_drift_score", task="loan_default") is not None

        jobs = data(admin(JOBS))["trainingJobs"]
        if not retrain:
            assert jobs["totalCount"] == 0 and drift_event["jobId"] is None
            return
        time.sleep(2)  # more checks run meanwhile: drift asks once per window
        jobs = data(admin(JOBS))["trainingJobs"]
        assert jobs["totalCount"] == 1, jobs
        job = jobs["edges"][0]["node"]
        assert job["trigger"] == "drift" and job["requestedBy"] == "system:drift"
        assert drift_event["jobId"] == job["id"]
        assert "drift in " in job["reason"] and "income" in job["reason"]
        assert wait_for_job(admin, job["id"])["status"] == "SUCCEEDED"
