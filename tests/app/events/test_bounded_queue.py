"""A subscriber's bounded queue: the producer never waits, a subscriber that falls a whole
buffer behind is cut off after what it has, and an ended one gets what it has, then the
end; either way it is closed, and freed without waiting for the collector."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from app.errors import SubscriberTooSlowError
from app.events.bounded_queue import BoundedQueue
from app.events.subscribers import Fanout

WAIT_SECONDS = 5


class Recorded(BoundedQueue[int | str]):
    """A queue fed by nothing but the test, which records when it is closed."""

    def __init__(self, buffer: int) -> None:
        super().__init__(buffer)
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_a_subscriber_a_buffer_behind_gets_what_it_has_then_is_cut_off() -> None:
    async def scenario() -> None:
        queue = Recorded(3)
        for item in range(5):  # never waits on the subscriber
            queue.offer(item)
        queue.offer(5)  # after a gap, nothing more is queued
        assert [await queue.take() for _ in range(3)] == [0, 1, 2]
        assert queue.closed == 0
        with pytest.raises(SubscriberTooSlowError) as cut:
            await queue.take()
        assert (cut.value.dropped, cut.value.buffer) == (3, 3)
        assert queue.closed == 1

    asyncio.run(scenario())


def test_an_ended_queue_gives_what_it_has_then_the_end() -> None:
    async def scenario() -> None:
        queue = Recorded(8)
        waiting = asyncio.create_task(queue.take())
        await asyncio.sleep(0)
        queue.offer("a")  # wakes the subscriber waiting for it
        assert await asyncio.wait_for(waiting, WAIT_SECONDS) == "a"
        queue.offer("b")
        queue.end()
        queue.offer("c")  # too late: the producer is done
        assert await queue.take() == "b"
        assert queue.closed == 0
        assert await asyncio.wait_for(queue.take(), WAIT_SECONDS) is None
        assert queue.closed == 1

    asyncio.run(scenario())


def test_a_cut_off_subscription_is_freed_at_once_with_what_it_held() -> None:
    async def scenario() -> weakref.ref[object]:
        fanout = Fanout(2)
        sub = fanout.add(["t"], None)
        for n in range(3):
            fanout.deliver("t", {"n": n, "text": "x" * 2**16})
        assert [await anext(sub) for _ in range(2)] == [
            {"n": n, "text": "x" * 2**16} for n in range(2)]
        with pytest.raises(SubscriberTooSlowError):
            await anext(sub)
        assert fanout.feeds() == 0  # the bus let go of it
        return weakref.ref(sub)

    gc.disable()  # only reference counting: no cycle may hold it
    try:
        assert asyncio.run(scenario())() is None
    finally:
        gc.enable()
