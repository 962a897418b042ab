"""Shared fixtures: real databases (SQLite and PostgreSQL), real trained releases, a real
HTTP server. PostgreSQL tests skip locally when it is absent and fail when CI=true."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn

from app.access.keys import create_key
from app.db.engine import make_engine, make_sessionmaker
from app.db.migrate import upgrade
from app.main import build_app
from app.ml.task import TaskSpec, load_tasks
from app.ml.training import TrainedRelease, fit_release
from app.releases.store import store_release
from app.settings import EXAMPLE_TASKS_DIR, Settings

PG_ADMIN_DSN = os.environ.get(
    "ARBITER_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() == "true"


def _pg_reachable() -> str | None:
    async def probe() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


PG_PROBLEM = _pg_reachable()


def require_postgres() -> None:
    if PG_PROBLEM is None:
        return
    message = f"PostgreSQL is not reachable at {PG_ADMIN_DSN} ({PG_PROBLEM})"
    if IN_CI:
        pytest.fail(f"{message}; CI=true requires it (.ci/run starts it)")
    pytest.skip(f"{message}; start it to run the PostgreSQL half of the suite")


def _admin(sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database of each backend."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'arbiter.db'}"
        upgrade(url)
        yield url
        return
    require_postgres()
    name = f"arbiter_test_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    url = f"{base}/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def example_tasks() -> dict[str, TaskSpec]:
    return load_tasks(EXAMPLE_TASKS_DIR)


@pytest.fixture(scope="session")
def trained(example_tasks: dict[str, TaskSpec]) -> dict[str, TrainedRelease]:
    """Both example tasks trained once per test session (pure: nothing stored)."""
    return {name: fit_release(task) for name, task in example_tasks.items()}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _store_all(settings: Settings, trained: dict[str, TrainedRelease]) -> None:
    engine = make_engine(settings.resolved_database_url)
    try:
        sessions = make_sessionmaker(engine)
        for release in trained.values():
            await store_release(sessions, settings.artifacts_dir, release, "tests")
    finally:
        await engine.dispose()


@pytest.fixture
def settings(database_url: str, tmp_path: Path, trained: dict[str, TrainedRelease]) -> Settings:
    """Settings on a fresh database where both example tasks have a LIVE release."""
    s = Settings(data_dir=tmp_path / "data", database_url=database_url, release_refresh_seconds=0.0)
    s.data_dir.mkdir(parents=True, exist_ok=True)
    run(_store_all(s, trained))
    return s


def make_key(settings: Settings, role: str, name: str) -> str:
    async def work() -> str:
        engine = make_engine(settings.resolved_database_url)
        try:
            async with make_sessionmaker(engine)() as session, session.begin():
                return (await create_key(session, role, name))[1]
        finally:
            await engine.dispose()

    return str(run(work()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """The real app under uvicorn in a thread, reached over real HTTP."""

    def __init__(self, settings: Settings, review: dict[str, Any] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = build_app(settings)
        self.services = app.state.services
        if review:  # override review-policy fields of every task, e.g. lease_seconds
            tasks = app.state.services.registry.tasks
            for name, task in tasks.items():
                tasks[name] = task.model_copy(
                    update={"review": task.review.model_copy(update=review)})
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class Api:
    """A GraphQL client with one API key."""

    def __init__(self, client: httpx.Client, key: str | None) -> None:
        self.client = client
        self.key = key

    def post(self, query: str, **variables: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        return self.client.post(
            "/graphql", json={"query": query, "variables": variables}, headers=headers
        )

    def __call__(self, query: str, **variables: Any) -> dict[str, Any]:
        response = self.post(query, **variables)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture
def server(settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(settings) as live:
        yield live


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture
def predictor(http: httpx.Client, settings: Settings) -> Api:
    return Api(http, make_key(settings, "predictor", "frontend"))


@pytest.fixture
def admin(http: httpx.Client, settings: Settings) -> Api:
    return Api(http, make_key(settings, "admin", "ops"))


def example_inputs(task: TaskSpec, n: int, seed: int = 5) -> list[dict[str, Any]]:
    """Real rows of the task's own data as JSON inputs (missing optional values left out)."""
    from app.ml.data import load_frame

    return frame_inputs(task, load_frame(task).sample(n, random_state=seed))


def frame_inputs(task: TaskSpec, frame: Any) -> list[dict[str, Any]]:
    """The rows of a data frame as JSON inputs of the task (target and NaNs left out)."""
    rows = []
    for record in frame.to_dict(orient="records"):
        row: dict[str, Any] = {}
        for f in task.features:
            value = record[f.name]
            if value is None or (isinstance(value, float) and value != value):
                continue
            row[f.name] = (
                bool(value)
                if f.type == "boolean"
                else (value if f.type == "categorical" else float(value))
            )
        rows.append(row)
    return rows
