"""Stopping in-process workers. Two one after another (test servers, an embedded restart):
stopping the first never stops the second's event loop, so its async actors keep running
(Dramatiq's own middleware stopped whichever loop was current: the second's,
mid-transaction). One stopped while an actor is inside a transaction: the transaction rolls
back and the database is free for the next writer."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import dramatiq
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import text

from app.db.engine import SessionsPerLoop
from workers.broker import OwnLoopAsyncIO, stop_worker


class _Worker:
    """A stub broker with OwnLoopAsyncIO, one async actor recording into ``seen``, and a
    started worker."""

    def __init__(self, seen: list[str], name: str) -> None:
        self.broker = StubBroker()
        self.broker.add_middleware(OwnLoopAsyncIO())

        async def record(value: str) -> None:
            seen.append(value)

        self.actor = dramatiq.actor(record, broker=self.broker, actor_name=name, max_retries=0)
        self.worker = dramatiq.Worker(self.broker, worker_timeout=50)
        self.worker.start()

    def run(self, value: str) -> None:
        self.actor.send(value)
        self.broker.join(self.actor.queue_name, fail_fast=True)
        self.worker.join()


def test_stopping_one_worker_leaves_the_others_loop_running() -> None:
    seen: list[str] = []
    first, second = _Worker(seen, "first_record"), _Worker(seen, "second_record")
    try:
        first.run("one")
        first.worker.stop()  # the older worker goes first: the newer one's loop stays up
        second.run("two")
    finally:
        second.worker.stop()
    assert seen == ["one", "two"]


def test_stopping_the_newer_worker_hands_the_loop_back_to_the_older() -> None:
    seen: list[str] = []
    first, second = _Worker(seen, "older_record"), _Worker(seen, "newer_record")
    try:
        second.worker.stop()
        first.run("still")
    finally:
        first.worker.stop()
    assert seen == ["still"]


def test_a_worker_stopped_with_an_actor_mid_transaction_leaves_the_database_free(
        tmp_path: Path) -> None:
    # Dramatiq's stop waited for the actor, then stopped the loop under it: its SQLite
    # connection stayed open inside the write, and the next writer failed "database is
    # locked" (a test server's shutdown did this to the next server's first key).
    path = tmp_path / "held.sqlite"
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE t (x TEXT)")
    sessions = SessionsPerLoop(f"sqlite+aiosqlite:///{path}")
    inside = threading.Event()

    async def hold(value: str) -> None:
        async with sessions()() as session, session.begin():
            await (await session.connection()).execute(
                text("INSERT INTO t VALUES (:v)"), {"v": value})
            inside.set()
            await asyncio.sleep(600)  # a long job: still running when the worker stops

    broker = StubBroker()
    broker.add_middleware(OwnLoopAsyncIO())
    actor = dramatiq.actor(hold, broker=broker, actor_name="hold", max_retries=0)
    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    actor.send("held")
    assert inside.wait(60), "the actor never began its transaction"
    stop_worker(worker, timeout_ms=200)
    assert not any(thread.is_alive() for thread in worker.workers)

    after = sqlite3.connect(path, timeout=2)  # a writer that does not wait for long
    try:
        after.execute("INSERT INTO t VALUES ('after')")
        after.commit()
        assert after.execute("SELECT x FROM t").fetchall() == [("after",)], "rolled back"
    finally:
        after.close()
