"""This process's subscribers: each holds a bounded buffer of the events of its topics.

A subscriber that falls ``buffer`` events behind gets ``SubscriberTooSlowError`` after the
events it already has; delivery never blocks on it. Both buses (``app.events.bus``) hand
what they receive to a ``Fanout``, on the loop the subscribers live on.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Iterable

from app.errors import EventsMissedError, SubscriberTooSlowError
from app.events.topics import Event

# Subscriptions opened up to this long after the last dropped event are told too: the
# publisher's clock and the listener's may differ a little, and telling too many is safe.
CLOCK_MARGIN_SECONDS = 1.0


class Subscription:
    """One subscriber's bounded buffer of events from some topics; iterate it, close it."""

    def __init__(self, bus: Fanout, topics: frozenset[str], buffer: int) -> None:
        self.topics = topics
        self.buffer = buffer
        self.dropped = 0
        self.interrupted = False
        self.opened_at = time.time()  # wall clock, compared with other processes' drops
        self._bus = bus
        self._events: collections.deque[Event] = collections.deque()
        self._ready = asyncio.Event()

    def offer(self, event: Event) -> None:
        """Called on the subscribers' loop; never blocks. A full buffer marks the gap."""
        if self.interrupted:
            return
        if self.dropped or len(self._events) >= self.buffer:
            self.dropped += 1
        else:
            self._events.append(event)
        self._ready.set()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        while not self._events:
            if self.dropped:
                self.close()
                raise SubscriberTooSlowError(self.dropped, self.buffer)
            if self.interrupted:
                self.close()
                raise EventsMissedError()
            self._ready.clear()
            await self._ready.wait()
        return self._events.popleft()

    def interrupt(self) -> None:
        """The stream this subscription hangs on was cut: it ends, after the events it
        already has, with ``EventsMissedError``."""
        self.interrupted = True
        self._ready.set()

    def close(self) -> None:
        self._bus.remove(self)


class Fanout:
    """The subscribers of one process by topic; touched only on their event loop."""

    def __init__(self, buffer: int) -> None:
        self.buffer = buffer
        self.loop: asyncio.AbstractEventLoop | None = None
        self._by_topic: dict[str, set[Subscription]] = collections.defaultdict(set)

    def add(self, topics: Iterable[str], buffer: int | None) -> Subscription:
        self.loop = asyncio.get_running_loop()
        sub = Subscription(self, frozenset(topics), buffer or self.buffer)
        for topic in sub.topics:
            self._by_topic[topic].add(sub)
        return sub

    def remove(self, sub: Subscription) -> None:
        for topic in sub.topics:
            subs = self._by_topic.get(topic)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_topic[topic]

    def deliver(self, topic: str, event: Event) -> None:
        for sub in list(self._by_topic.get(topic, ())):
            sub.offer(event)

    def interrupt(self) -> None:
        for sub in {s for subs in self._by_topic.values() for s in subs}:
            sub.interrupt()

    def interrupt_missed(self, dropped: dict[str, float]) -> None:
        """A publisher dropped events on these topics (topic -> time of its last drop):
        the subscriptions that were open then missed them."""
        for topic, last in dropped.items():
            for sub in list(self._by_topic.get(topic, ())):
                if sub.opened_at <= last + CLOCK_MARGIN_SECONDS:
                    sub.interrupt()

    def count(self) -> int:
        return len({s for subs in self._by_topic.values() for s in subs})

    def on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False


class Subscribers:
    """The subscribing half both buses share: this process's subscribers."""

    def __init__(self, buffer: int) -> None:
        self._fanout = Fanout(buffer)

    def subscribe(self, topics: Iterable[str], buffer: int | None = None) -> Subscription:
        """A bounded subscription (``buffer`` events, default the bus's) to ``topics``."""
        return self._fanout.add(topics, buffer)

    def subscribers(self) -> int:
        return self._fanout.count()
