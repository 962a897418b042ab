"""One subscriber's bounded queue: what a producer offers waits there until the subscriber
takes it, and offering never blocks the producer.

A subscriber that falls ``buffer`` items behind is cut off with ``SubscriberTooSlowError``
after the items it already has; one whose producer ended gets what it has, then the end.
A bus subscription (``app.events.subscribers``) and a shared stream's member
(``app.events.multiplex``) are each one. Touched only on the loop the subscriber lives on.
"""

from __future__ import annotations

import asyncio
import collections
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

from app.errors import SubscriberTooSlowError

T = TypeVar("T")


class BoundedQueue(ABC, Generic[T]):
    """At most ``buffer`` items waiting for one subscriber; ``close`` lets go of what feeds
    it, and is called when the subscriber reaches the end (cut off or ended). A method,
    not a callback the queue holds: a closed queue is freed at once by reference counting,
    with whatever it still holds, instead of waiting in a cycle for the collector."""

    def __init__(self, buffer: int) -> None:
        self.buffer = buffer
        self.dropped = 0
        self.ended = False
        self._items: collections.deque[T] = collections.deque()
        self._ready = asyncio.Event()

    @abstractmethod
    def close(self) -> None:
        """Stop being fed (safe to call more than once)."""

    def offer(self, item: T) -> None:
        """Never blocks; a full queue marks the gap (the subscriber is cut off after it).
        Once ended, nothing more is queued."""
        if self.ended:
            return
        if self.dropped or len(self._items) >= self.buffer:
            self.dropped += 1
        else:
            self._items.append(item)
        self._ready.set()

    def end(self) -> None:
        """Nothing more comes: the subscriber takes what it has, then the end."""
        self.ended = True
        self._ready.set()

    async def take(self) -> T | None:
        """The next item; None once ended and everything queued was taken. Raises
        ``SubscriberTooSlowError`` (after the queued items) if the subscriber fell behind."""
        while not self._items:
            if self.dropped:
                self.close()
                raise SubscriberTooSlowError(self.dropped, self.buffer)
            if self.ended:
                self.close()
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()
