"""``arbiter migrate``, ``serve``, ``worker`` and ``demo``: running the service."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from typing import Annotated, Any

import typer
import uvicorn
from rich.table import Table

from app import metrics
from app.access.keys import create_key
from app.access.roles import Role
from app.cli.context import console, prepare, run
from app.cli.training import train_task
from app.db.engine import make_engine, make_sessionmaker
from app.errors import ArbiterError
from app.ml.task import load_tasks
from app.releases.store import live_release
from app.settings import Settings

# uvicorn's supervisor kills a worker that does not answer its ping within this; the default
# (5 s) killed workers still importing the ML stack on a loaded 2-core machine, over and over.
WORKER_HEALTHCHECK_SECONDS = 60
Host = Annotated[str, typer.Option(help="Interface to listen on.")]
Port = Annotated[int, typer.Option(help="TCP port.")]


def migrate() -> None:
    """Apply the database migrations (Alembic) to ARBITER_DATABASE_URL."""
    settings = prepare()
    console.print(f"database at head: {settings.resolved_database_url}")


@contextlib.contextmanager
def _shared_metrics(processes: int) -> Iterator[None]:
    """Several server processes share their metrics through one directory: the one in
    PROMETHEUS_MULTIPROC_DIR if set (the operator's, kept), else a fresh one for this run,
    removed at exit. Set before uvicorn spawns the workers, which read it at import."""
    given = metrics.multiprocess_dir()
    if given is not None:
        os.makedirs(given, exist_ok=True)
        yield
        return
    if processes == 1:
        yield  # one process: its own registry is the whole view
        return
    path = tempfile.mkdtemp(prefix="arbiter-metrics-")
    os.environ[metrics.MULTIPROC_ENV] = path
    try:
        yield
    finally:
        os.environ.pop(metrics.MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def _serve(settings: Settings, host: str, port: int, workers: int = 1) -> None:
    with _shared_metrics(workers):
        # log_config=None: uvicorn keeps its hands off logging; each process's create_app
        # configures it (JSON or text, with the request context).
        uvicorn.run("app.main:create_app", factory=True, host=host, port=port,
                    workers=workers, log_config=None, log_level=settings.log_level.lower(),
                    timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS)


def serve(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    workers: Annotated[int, typer.Option(help="Server processes.")] = 1,
) -> None:
    """Serve the GraphQL API (migrates first; does not train)."""
    _serve(prepare(), host, port, workers)


def worker(
    metrics_port: Annotated[int | None, typer.Option(
        help="Serve this process's Prometheus metrics on this port (GET /metrics).")] = None,
    metrics_host: Annotated[str, typer.Option(help="Interface of --metrics-port.")] = "127.0.0.1",
) -> None:
    """Run Dramatiq workers and an outbox relay against ARBITER_REDIS_URL."""
    settings = prepare()
    if not settings.redis_url:
        raise ArbiterError("`arbiter worker` needs ARBITER_REDIS_URL; without Redis, "
                           "`arbiter serve` runs the worker inside the server")
    if metrics_port is not None:
        metrics.serve_metrics(metrics_port, metrics_host)
    try:
        asyncio.run(_work(settings))
    finally:
        metrics.process_exited()


async def _work(settings: Settings) -> None:
    from workers.runtime import JobRuntime  # the composition root of a worker process

    engine = make_engine(settings.resolved_database_url)
    jobs = JobRuntime(settings, make_sessionmaker(engine), consume=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await jobs.start()
    console.print(f"worker consuming {settings.redis_url} (namespace {settings.redis_namespace})")
    try:
        await stop.wait()
    finally:
        await jobs.stop()
        await engine.dispose()


def demo(host: Host = "127.0.0.1", port: Port = 8000) -> None:
    """Migrate, train the tasks that have no release, create keys, and serve."""
    settings = prepare()
    for name in load_tasks(settings.tasks_dir):

        async def has_live(sessions: Any, name: str = name) -> bool:
            async with sessions() as session:
                return await live_release(session, name) is not None

        if not run(settings, has_live):
            train_task(settings, name, "cli:demo")

    async def make_keys(sessions: Any) -> dict[str, str]:
        async with sessions() as session, session.begin():
            return {
                r.value: (await create_key(session, r.value, f"demo-{r.value}", "cli:demo"))[1]
                for r in Role
            }

    keys = run(settings, make_keys)
    url = f"http://{host}:{port}/graphql"
    table = Table("role", "API key", title="demo keys (shown once)")
    for role, key in keys.items():
        table.add_row(role, key)
    console.print(table)
    example = {
        "query": 'mutation { predict(task: "loan_default", input: {income: 52000, '
        'loan_amount: 12000, term_months: 36, employment: "salaried", home_ownership: '
        '"rent", purpose: "car", has_cosigner: false, total_spend: 3400, orders: 41}) '
        "{ id label confidence predictionSet route reasons { code detail } "
        "explanation { space explainedClass baseValue outputValue "
        "contributions { feature value shap } } } }"
    }
    console.print(f"\nGraphiQL: {url}  (set the header Authorization: Bearer <key>)")
    site = f"http://{host}:{port}"
    console.print(f"Review page: {site}/review   (reviewer key)")
    console.print(f"Audit page:  {site}/audit    (auditor key)")
    console.print(f"Ops page:    {site}/ops      (admin key)\n")
    console.print("Try it:", style="bold")
    print(
        f"curl -s {url} -H 'Authorization: Bearer {keys['predictor']}' "
        f"-H 'Content-Type: application/json' -d '{json.dumps(example)}'\n"
    )
    _serve(settings, host, port)
