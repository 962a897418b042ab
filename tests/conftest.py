"""Shared fixtures: real databases (SQLite and PostgreSQL), real trained releases, a real
HTTP server. PostgreSQL tests skip locally when it is absent and fail when CI=true."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.db.migrate import upgrade
from app.ml.task import TaskSpec, load_tasks
from app.ml.training import TrainedRelease, fit_release
from app.settings import EXAMPLE_TASKS_DIR, Settings
from tests.support.databases import PG_ADMIN_DSN, admin_sql, require_postgres
from tests.support.processes import env, scaled  # noqa: F401  (fixtures of every test)
from tests.support.releases import store_all
from tests.support.server import Api, LiveServer, make_key


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
    admin_sql(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    url = f"{base}/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def example_tasks() -> dict[str, TaskSpec]:
    return load_tasks(EXAMPLE_TASKS_DIR)


@pytest.fixture(scope="session")
def trained(example_tasks: dict[str, TaskSpec]) -> dict[str, TrainedRelease]:
    """Both example tasks trained once per test session (pure: nothing stored)."""
    return {name: fit_release(task) for name, task in example_tasks.items()}


@pytest.fixture
def settings(database_url: str, tmp_path: Path, trained: dict[str, TrainedRelease]) -> Settings:
    """Settings on a fresh database where both example tasks have a LIVE release."""
    s = Settings(data_dir=tmp_path / "data", database_url=database_url, release_refresh_seconds=0.0)
    s.data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(store_all(s, trained))
    return s


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
