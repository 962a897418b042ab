"""``GET /healthz``: the process is alive (no I/O). ``GET /readyz``: this process can answer
predictions, i.e. the database answers and at least one task is served.

What it does not need is reported without failing the probe, so that a load balancer does
not drain a fleet that still serves: Redis (or the in-process worker) down, or a task
without a LIVE release or with a refused artifact, make it ``degraded`` (200). The body
names states only; why a check failed is logged with the id the body gives.

Each check has its own timeout and they run at once, so ``/readyz`` answers within one
timeout even when PostgreSQL or Redis hangs.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.metrics import DEGRADED
from app.releases.registry import Registry, TaskState

log = logging.getLogger("arbiter.health")

OK = "ok"
UNREACHABLE = "unreachable"
TIMED_OUT = "timed out"
# The broker's check answers a state of its own ("ok" or "stopped"), or raises.
BrokerStatus = Callable[[float], Awaitable[str]]


class Check:
    """One dependency's state, and the id under which its failure was logged."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = OK
        self.error_id: str | None = None

    async def run(self, check: Awaitable[str], timeout: float) -> Check:
        try:
            self.state = await asyncio.wait_for(check, timeout)
        except TimeoutError:
            self._failed(TIMED_OUT, f"no answer within {timeout:g} s")
        except Exception as exc:  # any failure of the check is the answer, not a crash
            self._failed(UNREACHABLE, f"{type(exc).__name__}: {exc}")
        return self

    def _failed(self, state: str, why: str) -> None:
        self.state, self.error_id = state, uuid.uuid4().hex[:12]
        log.warning("readiness: %s %s (error %s): %s", self.name, state, self.error_id, why)


async def ping_database(engine: AsyncEngine) -> str:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
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
            Check("database").run(ping_database(self.engine), self.timeout),
            # the broker check has its own timeouts; this one is the backstop
            Check("broker").run(self.broker(self.timeout), self.timeout + 1))
        tasks = self.registry.readiness()
        body = readiness_body(database, broker, tasks)
        DEGRADED.set(1 if body["status"] == "degraded" else 0)
        return JSONResponse(body, status_code=503 if body["status"] == "not ready" else 200)

    def routes(self) -> list[Route]:
        return [Route("/healthz", self.healthz), Route("/readyz", self.readyz)]


def readiness_body(database: Check, broker: Check, tasks: dict[str, TaskState]
                   ) -> dict[str, Any]:
    """Ready: everything answers and every task is served; degraded: predictions can be
    answered (database up, a task served) but something else is wrong; else not ready."""
    serving = any(state is TaskState.SERVING for state in tasks.values())
    if database.state != OK or not serving:
        status = "not ready"
    elif broker.state != OK or any(s is not TaskState.SERVING for s in tasks.values()):
        status = "degraded"
    else:
        status = "ready"
    body: dict[str, Any] = {"status": status, "database": database.state,
                            "broker": broker.state, "tasks": dict(tasks)}
    errors = {c.name: c.error_id for c in (database, broker) if c.error_id}
    if errors:
        body["errorIds"] = errors
    return body
