"""Scaled out: the server relays its outbox to Redis and `arbiter worker` processes run the
jobs; a worker killed with SIGKILL loses nothing and duplicates nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta

import httpx

from app.db.engine import make_engine, make_sessionmaker
from app.ml.task import TaskSpec
from app.ml.training import TrainedRelease
from app.releases.store import store_release
from app.settings import Settings
from tests.support.documents import BATCH, CLAIM, COMPARE, ITEM, PROMOTE, SUBMIT
from tests.support.inputs import example_inputs
from tests.support.processes import ARBITER, start_worker
from tests.support.server import Api, LiveServer, People, make_key


def wait_pending(people: People, item_id: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while people.admin(ITEM, id=item_id)["data"]["reviewItem"]["status"] != "PENDING":
        assert time.monotonic() < deadline, f"item {item_id} never returned to the queue"
        time.sleep(0.25)


def test_jobs_run_in_a_worker_process_and_survive_its_death(
        scaled: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    worker = start_worker(scaled)
    try:
        with LiveServer(scaled, {"lease_seconds": 1.0}) as server, \
                httpx.Client(base_url=server.url, timeout=60) as client:
            people = People(client, scaled)
            rows = people.predictor(BATCH, i=example_inputs(example_tasks["loan_default"], 60))
            assert any(p["route"] == "REVIEW" for p in rows["data"]["predictBatch"])
            first = people.reviewer(CLAIM)["data"]["claimReview"]
            wait_pending(people, first["item"]["id"])  # expired by the worker process

            second = people.reviewer(CLAIM)["data"]["claimReview"]
            worker.send_signal(signal.SIGKILL)  # while its expiry job is pending
            worker.wait(timeout=30)
            worker = start_worker(scaled)
            wait_pending(people, second["item"]["id"])

            # The last lease is long: claim and submit need not fit in one second.
            routed = people.admin('mutation { setReleaseRouting(task: "loan_default", '
                                  'version: 1, policy: {lease_seconds: 120}) { version } }')
            assert routed["data"]["setReleaseRouting"]["version"] == 1, routed
            third = people.reviewer(CLAIM)["data"]["claimReview"]
            expires = datetime.fromisoformat(third["expiresAt"])
            assert expires - datetime.now(UTC) > timedelta(seconds=60), third
            done = people.reviewer(SUBMIT, t=third["leaseToken"], l="late")
            assert done["data"]["submitReview"]["status"] == "RESOLVED"
            counts = people.admin("{ reviewItems(status: RESOLVED) { totalCount } }")
            assert counts["data"]["reviewItems"]["totalCount"] == 1
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_a_worker_scores_what_the_server_left_unscored_for_a_shadow(
        scaled: Settings, trained: dict[str, TrainedRelease],
        example_tasks: dict[str, TaskSpec]) -> None:
    """The server scores nothing off the path (``shadow_max_in_flight=0``, as if it were
    killed with that work in flight); the worker's periodic backfill fills the SHADOW's
    comparison with LIVE, read through ``releaseComparison``."""
    async def second_release() -> None:
        engine = make_engine(scaled.resolved_database_url)
        try:
            await store_release(make_sessionmaker(engine), scaled.artifacts_dir,
                                trained["breast_cancer"], "tests")
        finally:
            await engine.dispose()

    asyncio.run(second_release())
    worker = start_worker(scaled, {"ARBITER_SHADOW_SETTLE_SECONDS": "0"})
    try:
        with LiveServer(scaled.model_copy(update={"shadow_max_in_flight": 0})) as server, \
                httpx.Client(base_url=server.url, timeout=60) as client:
            admin = Api(client, make_key(scaled, "admin", "ops"))
            predictor = Api(client, make_key(scaled, "predictor", "app"))
            promoted = admin(PROMOTE, task="breast_cancer", v=2, stage="SHADOW", p=None,
                             why="compare before going live")
            assert promoted["data"]["promoteRelease"]["stage"] == "SHADOW"
            inputs = example_inputs(example_tasks["breast_cancer"], 40)
            batch = predictor('mutation($i: [JSON!]!) { predictBatch(task: "breast_cancer", '
                              'inputs: $i) { id } }', i=inputs)
            assert len(batch["data"]["predictBatch"]) == 40
            assert server.services.shadows.dropped == 40

            deadline = time.monotonic() + 60
            while True:
                compared = admin(COMPARE, task="breast_cancer", v=2)
                overall = compared["data"]["releaseComparison"]["overall"]
                if overall["paired"] == 40:
                    break
                assert time.monotonic() < deadline, f"the worker scored {overall['paired']}"
                time.sleep(0.5)
            assert overall["agreed"] == 40  # the same trained models as LIVE
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_worker_refuses_to_start_without_redis(settings: Settings) -> None:
    env = {**os.environ, "ARBITER_DATA_DIR": str(settings.data_dir),
           "ARBITER_DATABASE_URL": settings.resolved_database_url}
    env.pop("ARBITER_REDIS_URL", None)
    result = subprocess.run([ARBITER, "worker"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "needs ARBITER_REDIS_URL" in result.stderr
