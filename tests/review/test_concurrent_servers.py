"""Tens of reviewers on two server processes sharing one database: every routed item is
reviewed exactly once, and no two reviewers ever hold it at the same time."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from app.ml.task import TaskSpec
from app.settings import Settings
from tests.support.documents import BATCH, CLAIM, SUBMIT
from tests.support.inputs import example_inputs
from tests.support.processes import servers
from tests.support.server import Api, make_key

REVIEWERS = 24


@pytest.fixture
def two_servers(settings: Settings, tmp_path: Path) -> Iterator[list[str]]:
    env = {**os.environ, "ARBITER_DATA_DIR": str(settings.data_dir),
           "ARBITER_DATABASE_URL": settings.resolved_database_url}
    with servers(env, 2) as urls:
        yield urls


def test_reviewers_on_two_servers_never_collide(
        two_servers: list[str], settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    with httpx.Client(base_url=two_servers[0], timeout=120) as client:
        predictor = Api(client, make_key(settings, "predictor", "app"))
        rows = predictor(BATCH, i=example_inputs(example_tasks["loan_default"], 400, seed=8))
    routed = {p["id"] for p in rows["data"]["predictBatch"] if p["route"] == "REVIEW"}
    assert len(routed) > REVIEWERS
    keys = [make_key(settings, "reviewer", f"r{i}") for i in range(REVIEWERS)]

    def work(i: int) -> list[str]:
        done: list[str] = []
        with httpx.Client(base_url=two_servers[i % 2], timeout=120) as client:
            me = Api(client, keys[i])
            while (lease := me(CLAIM)["data"]["claimReview"]) is not None:
                reviewed = me(SUBMIT, t=lease["leaseToken"], l="late")
                assert reviewed["data"]["submitReview"]["status"] == "RESOLVED", reviewed
                done.append(lease["item"]["prediction"]["id"])
        return done

    with ThreadPoolExecutor(REVIEWERS) as pool:
        results = list(pool.map(work, range(REVIEWERS)))
    reviewed = Counter(p for done in results for p in done)
    assert set(reviewed) == routed
    assert max(reviewed.values()) == 1, "an item was reviewed twice"
    assert sum(1 for done in results if done) > 1, "the work was shared"
    with httpx.Client(base_url=two_servers[1], timeout=120) as client:
        admin = Api(client, make_key(settings, "admin", "ops"))
        left = admin("{ reviewItems(status: PENDING) { totalCount } }")
        assert left["data"]["reviewItems"]["totalCount"] == 0
