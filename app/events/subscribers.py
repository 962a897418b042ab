"""This process's subscribers: each holds a bounded buffer of the events of its topics.

A subscriber that falls ``buffer`` events behind gets ``SubscriberTooSlowError`` after the
events it already has; delivery never blocks on it (``app.events.bounded_queue``). Both
buses (``app.events.bus``) hand what they receive to a ``Fanout``, on the loop the
subscribers live on.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable, Iterable

from app.errors import EventsMissedError
from app.events.bounded_queue import BoundedQueue
from app.events.topics import Event

# Subscriptions opened up to this long after the last dropped event are told too: the
# publisher's clock and the listener's may differ a little, and telling too many is safe.
CLOCK_MARGIN_SECONDS = 1.0


class Subscription(BoundedQueue[Event]):
    """One subscriber's bounded buffer of events from some topics; iterate it, close it.
    It ends only when the stream it hangs on was cut (``end``): after the events it
    already has, with ``EventsMissedError``."""

    def __init__(self, bus: Fanout, topics: frozenset[str], buffer: int,
                 listeners: Callable[[], int] | None = None) -> None:
        super().__init__(buffer)
        self.topics = topics
        self.listeners = listeners  # a shared stream's member count (None: one listener)
        self.opened_at = time.time()  # wall clock, compared with other processes' drops
        self._bus = bus

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        event = await self.take()
        if event is None:
            raise EventsMissedError()
        return event

    def close(self) -> None:
        """Stop receiving events (the bus forgets this subscription)."""
        self._bus.remove(self)


class Fanout:
    """The subscribers of one process by topic; touched only on their event loop."""

    def __init__(self, buffer: int) -> None:
        self.buffer = buffer
        self.loop: asyncio.AbstractEventLoop | None = None
        self._by_topic: dict[str, set[Subscription]] = collections.defaultdict(set)

    def add(self, topics: Iterable[str], buffer: int | None,
            listeners: Callable[[], int] | None = None) -> Subscription:
        self.loop = asyncio.get_running_loop()
        sub = Subscription(self, frozenset(topics), buffer or self.buffer, listeners)
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
            sub.end()

    def interrupt_missed(self, dropped: dict[str, float]) -> None:
        """A publisher dropped events on these topics (topic -> time of its last drop):
        the subscriptions that were open then missed them."""
        for topic, last in dropped.items():
            for sub in list(self._by_topic.get(topic, ())):
                if sub.opened_at <= last + CLOCK_MARGIN_SECONDS:
                    sub.end()

    def count(self) -> int:
        """Listeners served: one per subscription, or a shared stream's members."""
        subs = {s for subs in self._by_topic.values() for s in subs}
        return sum(1 if s.listeners is None else s.listeners() for s in subs)

    def feeds(self) -> int:
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

    def subscribe(self, topics: Iterable[str], buffer: int | None = None,
                  listeners: Callable[[], int] | None = None) -> Subscription:
        """A bounded subscription (``buffer`` events, default the bus's) to ``topics``;
        ``listeners``: how many it serves (a shared stream's members), default one."""
        return self._fanout.add(topics, buffer, listeners)

    def subscribers(self) -> int:
        """Listeners served in this process (a shared stream counts its members)."""
        return self._fanout.count()

    def feeds(self) -> int:
        """Subscriptions open on this bus (a shared stream holds one for all its members)."""
        return self._fanout.feeds()
