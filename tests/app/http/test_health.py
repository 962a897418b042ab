"""/healthz and /readyz over real HTTP: ready when everything is up; 503 when the database
is unreachable or silent (the body names states, the log has the why under the body's id);
200 "degraded" while Redis is away, since predictions are still answered."""

from __future__ import annotations

import json
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


def wait_for(http: httpx.Client, code: int, seconds: float = 60,
             status: str | None = None) -> dict[str, Any]:
    """The /readyz body once it answers ``code`` (and ``status``, if given)."""
    deadline = time.monotonic() + seconds
    while ((ready := http.get("/readyz")).status_code != code
           or (status is not None and ready.json()["status"] != status)):
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
        body = wait_for(http, 200, status="ready")
    assert body == {"status": "ready", "database": "ok", "broker": "ok",
                    "tasks": {"breast_cancer": "serving", "loan_default": "serving"}}


def test_an_unreachable_database_is_named_without_its_exception(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    closed = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/arbiter"
    # A refused connection answers at once; the long timeout only keeps a starved event
    # loop from reading as "timed out".
    settings = Settings(data_dir=tmp_path, database_url=closed, ready_timeout_seconds=10.0)
    with LiveServer(settings) as server, httpx.Client(base_url=server.url) as http:
        assert http.get("/healthz").status_code == 200  # alive, only not ready
        body = wait_for(http, 503)
    assert body["status"] == "not ready" and body["broker"] == "ok"
    assert body["database"] == "unreachable"
    assert set(body["tasks"].values()) == {"not loaded"}
    assert "Error" not in json.dumps(body)  # no exception text for strangers
    error_id = body["errorIds"]["database"]
    [logged] = [r.getMessage() for r in caplog.records if error_id in r.getMessage()]
    assert "database unreachable" in logged and "Connect" in logged, logged


def test_a_silent_database_and_redis_time_out(tmp_path: Path, silent_port: int) -> None:
    settings = Settings(
        data_dir=tmp_path, database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{silent_port}/a",
        redis_url=f"redis://127.0.0.1:{silent_port}/0", ready_timeout_seconds=TIMEOUT)
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        ready = http.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["database"] == "timed out", body
    assert body["broker"] in {"timed out", "unreachable"}, body
    assert set(body["errorIds"]) == {"database", "broker"}


@pytest.mark.redis
def test_redis_away_leaves_the_server_ready_but_degraded(settings: Settings) -> None:
    redis_server = RedisServer().start()
    scaled = settings.model_copy(update={"redis_url": redis_server.url,
                                         "ready_timeout_seconds": TIMEOUT})
    try:
        with LiveServer(scaled) as server, httpx.Client(base_url=server.url) as http:
            assert wait_for(http, 200, status="ready")["broker"] == "ok"
            redis_server.kill()
            body = wait_for(http, 200, status="degraded")
            assert body["broker"] == "unreachable" and body["database"] == "ok", body
            assert body["tasks"] == {"breast_cancer": "serving", "loan_default": "serving"}
            assert "arbiter_degraded 1.0" in http.get("/metrics").text
            redis_server.start()
            assert wait_for(http, 200, status="ready")["broker"] == "ok"
            assert "arbiter_degraded 0.0" in http.get("/metrics").text
    finally:
        redis_server.kill()
