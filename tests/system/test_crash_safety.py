"""Processes killed with SIGKILL at the worst moment, on PostgreSQL: a server inside the
transaction that stores a request, a worker inside a job. Nothing stored is lost, half
written or duplicated, and the work completes once the processes are back.

The moment is made certain, not hoped for: the test holds a lock the process needs, waits
until PostgreSQL shows the process blocked on it mid-transaction, and kills it there."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from app.ml.task import TaskSpec
from app.settings import Settings
from tests.support.documents import BATCH, CLAIM
from tests.support.inputs import example_inputs
from tests.support.processes import ARBITER, process_env, short_leases, wait_ready
from tests.support.redis_server import require_redis
from tests.support.server import Api, free_port, make_key

POSTGRES_ONLY = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
PREDICT = """mutation($i: JSON!, $k: String) {
  predict(task: "loan_default", input: $i, idempotencyKey: $k) { id } }"""
WAIT_SECONDS = 120


def dsn(settings: Settings) -> str:
    return settings.resolved_database_url.replace("postgresql+asyncpg://", "postgresql://")


class Holder:
    """A PostgreSQL session that takes a lock and waits until a process blocks on it."""

    def __init__(self, settings: Settings) -> None:
        self.dsn = dsn(settings)
        self.loop = asyncio.new_event_loop()
        self.conn: Any = self.run(asyncpg.connect(self.dsn))
        # PostgreSQL shows a transaction one snapshot of pg_stat_activity: watch from outside.
        self.watch: Any = self.run(asyncpg.connect(self.dsn))

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def lock(self, sql: str) -> None:
        self.run(self.conn.execute("BEGIN"))
        self.run(self.conn.execute(sql))

    def wait_for_blocked(self) -> None:
        query = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                 "AND wait_event_type = 'Lock'")
        for _ in range(WAIT_SECONDS * 10):
            if self.run(self.watch.fetchval(query)):
                return
            self.run(asyncio.sleep(0.1))
        raise AssertionError("no process blocked on the held lock")

    def release(self) -> None:
        self.run(self.conn.execute("ROLLBACK"))

    def count(self, sql: str) -> int:
        return int(self.value(sql))

    def value(self, sql: str) -> Any:
        return self.run(self.watch.fetchval(sql))

    def close(self) -> None:
        self.run(self.conn.close())
        self.run(self.watch.close())
        self.loop.close()


@pytest.fixture
def holder(settings: Settings) -> Iterator[Holder]:
    held = Holder(settings)
    yield held
    held.close()


def serve(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([ARBITER, "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(f"http://127.0.0.1:{port}", proc)
    return proc


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def in_flight(url: str, key: str, query: str, **variables: Any) -> threading.Thread:
    """A request that will never be answered (its server dies): sent from a thread."""
    def send() -> None:
        with httpx.Client(base_url=url, timeout=WAIT_SECONDS) as http, \
                contextlib.suppress(httpx.TransportError):  # the server dies mid-request
            Api(http, key).post(query, **variables)
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


@POSTGRES_ONLY
def test_a_server_killed_inside_a_request_leaves_nothing_half_written(
        settings: Settings, holder: Holder, tmp_path: Path,
        example_tasks: dict[str, TaskSpec]) -> None:
    env = process_env(settings, "unused", short_leases(tmp_path))
    env.pop("ARBITER_REDIS_URL")  # embedded: the jobs die with the server too
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key = make_key(settings, "predictor", "app")
    rows = example_inputs(example_tasks["loan_default"], 50)
    server = serve(env, port)
    try:
        for query, variables in ((BATCH, {"i": rows}), (PREDICT, {"i": rows[0], "k": "o-1"})):
            holder.lock("LOCK TABLE predictions IN SHARE ROW EXCLUSIVE MODE")
            request = in_flight(url, key, query, **variables)
            holder.wait_for_blocked()  # the server is inside its INSERT, mid-transaction
            kill(server)
            holder.release()
            request.join(timeout=WAIT_SECONDS)
            assert holder.count("SELECT count(*) FROM predictions") == 0
            assert holder.count("SELECT count(*) FROM review_items") == 0
            server = serve(env, port)

        # The client retries with its idempotency key: stored once, however often it retries.
        with httpx.Client(base_url=url, timeout=WAIT_SECONDS) as http:
            first = Api(http, key)(PREDICT, i=rows[0], k="o-1")["data"]["predict"]["id"]
            again = Api(http, key)(PREDICT, i=rows[0], k="o-1")["data"]["predict"]["id"]
            stored = Api(http, key)(BATCH, i=rows)["data"]["predictBatch"]
        assert first == again
        assert holder.count("SELECT count(*) FROM predictions") == 1 + len(stored)
        routed = sum(p["route"] == "REVIEW" for p in stored) + holder.count(
            f"SELECT count(*) FROM predictions WHERE id = '{first}' AND route = 'REVIEW'")
        assert holder.count("SELECT count(*) FROM review_items") == routed
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.mark.redis
@POSTGRES_ONLY
def test_a_worker_killed_inside_a_job_loses_and_duplicates_nothing(
        settings: Settings, holder: Holder, tmp_path: Path,
        example_tasks: dict[str, TaskSpec]) -> None:
    require_redis()
    env = process_env(settings, f"arbiter-test-{tmp_path.name[-12:]}", short_leases(tmp_path))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = serve(env, port)

    def worker() -> subprocess.Popen[bytes]:
        return subprocess.Popen([ARBITER, "worker"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    running = worker()
    try:
        with httpx.Client(base_url=url, timeout=WAIT_SECONDS) as http:
            people = {role: Api(http, make_key(settings, role, role))
                      for role in ("predictor", "reviewer", "admin")}
            rows = example_inputs(example_tasks["loan_default"], 60)
            people["predictor"](BATCH, i=rows)
            items = holder.count("SELECT count(*) FROM review_items")
            assert items > 0
            # The item's row is locked before the claim's lease lapses: the worker's expiry
            # job (and its sweep) block inside their UPDATE, and the worker dies there.
            lease = people["reviewer"](CLAIM)["data"]["claimReview"]
            item = lease["item"]["id"]
            holder.lock(f"SELECT 1 FROM review_items WHERE id = '{item}' FOR UPDATE")
            holder.wait_for_blocked()
            kill(running)
            holder.release()
            assert holder.count(
                f"SELECT count(*) FROM review_items WHERE id = '{item}' AND status = 'CLAIMED'"
            ) == 1  # the killed job's transaction did not commit

            running = worker()
            status = f"SELECT status FROM review_items WHERE id = '{item}'"
            for _ in range(WAIT_SECONDS * 10):
                if holder.value(status) == "PENDING":
                    break
                holder.run(asyncio.sleep(0.1))
            assert holder.value(status) == "PENDING", "the job never completed"

            again = people["reviewer"](CLAIM, id=item)["data"]["claimReview"]
            assert again["item"]["id"] == item  # claimable again, by the same reviewer
        assert holder.count("SELECT count(*) FROM review_items") == items
        assert holder.count("SELECT count(*) FROM predictions") == len(rows)
        assert holder.count("SELECT count(*) FROM reviews") == 0
    finally:
        running.terminate()
        running.wait(timeout=60)
        server.terminate()
        server.wait(timeout=60)
