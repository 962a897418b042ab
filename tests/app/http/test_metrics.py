"""/metrics over real HTTP, parsed with prometheus-client's own parser: exact counts after
known predictions, reviews and lease expiries; queue gauges from the database; and one
coherent view over the processes of `arbiter serve --workers 2`."""

from __future__ import annotations

import glob
import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from app.ml.task import TaskSpec
from app.settings import Settings
from tests.support.documents import BATCH, CLAIM, ITEM, SUBMIT
from tests.support.inputs import example_inputs
from tests.support.processes import ARBITER, wait_ready
from tests.support.redis_server import REDIS_URL, require_redis
from tests.support.server import Api, LiveServer, free_port, make_key

PREDICT = 'mutation($i: JSON!) { predict(task: "loan_default", input: $i) { id route } }'
STAGES = ("validate", "infer", "explain", "route", "store")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(http: httpx.Client, **headers: str) -> Samples:
    response = http.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples) -> Callable[..., float]:
    return lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)


def until(check: Callable[[], Any], what: str, seconds: float = 30) -> Any:
    deadline = time.monotonic() + seconds
    while not (result := check()):
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.2)
    return result


def test_counts_match_what_happened(settings: Settings,
                                    example_tasks: dict[str, TaskSpec]) -> None:
    rows = example_inputs(example_tasks["loan_default"], 43, seed=11)
    # Leases short enough for the lapsing one to expire within the test, long enough for a
    # claim and its submit to fit on a loaded machine.
    with LiveServer(settings, review={"lease_seconds": 10.0}) as server, \
            httpx.Client(base_url=server.url, timeout=60) as http:
        predictor = Api(http, make_key(settings, "predictor", "app"))
        reviewer = Api(http, make_key(settings, "reviewer", "rita"))
        admin = Api(http, make_key(settings, "admin", "ops"))
        before = scrape(http)
        answered = [predictor(PREDICT, i=row)["data"]["predict"] for row in rows[:3]]
        answered += predictor(BATCH, i=rows[3:])["data"]["predictBatch"]
        after = scrape(http)
        d = delta(before, after)
        routes = Counter(p["route"] for p in answered)
        assert routes["REVIEW"] >= 3, "the scenario needs three items to review"
        for route in ("AUTO", "REVIEW"):
            assert d("arbiter_predictions_total", task="loan_default", release="1",
                     route=route) == routes[route]
        for stage in STAGES:  # three predict calls and one batch
            assert d("arbiter_prediction_stage_duration_seconds_count", task="loan_default",
                     stage=stage) == 4, stage
            assert d("arbiter_prediction_stage_duration_seconds_sum", task="loan_default",
                     stage=stage) > 0
        assert d("arbiter_http_request_duration_seconds_count", path="/graphql",
                 method="POST", status="200") == 4
        assert d("arbiter_http_request_duration_seconds_count", path="/metrics",
                 method="GET", status="200") == 1

        # The queue gauges come from the database (cached a few seconds).
        until(lambda: value(scrape(http), "arbiter_review_queue_depth", task="loan_default",
                            status="PENDING") == routes["REVIEW"], "queue depth")
        gauges = scrape(http)
        assert value(gauges, "arbiter_review_queue_depth", task="breast_cancer",
                     status="PENDING") == 0
        assert value(gauges, "arbiter_review_queue_oldest_age_seconds", task="loan_default") > 0
        assert value(gauges, "arbiter_live_release_version", task="loan_default") == 1

        # One review confirms the model, one overturns it, one lease lapses.
        before = scrape(http)
        reviewed = []
        for agree in (True, False):
            lease = reviewer(CLAIM)["data"]["claimReview"]
            model = lease["item"]["prediction"]["label"]
            label = model if agree else next(c for c in ("repaid", "late", "default")
                                             if c != model)
            done = reviewer(SUBMIT, t=lease["leaseToken"], l=label)["data"]["submitReview"]
            assert done["status"] == "RESOLVED"
            reviewed.append((model, label, done))
        lapsing = reviewer(CLAIM)["data"]["claimReview"]["item"]["id"]
        until(lambda: admin(ITEM, id=lapsing)["data"]["reviewItem"]["status"] == "PENDING",
              "lease expiry")

        def settled() -> Samples | None:
            """Each claim sent one expiry job (a no-op for the two submitted in time)."""
            s = scrape(http)
            d = delta(before, s)
            done = (d("arbiter_jobs_total", actor="review.expire_lease", outcome="success") >= 3
                    and d("arbiter_lease_expiries_total", task="loan_default") >= 1)
            return s if done else None

        after = until(settled, "the three expiry jobs")
        d = delta(before, after)
        outcomes = {k: v for k, v in after.items() if k[0] == "arbiter_review_outcomes_total"}
        assert d("arbiter_review_outcomes_total", task="loan_default",
                 outcome="confirmed") == 1, (reviewed, outcomes)
        assert d("arbiter_review_outcomes_total", task="loan_default",
                 outcome="overturned") == 1, (reviewed, outcomes)
        assert d("arbiter_lease_expiries_total", task="loan_default") == 1
        assert d("arbiter_jobs_total", actor="review.expire_lease", outcome="failure") == 0
        assert not any(k[0] == "arbiter_predictions_total" and ("id", lapsing) in k[1]
                       for k in after)


