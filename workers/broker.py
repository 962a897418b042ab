"""The Dramatiq broker: Redis when ``ARBITER_REDIS_URL`` is set, else in-process."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import ClassVar

import dramatiq
import redis
from dramatiq.asyncio import EventLoopThread, get_event_loop_thread, set_event_loop_thread
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import join_all
from dramatiq.middleware import Retries
from dramatiq.middleware.asyncio import AsyncIO

from workers.metrics import JobMetrics

# Hard socket timeouts of the broker's Redis client: Dramatiq's own default is none, so a
# hung Redis (SIGSTOP, a dead link) blocked a send or a fetch for as long as it lasted.
# Dramatiq's consumer only polls (Lua scripts, no blocking commands): a read that takes
# this long means Redis is not answering.
BROKER_CONNECT_TIMEOUT_SECONDS = 1.0
BROKER_READ_TIMEOUT_SECONDS = 2.0
# How long the coroutines a stop cancels get for their cleanup (a rollback, closing their
# connections): a statement waiting for SQLite's lock may take its busy timeout (30 s).
CANCEL_WAIT_SECONDS = 35.0

log = logging.getLogger("arbiter.workers")


def redis_client(url: str) -> redis.Redis:
    """A Redis client that never waits longer than the broker's timeouts."""
    return redis.Redis.from_url(url, socket_connect_timeout=BROKER_CONNECT_TIMEOUT_SECONDS,
                                socket_timeout=BROKER_READ_TIMEOUT_SECONDS)


class OwnLoopAsyncIO(AsyncIO):
    """Dramatiq's AsyncIO middleware, where a worker's shutdown stops the event loop thread
    its own boot started. Dramatiq keeps one loop thread per process and stops whichever is
    current: in a process that hosts workers one after another (the test servers), a slow
    shutdown stopped the next worker's loop, its async actors stopped mid-transaction and
    left SQLite's write lock held ("database is locked" for every writer after)."""

    # id(worker) -> its loop thread, for every worker of the process (newest last)
    _loop_threads: ClassVar[dict[int, EventLoopThread]] = {}
    _registry_lock = threading.Lock()

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        loop_thread = EventLoopThread(self.logger)
        loop_thread.start(timeout=1.0)
        with self._registry_lock:
            self._loop_threads[id(worker)] = loop_thread
            set_event_loop_thread(loop_thread)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        with self._registry_lock:
            loop_thread = self._loop_threads.pop(id(worker), None)
            if loop_thread is None:
                return
            if get_event_loop_thread() is loop_thread:  # another worker's loop, if any
                others = list(self._loop_threads.values())
                set_event_loop_thread(others[-1] if others else None)
        loop_thread.stop()
        loop_thread.join()

    def cancel_running(self, worker: dramatiq.Worker, wait_seconds: float) -> tuple[int, int]:
        """Cancel the coroutines still running on ``worker``'s loop (the actors' and what
        they started) and wait up to ``wait_seconds`` for them to finish: their transactions
        roll back, their connections close. How many were cancelled, and how many of them
        had not finished by then (a loop blocked by synchronous code counts them all)."""
        with self._registry_lock:
            loop_thread = self._loop_threads.get(id(worker))
        if loop_thread is None or not loop_thread.loop.is_running():
            return 0, 0

        async def cancel_all() -> tuple[int, int]:
            running = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in running:
                task.cancel()
            if not running:
                return 0, 0
            _, pending = await asyncio.wait(running, timeout=wait_seconds)
            return len(running), len(pending)

        future = asyncio.run_coroutine_threadsafe(cancel_all(), loop_thread.loop)
        try:
            return future.result(timeout=wait_seconds + 1)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return -1, -1


def stop_worker(worker: dramatiq.Worker, timeout_ms: int) -> None:
    """Stop ``worker`` as ``Worker.stop`` does, but never with an actor mid-transaction.

    Dramatiq's stop waits ``timeout_ms`` for running actors and then stops the event loop
    under the ones still running: their coroutines never resumed, their SQLite connections
    stayed open inside a write transaction, and every writer of the database after them
    (the next server's, a CLI's) failed with "database is locked". Here the actors still
    running after ``timeout_ms`` are cancelled while the loop and the consumers still run, so
    they roll back, and the message fails as any interrupted job does (it runs again: the
    outbox and the periodic sweep send it, and every actor is idempotent)."""
    for thread in worker.workers:
        thread.stop()
    join_all(worker.workers, timeout_ms)
    if any(thread.is_alive() for thread in worker.workers):
        for middleware in worker.broker.middleware:
            if isinstance(middleware, OwnLoopAsyncIO):
                cancelled, unfinished = middleware.cancel_running(worker, CANCEL_WAIT_SECONDS)
                log.warning("jobs still running %d ms after the stop began: %s coroutine(s) "
                            "cancelled, %s left unfinished after waiting up to %.0f s; the "
                            "jobs run again", timeout_ms, "?" if cancelled < 0 else cancelled,
                            "?" if unfinished < 0 else unfinished, CANCEL_WAIT_SECONDS)
        join_all(worker.workers, timeout_ms)
    worker.stop(timeout=timeout_ms)


def build_broker(redis_url: str | None, namespace: str) -> dramatiq.Broker:
    """A broker with asyncio support (our actors are coroutines using the async DB layer)."""
    broker: dramatiq.Broker = (RedisBroker(client=redis_client(redis_url), namespace=namespace)
                               if redis_url else StubBroker())
    broker.add_middleware(OwnLoopAsyncIO())
    broker.add_middleware(JobMetrics(), before=Retries)
    return broker
