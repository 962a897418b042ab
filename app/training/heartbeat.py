"""A fit running in a thread, watched from the event loop: its progress is written as it
comes, and a heartbeat keeps the job's claim alive when there is no news."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

HEARTBEAT_SECONDS = 2.0
PROGRESS_POLL_SECONDS = 0.2

Report = Callable[[float, str], Awaitable[None]]


class ProgressPump:
    """The fit reports into this from its thread (a fraction of the fit and a message);
    it holds the latest report as the job's progress between ``start`` and ``end``."""

    def __init__(self, start: float, end: float) -> None:
        self.start, self.end = start, end
        self.latest: tuple[float, str] = (start, "fitting")

    def __call__(self, fraction: float, message: str) -> None:
        self.latest = (self.start + (self.end - self.start) * fraction, message)


async def fit_with_heartbeat(work: Callable[[], Any], pump: ProgressPump,
                             on_progress: Report, on_beat: Report) -> Any:
    """Run ``work`` in a thread; new progress goes to ``on_progress`` within
    ``PROGRESS_POLL_SECONDS``; without news, ``on_beat`` every ``HEARTBEAT_SECONDS``."""
    fit = asyncio.ensure_future(anyio.to_thread.run_sync(work))
    last: tuple[float, str] | None = None
    beat = time.monotonic()
    while not fit.done():
        await asyncio.wait([fit], timeout=PROGRESS_POLL_SECONDS)
        if fit.done():
            break
        if pump.latest != last:
            last = pump.latest
            await on_progress(*last)
            beat = time.monotonic()
        elif time.monotonic() - beat >= HEARTBEAT_SECONDS:
            await on_beat(*pump.latest)
            beat = time.monotonic()
    return fit.result()
