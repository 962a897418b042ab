"""The load generator: requests to Arbiter's ``predict`` or the baseline, timed.

The client is aiohttp: at 32 clients httpx's own CPU per request was about as large as the
server's work and its scheduling added most of the p99 (see docs/performance.md).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import numpy as np
import orjson

Row = dict[str, Any]
PREDICT_QUERY = (
    "mutation($input: JSON!) {{ predict(task: {task}, input: $input) "
    "{{ id label confidence route explanation {{ baseValue outputValue }} }} }}"
)
BATCH_QUERY = (
    "mutation($inputs: [JSON!]!) {{ predictBatch(task: {task}, inputs: $inputs) "
    "{{ id label confidence route explanation {{ baseValue outputValue }} }} }}"
)
STAGES = ["validate", "infer", "explain", "route", "store"]
JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Answer:
    """What a load request got back."""

    status: int
    body: bytes

    def json(self) -> Any:
        """The body, parsed."""
        return orjson.loads(self.body)


@dataclass(frozen=True)
class Target:
    """One endpoint to drive: how to build a request body and how to judge a response."""

    name: str
    url: str
    headers: dict[str, str]
    body: Callable[[Row], dict[str, Any]]
    ok: Callable[[Answer], bool]


def graphql_ok(answer: Answer) -> bool:
    """A ``predict`` answer with data and no errors."""
    if answer.status != 200:
        return False
    try:
        payload = answer.json()
    except ValueError:
        return False
    return not payload.get("errors") and (payload.get("data") or {}).get("predict") is not None


def baseline_ok(answer: Answer) -> bool:
    """A baseline answer with a label."""
    return answer.status == 200 and "label" in answer.json()


def arbiter_target(base_url: str, key: str, task: str) -> Target:
    """Arbiter's ``predict`` mutation over ``POST /graphql``."""
    query = PREDICT_QUERY.format(task=json.dumps(task))
    return Target("Arbiter", f"{base_url}/graphql",
                  {**JSON_HEADERS, "Authorization": f"Bearer {key}"},
                  lambda row: {"query": query, "variables": {"input": row}}, graphql_ok)


def baseline_target(base_url: str) -> Target:
    """The baseline's ``POST /predict``."""
    return Target("Baseline", f"{base_url}/predict", JSON_HEADERS, lambda row: row, baseline_ok)


@dataclass
class LevelResult:
    """The requests of one concurrency level: latencies, failures, wall and client time."""

    concurrency: int
    latencies: list[float]  # seconds, successful requests only
    failures: int
    elapsed: float
    first_error: str | None
    client_cpu: float = 0.0  # seconds of this process's CPU while it drove the requests

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return len(self.latencies) / self.elapsed if self.elapsed > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        """A latency percentile of the successful requests, in ms."""
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")

    @property
    def client_ms(self) -> float:
        """The load generator's own CPU per request, in ms."""
        done = len(self.latencies) + self.failures
        return self.client_cpu / done * 1000 if done else float("nan")

    def combined(self, more: LevelResult) -> LevelResult:
        """This round and another of the same level, as one: requests, failures, wall and
        client CPU time add up, latencies are pooled."""
        return LevelResult(self.concurrency, self.latencies + more.latencies,
                           self.failures + more.failures, self.elapsed + more.elapsed,
                           self.first_error or more.first_error,
                           self.client_cpu + more.client_cpu)


def client_caption(cells: Sequence[str]) -> str:
    """The caption line that shows whether the load generator itself was busy."""
    return "load generator: aiohttp in one process, its CPU ms per request: " + "; ".join(cells)


@dataclass
class Tally:
    """What the workers of one run collected."""

    latencies: list[float]
    failures: int = 0
    first_error: str | None = None


async def one_request(client: aiohttp.ClientSession, target: Target, row: Row,
                      tally: Tally) -> None:
    """Send one request and tally its latency or its failure."""
    start = time.perf_counter()
    error: str | None = None
    try:
        async with client.post(target.url, data=orjson.dumps(target.body(row)),
                               headers=target.headers) as response:
            answer = Answer(response.status, await response.read())
        if not target.ok(answer):
            error = f"HTTP {answer.status}: {answer.body[:300]!r}"
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    if error is None:
        tally.latencies.append(time.perf_counter() - start)
    else:
        tally.failures += 1
        tally.first_error = tally.first_error or error


async def drive(client: aiohttp.ClientSession, target: Target, rows: Sequence[Row],
                concurrency: int, total: int, offset: int) -> Tally:
    """``total`` requests from ``concurrency`` workers; rows cycled from ``offset``."""
    tally = Tally([])
    counter = itertools.count()

    async def worker() -> None:
        while (i := next(counter)) < total:
            await one_request(client, target, rows[(offset + i) % len(rows)], tally)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally


async def measure(target: Target, rows: Sequence[Row], concurrency: int, requests: int,
                  warmup: int) -> LevelResult:
    """``warmup`` unmeasured requests, then ``requests`` measured ones, on one session with
    a pool of ``concurrency`` connections."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        await drive(client, target, rows, concurrency, warmup, 0)
        start, cpu = time.perf_counter(), time.process_time()
        tally = await drive(client, target, rows, concurrency, requests, warmup)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return LevelResult(concurrency, tally.latencies, tally.failures, elapsed, tally.first_error,
                       cpu)


def batch_seconds(base_url: str, key: str, task: str, rows: list[Row]) -> float:
    """Seconds from sending one ``predictBatch`` of ``rows`` to its answer parsed."""
    body = {"query": BATCH_QUERY.format(task=json.dumps(task)), "variables": {"inputs": rows}}
    started = time.perf_counter()
    response = httpx.post(f"{base_url}/graphql", json=body, timeout=600.0,
                          headers={"Authorization": f"Bearer {key}"})
    elapsed = time.perf_counter() - started
    payload = response.json()
    if response.status_code != 200 or payload.get("errors"):
        raise SystemExit(f"predictBatch failed: HTTP {response.status_code} "
                         f"{json.dumps(payload)[:500]}")
    if len(payload["data"]["predictBatch"]) != len(rows):
        raise SystemExit("predictBatch answered the wrong number of rows")
    return elapsed


def stage_means(base_url: str, task: str) -> dict[str, float]:
    """Mean ms per call of each prediction stage, from the server's own histogram."""
    text = httpx.get(f"{base_url}/metrics", timeout=10.0).text
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("arbiter_prediction_stage_duration_seconds_") \
                or f'task="{task}"' not in line:
            continue
        stage = line.split('stage="', 1)[1].split('"', 1)[0]
        value = float(line.rsplit(" ", 1)[1])
        if "_sum{" in line:
            sums[stage] = value
        elif "_count{" in line:
            counts[stage] = value
    return {s: sums[s] / counts[s] * 1000 for s in STAGES if counts.get(s)}