def test_a_token_guards_metrics_when_configured(settings: Settings) -> None:
    guarded = settings.model_copy(update={"metrics_token": "s3cret"})
    with LiveServer(guarded) as server, httpx.Client(base_url=server.url) as http:
        refused = http.get("/metrics")
        assert refused.status_code == 401 and "ARBITER_METRICS_TOKEN" in refused.json()["error"]
        assert http.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert "arbiter_review_queue_depth" in str(
            scrape(http, Authorization="Bearer s3cret").keys())


def child_pids(pid: int) -> list[int]:
    found = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        found += [int(p) for p in Path(path).read_text().split()]
    return found


def multiproc_dir(pid: int) -> str:
    """The metrics directory the CLI handed its server processes (read from their env)."""
    for child in child_pids(pid):
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        for entry in environ:
            if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
                return entry.split(b"=", 1)[1].decode()
    raise AssertionError("no server process has PROMETHEUS_MULTIPROC_DIR")


def predictions_by_process(path: str) -> dict[int, float]:
    counts: dict[int, float] = {}
    for file in glob.glob(os.path.join(path, "counter_*.db")):
        pid = int(Path(file).stem.split("_")[1])
        for key, count, *_ in MmapedDict.read_all_values_from_file(file):
            if key.startswith('["arbiter_predictions"'):
                counts[pid] = counts.get(pid, 0.0) + count
    return counts


def test_two_server_processes_give_one_view(settings: Settings,
                                            example_tasks: dict[str, TaskSpec]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env |= {"ARBITER_DATA_DIR": str(settings.data_dir),
            "ARBITER_DATABASE_URL": settings.resolved_database_url}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = subprocess.Popen([ARBITER, "serve", "--port", str(port), "--workers", "2"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, serve)
        key = make_key(settings, "predictor", "app")
        rows = example_inputs(example_tasks["loan_default"], 40, seed=3)

        def predict(row: dict[str, Any]) -> str:
            with httpx.Client(base_url=url, timeout=120) as http:  # a new connection each
                return str(Api(http, key)(PREDICT, i=row)["data"]["predict"]["route"])

        # The kernel hands each new connection to whichever process accepts first: on a
        # loaded machine one may take a whole round (the other still busy); send rounds
        # until both have answered some.
        path = multiproc_dir(serve.pid)
        routes: Counter[str] = Counter()
        sent = 0
        for _ in range(10):
            with ThreadPoolExecutor(4) as pool:
                routes.update(pool.map(predict, rows))
            sent += len(rows)
            by_process = predictions_by_process(path)
            if len(by_process) == 2:
                break
        assert len(by_process) == 2 and all(by_process.values()), by_process
        assert sum(by_process.values()) == sent
        with httpx.Client(base_url=url, timeout=60) as http:
            for _ in range(4):  # whichever process answers the scrape, the view is the same
                samples = scrape(http)
                for route in ("AUTO", "REVIEW"):
                    assert value(samples, "arbiter_predictions_total", task="loan_default",
                                 release="1", route=route) == routes[route]
                assert value(samples, "arbiter_prediction_stage_duration_seconds_count",
                             task="loan_default", stage="infer") == sent
    finally:
        serve.terminate()
        serve.wait(timeout=60)
    assert not os.path.exists(path), "the run's metrics directory was not removed"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_no_feature_value_or_id_becomes_a_label(settings: Settings,
                                                example_tasks: dict[str, TaskSpec]) -> None:
    rows = example_inputs(example_tasks["loan_default"], 2, seed=8)
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        predictor = Api(http, make_key(settings, "predictor", "app"))
        ids = [predictor(PREDICT, i=row)["data"]["predict"]["id"] for row in rows]
        http.get("/no/such/page/" + ids[0])
        text = http.get("/metrics").text
    labels = {v for _, ls in scrape_text(text) for _, v in ls}
    assert not any(i in text for i in ids)
    assert {"other", "/graphql"} <= labels
    assert not {str(v) for row in rows for v in row.values() if isinstance(v, str)} & labels


def scrape_text(text: str) -> list[tuple[str, frozenset[tuple[str, str]]]]:
    return [(s.name, frozenset(s.labels.items()))
            for family in text_string_to_metric_families(text) for s in family.samples]


@pytest.mark.redis
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_worker_serves_its_own_metrics(settings: Settings, tmp_path: Path) -> None:
    require_redis()
    port = free_port()
    namespace = f"arbiter-test-{tmp_path.name[-12:]}"
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env |= {"ARBITER_DATA_DIR": str(settings.data_dir),
            "ARBITER_DATABASE_URL": settings.resolved_database_url,
            "ARBITER_REDIS_URL": REDIS_URL, "ARBITER_REDIS_NAMESPACE": namespace,
            "ARBITER_LEASE_SWEEP_SECONDS": "1"}
    worker = subprocess.Popen([ARBITER, "worker", "--metrics-port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            def swept() -> bool:
                assert worker.poll() is None, "the worker exited"
                try:
                    samples = scrape(http)
                except httpx.TransportError:
                    return False
                return value(samples, "arbiter_jobs_total", actor="review.expire_leases",
                             outcome="success") > 0
            until(swept, "periodic sweep counted by the worker", seconds=300)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
