"""/healthz and /readyz over real HTTP: ready when everything is up, 503 naming each
problem when the database or Redis is unreachable or silent, and never hanging."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.settings import Settings
from tests.support.redis_server import RedisServer
from tests.support.server import LiveServer, free_port

TIMEOUT = 1.0  # ARBITER_READY_TIMEOUT_SECONDS in these tests


def wait_for(http: httpx.Client, status: int, seconds: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while (ready := http.get("/readyz")).status_code != status:
        assert time.monotonic() < deadline, ready.json()
        time.sleep(0.1)
    body: dict[str, Any] = ready.json()
    return body


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung server)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


def test_ready_when_database_broker_and_models_are(settings: Settings) -> None:
    with LiveServer(settings) as server, httpx.Client(base_url=server.url) as http:
        assert http.get("/healthz").json() == {"status": "alive"}
        body = wait_for(http, 200)
    assert body == {"status": "ready", "database": "ok", "broker": "ok",
                    "tasks": {"breast_cancer": "ready", "loan_default": "ready"}}


def test_an_unreachable_database_is_named(tmp_path: Path) -> None:
    closed = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/arbiter"
    settings = Settings(data_dir=tmp_path, database_url=closed, ready_timeout_seconds=TIMEOUT)
    with LiveServer(settings) as server, httpx.Client(base_url=server.url) as http:
        assert http.get("/healthz").status_code == 200  # alive, only not ready
        body = wait_for(http, 503)
        assert body["status"] == "not ready" and body["broker"] == "ok"
        assert body["database"].startswith("unreachable: ") and "Connect" in body["database"]
        assert all("not loaded" in v or "Connect" in v for v in body["tasks"].values())


def test_a_silent_database_and_redis_time_out(tmp_path: Path, silent_port: int) -> None:
    settings = Settings(
        data_dir=tmp_path, database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{silent_port}/a",
        redis_url=f"redis://127.0.0.1:{silent_port}/0", ready_timeout_seconds=TIMEOUT)
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        started = time.monotonic()
        ready = http.get("/readyz")
        took = time.monotonic() - started
    assert ready.status_code == 503
    body = ready.json()
    assert body["database"] == "unreachable: no answer within 1 s", body
    assert body["broker"].startswith("Redis unreachable: "), body
    assert took < 3 * TIMEOUT, f"/readyz took {took:.1f} s"


@pytest.mark.redis
def test_stopping_redis_makes_the_server_unready_until_it_returns(settings: Settings) -> None:
    redis_server = RedisServer().start()
    scaled = settings.model_copy(update={"redis_url": redis_server.url,
                                         "ready_timeout_seconds": TIMEOUT})
    try:
        with LiveServer(scaled) as server, httpx.Client(base_url=server.url) as http:
            assert wait_for(http, 200)["broker"] == "ok"
            redis_server.kill()
            body = wait_for(http, 503)
            assert body["broker"].startswith("Redis unreachable: ConnectionError"), body
            assert body["database"] == "ok"
            assert body["tasks"] == {"breast_cancer": "ready", "loan_default": "ready"}
            redis_server.start()
            assert wait_for(http, 200)["broker"] == "ok"
    finally:
        redis_server.kill()
