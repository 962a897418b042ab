"""The app's services called directly, without HTTP: one run of a coroutine against them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from app.main import build_services
from app.predictions.services import Services
from app.settings import Settings


def run_with(settings: Settings, work: Callable[[Services], Awaitable[Any]],
             review: dict[str, Any] | None = None) -> Any:
    """Run ``work`` with the app's services (registry re-reading stages on every call);
    ``review`` overrides review-policy fields of every task, e.g. required_reviews."""

    async def main() -> Any:
        services, engine = build_services(settings)
        if review:
            tasks = services.registry.tasks
            for name, task in tasks.items():
                tasks[name] = task.model_copy(
                    update={"review": task.review.model_copy(update=review)})
        try:
            return await work(services)
        finally:
            await services.drain()
            await engine.dispose()

    return asyncio.run(main())
