"""Micro-batching: concurrent requests' work gathered into one call.

Natural batching, as in group commit: a batcher runs one batch at a time per event loop;
whatever is submitted while a batch runs waits and goes into the next one, together. Under
load, batches grow by themselves; a lone request only waits ``window`` seconds (a few
hundred microseconds), for company that is on its way.

Used twice on the prediction path: rows of concurrent predictions become one ensemble call
(one ``predict_proba`` and one SHAP call per member, on the inference thread), and their
records become one transaction (one commit, one audit-lock hold).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import os
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from weakref import WeakKeyDictionary

from threadpoolctl import ThreadpoolController

from app.metrics import BATCH_SIZE

Item = TypeVar("Item")
T = TypeVar("T")

# A batch's outcome per item: its result, or the exception that item's caller gets.
Run = Callable[[list[Item]], Awaitable[Sequence[Any]]]


@dataclass
class _Pending(Generic[Item]):
    items: list[tuple[Item, asyncio.Future[Any]]] = field(default_factory=list)
    running: asyncio.Task[None] | None = None


class Batcher(Generic[Item]):
    """``await submit(item)`` returns that item's outcome of ``run`` over a batch of items
    (``run`` returns one result or exception per item, in order, and must not raise).
    A batch closes at ``max_size`` (summed by ``size``); an item larger than that goes
    alone."""

    def __init__(self, name: str, run: Run[Item], max_size: int, window: float,
                 size: Callable[[Item], int] = lambda _: 1) -> None:
        self.name = name
        self.run = run
        self.max_size = max_size
        self.window = window
        self.size = size
        # State per event loop: tests and jobs may use the same services on several loops.
        self._pending: WeakKeyDictionary[asyncio.AbstractEventLoop, _Pending[Item]] = \
            WeakKeyDictionary()

    async def submit(self, item: Item) -> Any:
        loop = asyncio.get_running_loop()
        pending = self._pending.setdefault(loop, _Pending())
        future: asyncio.Future[Any] = loop.create_future()
        pending.items.append((item, future))
        if pending.running is None:
            # A context of its own: the batch serves many requests, not the first one's.
            pending.running = loop.create_task(self._drain(pending),
                                               context=contextvars.Context())
        return await future

    async def drain(self) -> None:
        """Wait until the batches of this event loop are done: a caller that went away
        leaves its batch running (to commit or fail whole), and a shutdown that closed the
        loop under it would cut a transaction off mid-query."""
        pending = self._pending.get(asyncio.get_running_loop())
        while pending is not None and pending.running is not None:
            await asyncio.wait([pending.running])

    def _take(self, pending: _Pending[Item]) -> list[tuple[Item, asyncio.Future[Any]]]:
        taken, total = 0, 0
        for item, _ in pending.items:
            total += self.size(item)
            taken += 1
            if total >= self.max_size:
                break
        batch, pending.items = pending.items[:taken], pending.items[taken:]
        return batch

    async def _drain(self, pending: _Pending[Item]) -> None:
        batch: list[tuple[Item, asyncio.Future[Any]]] = []
        try:
            if self.window > 0:
                await asyncio.sleep(self.window)
            while pending.items:
                batch = self._take(pending)
                BATCH_SIZE.labels(self.name).observe(sum(self.size(i) for i, _ in batch))
                outcomes = await self.run([item for item, _ in batch])
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():  # its caller went away; the work is done all the same
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
                batch = []
        except BaseException as exc:  # cancelled at shutdown, or a bug in run: tell the callers
            for _, future in [*batch, *pending.items]:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception)
                                         else RuntimeError(f"{self.name} batcher stopped"))
            pending.items.clear()
            raise
        finally:
            pending.running = None


# Rows from which a call may use every core (below it, OpenMP's fork-join costs more than
# it saves: about 1 ms per single-row call on this kind of machine).
PARALLEL_ROWS = 2_000


class InferencePool:
    """The threads models run on, off the event loop. Each thread limits BLAS/OpenMP to one
    thread of its own (OpenMP's limit is per calling thread, so setting it on the event
    loop's thread does not reach these); calls with many rows lift it to every core."""

    def __init__(self, threads: int = 1) -> None:
        self._local = threading.local()
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="arbiter-inference",
                                            initializer=self._limit)
        self._cores = os.cpu_count() or 1

    def _limit(self) -> None:
        controller = ThreadpoolController()
        controller.limit(limits=1)
        self._local.controller = controller

    def _call(self, rows: int, fn: Callable[..., T], *args: Any) -> T:
        if rows < PARALLEL_ROWS or self._cores == 1:
            return fn(*args)
        with self._local.controller.limit(limits=self._cores):
            return fn(*args)

    async def run(self, rows: int, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on an inference thread; ``rows`` decides how many cores it may use."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._call, rows, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class _CollectorPause:
    """Counts the large batches in flight on this process's event loop; the cyclic garbage
    collector is off while there is one (and if it was on before the first)."""

    def __init__(self) -> None:
        self.holders = 0
        self.resume = False

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if self.holders == 0:
            self.resume = gc.isenabled()
            gc.disable()
        self.holders += 1
        try:
            yield
        finally:
            self.holders -= 1
            if self.holders == 0 and self.resume:
                gc.enable()


# A 10,000-row predictBatch makes about 1.5 million objects that live until it is answered;
# collections triggered by them walk them again and again (0.5 s of 10.7 s, measured). They
# hold no reference cycles, so pausing the collector for the batch loses nothing; reference
# counting still frees everything else meanwhile.
collector_paused = _CollectorPause()
