"""The Prometheus metrics of an Arbiter process, counted where the event happens.

Counters and histograms live in prometheus-client's default registry. In one process that
is all; with several processes on one machine (``arbiter serve --workers N``, or a worker
sharing the server's directory) each process writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` and ``exposition`` sums them with a ``MultiProcessCollector``.
prometheus-client picks its storage when it is first imported, so the variable must be set
before the process starts (the CLI sets it before uvicorn spawns its workers).

Labels name tasks, release versions, routes, stages, actors and outcomes: small fixed sets.
Never an id, a key or a feature value.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

HTTP_REQUEST_DURATION = Histogram(
    "arbiter_http_request_duration_seconds",
    "Time to answer an HTTP request, by route path (a fixed set), method and status.",
    ["path", "method", "status"],
)
PREDICTION_STAGE_DURATION = Histogram(
    "arbiter_prediction_stage_duration_seconds",
    "Time spent in one stage of a predict or predictBatch call (a batch counts once): "
    "validate, infer, explain, route, store.",
    ["task", "stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
             10.0),
)
BATCH_SIZE = Histogram(
    "arbiter_batch_size",
    "Size of each micro-batch: rows in one ensemble call (batcher=inference), predictions "
    "in one commit (batcher=commit).",
    ["batcher"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096, 16384),
)
PREDICTIONS = Counter(
    "arbiter_predictions",
    "Predictions stored, by task, release version and route (AUTO or REVIEW).",
    ["task", "release", "route"],
)
SHADOW_INPUTS = Counter(
    "arbiter_shadow_inputs",
    "Inputs scored off the response path by releases that did not answer them, by outcome: "
    "scored (by the serving process), dropped (it was overloaded), failed, backfilled (by "
    "the periodic catch-up job, in a worker).",
    ["task", "outcome"],
)
LEASE_EXPIRIES = Counter(
    "arbiter_lease_expiries",
    "Review leases that lapsed unsettled and went back to the queue.",
    ["task"],
)
REVIEW_OUTCOMES = Counter(
    "arbiter_review_outcomes",
    "Resolved review items: confirmed (final label = the model's) or overturned.",
    ["task", "outcome"],
)
JOBS = Counter(
    "arbiter_jobs",
    "Dramatiq messages processed by Arbiter's actors: success, retry, failure or skipped.",
    ["actor", "outcome"],
)
TRAINING_RUNS = Counter(
    "arbiter_training_runs",
    "Training jobs finished in this process: succeeded or failed.",
    ["task", "outcome"],
)

REDIS_UP = Gauge(
    "arbiter_redis_up",
    "1 while this process's circuit to Redis is closed (Redis answers), 0 while it is open "
    "(calls fail fast); by client: events (the bus), broker (the outbox relay's sends).",
    ["client"],
    multiprocess_mode="livemin",
)
DEGRADED = Gauge(
    "arbiter_degraded",
    "1 while this process's last /readyz was degraded: it answers predictions, but Redis "
    "(or the in-process worker) is down or a task is not served.",
    multiprocess_mode="livemax",
)
REDIS_CIRCUIT_OPENED = Counter(
    "arbiter_redis_circuit_opened",
    "Times a circuit to Redis opened (Redis failed or timed out), by client.",
    ["client"],
)

def multiprocess_dir() -> str | None:
    """The directory processes share their values through, when one is configured."""
    return os.environ.get(MULTIPROC_ENV) or None


def exposition(extra: Iterable[Collector] = ()) -> bytes:
    """Every metric of this process (or of every process sharing the directory), plus the
    ``extra`` collectors, in Prometheus text format."""
    path = multiprocess_dir()
    if path is not None:
        shared = CollectorRegistry()
        MultiProcessCollector(shared, path)
        text = generate_latest(shared)
    else:
        text = generate_latest(REGISTRY)
    local = CollectorRegistry(auto_describe=False)
    for collector in extra:
        local.register(collector)
    return text + generate_latest(local)


def process_exited(pid: int | None = None) -> None:
    """Drop a finished process's live gauges from the shared directory (its counters stay:
    totals must not go down when a process exits)."""
    path = multiprocess_dir()
    if path is not None:
        mark_process_dead(pid if pid is not None else os.getpid(), path)


def serve_metrics(port: int, host: str) -> None:
    """Serve ``GET /metrics`` from a background thread (for ``arbiter worker``)."""
    path = multiprocess_dir()
    registry = REGISTRY
    if path is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path)
    start_http_server(port, addr=host, registry=registry)
