"""Two in-process workers one after another (test servers, an embedded restart): stopping
the first never stops the second's event loop, so its async actors keep running (Dramatiq's
own middleware stopped whichever loop was current: the second's, mid-transaction)."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.stub import StubBroker

from workers.broker import OwnLoopAsyncIO


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
