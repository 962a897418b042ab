"""``GET /healthz``: the process is alive (no I/O). ``GET /readyz``: it can serve, i.e. the
database answers, the broker answers, and every task's LIVE release is loaded.

Each check has its own timeout and they run at once, so ``/readyz`` answers within one
timeout even when PostgreSQL or Redis hangs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.releases.registry import Registry

OK = "ok"
BrokerStatus = Callable[[float], Awaitable[str]]


async def database_status(engine: AsyncEngine, timeout: float) -> str:
    """"ok", or why ``SELECT 1`` did not answer within ``timeout``."""

    async def ping() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    return await _within(ping(), timeout)


async def _within(check: Awaitable[None], timeout: float) -> str:
    try:
        await asyncio.wait_for(check, timeout)
    except TimeoutError:
        return f"unreachable: no answer within {timeout:g} s"
    except Exception as exc:  # any failure of the check is the answer, not a crash
        return f"unreachable: {type(exc).__name__}: {exc}".rstrip(": ")
    return OK


class Health:
    """The two probes of one server process."""

    def __init__(self, engine: AsyncEngine, registry: Registry, broker: BrokerStatus,
                 timeout: float) -> None:
        self.engine = engine
        self.registry = registry
        self.broker = broker
        self.timeout = timeout

    async def healthz(self, _: Request) -> JSONResponse:
        return JSONResponse({"status": "alive"})

    async def readyz(self, _: Request) -> JSONResponse:
        database, broker = await asyncio.gather(
            database_status(self.engine, self.timeout), self._broker())
        tasks = self.registry.readiness()
        ready = database == OK and broker == OK and all(v == "ready" for v in tasks.values())
        body = {"status": "ready" if ready else "not ready", "database": database,
                "broker": broker, "tasks": tasks}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def _broker(self) -> str:
        try:  # the broker check has its own timeouts; this one is the backstop
            return await asyncio.wait_for(self.broker(self.timeout), self.timeout + 1)
        except TimeoutError:
            return f"unreachable: no answer within {self.timeout:g} s"

    def routes(self) -> list[Route]:
        return [Route("/healthz", self.healthz), Route("/readyz", self.readyz)]
