"""`arbiter` as separate processes: one command, a server waited for until ready, a worker,
and the environment they read their settings from."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.settings import EXAMPLE_TASKS_DIR, Settings
from tests.support.redis_server import REDIS_URL, require_redis
from tests.support.server import free_port

ARBITER = str(Path(sys.executable).parent / "arbiter")


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    """The environment of an `arbiter` process on the test's database and data folder."""
    return {**os.environ, "ARBITER_DATA_DIR": str(tmp_path / "data"),
            "ARBITER_DATABASE_URL": database_url}


def arbiter(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run one `arbiter` command to its end."""
    return subprocess.run([ARBITER, *args], env=env, capture_output=True, text=True, timeout=600)


def wait_ready(url: str, process: subprocess.Popen[Any], seconds: float = 300) -> None:
    """Wait until the server process answers /readyz with 200."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} was not ready within {seconds} s")


@pytest.fixture
def scaled(settings: Settings) -> Iterator[Settings]:
    """Settings on the shared Redis, under a namespace of their own (removed after)."""
    require_redis()
    namespace = f"arbiter-test-{uuid.uuid4().hex[:8]}"
    yield settings.model_copy(update={"redis_url": REDIS_URL, "redis_namespace": namespace,
                                      "lease_sweep_seconds": 1.0})
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{namespace}*"):
        client.delete(key)


def start_worker(settings: Settings,
                 extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """An `arbiter worker` process on the settings' database and Redis."""
    env = {**os.environ, "ARBITER_DATA_DIR": str(settings.data_dir),
           "ARBITER_DATABASE_URL": settings.resolved_database_url,
           "ARBITER_REDIS_URL": str(settings.redis_url),
           "ARBITER_REDIS_NAMESPACE": settings.redis_namespace,
           "ARBITER_LEASE_SWEEP_SECONDS": "1", **(extra or {})}
    return subprocess.Popen([ARBITER, "worker"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def short_leases(tmp_path: Path) -> Path:
    """The bundled tasks with one-second leases (the review policy is not in the contract)."""
    tasks = tmp_path / "tasks"
    shutil.copytree(EXAMPLE_TASKS_DIR, tasks)
    toml = tasks / "loan_default.toml"
    toml.write_text(toml.read_text().replace("[review]\n", "[review]\nlease_seconds = 1\n", 1))
    return tasks


def process_env(settings: Settings, namespace: str, tasks: Path) -> dict[str, str]:
    """The environment of `arbiter serve`/`worker` processes on PostgreSQL and Redis."""
    return {**os.environ, "ARBITER_DATA_DIR": str(settings.data_dir),
            "ARBITER_DATABASE_URL": settings.resolved_database_url,
            "ARBITER_REDIS_URL": REDIS_URL, "ARBITER_REDIS_NAMESPACE": namespace,
            "ARBITER_TASKS_DIR": str(tasks), "ARBITER_LEASE_SWEEP_SECONDS": "1"}


@contextmanager
def servers(env: dict[str, str], count: int, worker: bool = False) -> Iterator[list[str]]:
    """``count`` `arbiter serve` processes (and a worker) on free ports; yields their URLs
    once each answers /readyz, and stops them all on the way out."""
    ports = [free_port() for _ in range(count)]
    procs = [subprocess.Popen([ARBITER, "serve", "--port", str(p)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for p in ports]
    if worker:
        procs.append(subprocess.Popen([ARBITER, "worker"], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
    try:
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        for url, proc in zip(urls, procs, strict=False):
            wait_ready(url, proc)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=60)
