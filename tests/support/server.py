"""The real app over real HTTP: a server in a thread, GraphQL clients and their keys."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import anyio._core._fileio  # noqa: F401  (see below)
import httpx
import uvicorn

from app.access.keys import create_key
from app.db.engine import make_engine, make_sessionmaker
from app.main import build_app
from app.settings import Settings

# Starlette's FileResponse opens files through anyio, which imports that part on first use;
# pytest rewrites anyio's modules (anyio ships a pytest plugin), so that first use parses
# Python in the server's thread, and CPython 3.11's parser, parsing in two threads at once,
# failed a test with "AST constructor recursion depth mismatch". Imported here, up front.


def run(coro: Any) -> Any:
    """Run a coroutine to its end."""
    return asyncio.run(coro)


def make_key(settings: Settings, role: str, name: str) -> str:
    """A new API key of ``role``: its secret."""
    async def work() -> str:
        engine = make_engine(settings.resolved_database_url)
        try:
            async with make_sessionmaker(engine)() as session, session.begin():
                return (await create_key(session, role, name))[1]
        finally:
            await engine.dispose()

    return str(run(work()))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SHUTDOWN_SECONDS = 120


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
        # Waited for to its end: a server still shutting down while the next test's starts
        # shared its process with it (10 s was shorter than its worker's own stop timeout).
        self.server.should_exit = True
        self.thread.join(timeout=SHUTDOWN_SECONDS)
        if self.thread.is_alive():
            raise RuntimeError(f"test server still shutting down after {SHUTDOWN_SECONDS} s")


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


class People:
    """A predictor, a reviewer and an admin, each with a key, on one client."""
    def __init__(self, client: httpx.Client, settings: Settings) -> None:
        self.predictor = Api(client, make_key(settings, "predictor", "app"))
        self.reviewer = Api(client, make_key(settings, "reviewer", "rita"))
        self.admin = Api(client, make_key(settings, "admin", "ops"))
