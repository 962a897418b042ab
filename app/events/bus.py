"""The event bus: live notices of stored predictions, review-queue changes and release
changes, for subscriptions.

Events are notices, not records: the database stays the source of truth, delivery is at
most once, and nothing a caller relies on fails because an event was lost. Topics and
the events published on them are in ``app.events.topics``; the subscribers' buffers in
``app.events.subscribers``.

Two buses share one API:

- ``LocalBus`` (embedded): events reach the subscribers of this process. ``publish`` is for
  coroutines, ``publish_sync`` for plain threads such as Dramatiq's worker threads; both
  hand the event to the loop the subscribers live on, thread-safely.
- ``RedisBus`` (``ARBITER_REDIS_URL`` set): events go to Redis channels
  ``<namespace>:events:<topic>``; each server process holds one pattern subscription and
  fans what arrives out to its own subscribers, reconnecting by itself when Redis restarts.

Each subscriber has a bounded buffer: a subscriber that falls ``buffer`` events behind gets
``SubscriberTooSlowError`` after the events it already has, and the bus never blocks on it.

Publishing, after the change committed (``Services.events`` in a server; the ``events``
argument of ``workers.actors.register`` in actors), goes through
``app.events.announcements.announce``; underneath::

    await events.publish(releases_topic(task), release_event(
        ReleaseEventKind.STAGE_CHANGED, task, version=3, from_stage="CANARY",
        to_stage="LIVE", traffic_percent=100.0, actor=caller.actor, reason="gate passed"))
    events.publish_sync(releases_topic(task), release_event(       # from a plain thread
        "TRAINING_PROGRESS", task, job_id=job_id, status="RUNNING", progress=0.4))

``publish`` works on any event loop (off the server's loop, Redis is reached through a
thread); ``publish_sync`` blocks for one Redis round trip at most. Neither raises when
Redis is down: the events are dropped, and once Redis takes events again (the next publish,
or a retry every second) the publisher tells every listener on which topics it dropped
events and when (``MISSED_TOPIC``), so that the subscriptions open then end with
``EVENTS_MISSED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

import redis
import redis.asyncio as aredis

from app.events.subscribers import Subscribers, Subscription
from app.events.topics import Event, Message
from app.settings import Settings

log = logging.getLogger("arbiter.events")

RECONNECT_MIN_SECONDS = 0.1
RECONNECT_MAX_SECONDS = 2.0
# After a failed publish, publishers skip Redis this long instead of waiting on every call.
PUBLISH_BACKOFF_SECONDS = 1.0
REDIS_TIMEOUT_SECONDS = 2.0
# A publisher's notice, published ahead of its next events once Redis takes them again:
# ``{"topics": {topic: wall time of the last event it dropped there}}``. Not a task's topic
# (those all have a ``kind.`` prefix), so older servers deliver it to nobody.
MISSED_TOPIC = "missed"


class EventBus(Protocol):
    """What publishers and subscribers use; ``LocalBus`` and ``RedisBus`` provide it."""

    async def publish(self, topic: str, event: Event) -> None: ...
    async def publish_many(self, messages: Sequence[Message]) -> None: ...
    def publish_sync(self, topic: str, event: Event) -> None: ...
    def subscribe(self, topics: Iterable[str], buffer: int | None = None) -> Subscription: ...
    def subscribers(self) -> int: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class LocalBus(Subscribers):
    """In-process delivery (embedded mode)."""

    def __init__(self, buffer: int = 256) -> None:
        super().__init__(buffer)

    async def publish(self, topic: str, event: Event) -> None:
        self.publish_sync(topic, event)

    async def publish_many(self, messages: Sequence[Message]) -> None:
        for topic, event in messages:
            self.publish_sync(topic, event)

    def publish_sync(self, topic: str, event: Event) -> None:
        """Safe from any thread or loop: delivery happens on the subscribers' loop."""
        fanout = self._fanout
        if fanout.loop is None:
            return  # nobody has ever subscribed
        if fanout.on_loop():
            fanout.deliver(topic, event)
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: the process is stopping
            fanout.loop.call_soon_threadsafe(fanout.deliver, topic, event)

    async def start(self) -> None:
        self._fanout.loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        return None


class RedisBus(Subscribers):
    """Redis pub/sub delivery (scaled out). ``listen=False`` for processes that only publish
    (workers); servers listen with one connection whatever the number of subscribers."""

    def __init__(self, url: str, namespace: str, buffer: int = 256, listen: bool = True) -> None:
        super().__init__(buffer)
        self.prefix = f"{namespace}:events:"
        self._url = url
        self._listen = listen
        self._sync = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_SECONDS,
                                          socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
        self._async: aredis.Redis | None = None
        self._listener: asyncio.Task[None] | None = None
        self._teller: asyncio.Task[None] | None = None
        self._down_until = 0.0
        self._down = False  # the last publish failed (warned once per outage)
        self._lock = threading.Lock()
        self._dropped: dict[str, float] = {}  # topic -> time of the last event not published
        self.connected = asyncio.Event()  # set while the listener holds its subscription
        self._gap = False  # the listener lost its subscription and has not got it back

    def _client(self) -> aredis.Redis:
        if self._async is None:
            self._async = aredis.Redis.from_url(
                self._url, socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
        return self._async

    def _skipping(self) -> bool:
        return time.monotonic() < self._down_until

    def _failed(self, exc: Exception, messages: Sequence[Message]) -> None:
        with self._lock:
            if not self._down:
                log.warning("cannot publish events to Redis (%s); dropping events until it "
                            "answers again (tried every %.0f s)", exc, PUBLISH_BACKOFF_SECONDS)
            self._down = True
            self._down_until = time.monotonic() + PUBLISH_BACKOFF_SECONDS
        self._drop(messages)

    def _drop(self, messages: Sequence[Message]) -> None:
        """Remember where events were lost, to tell the listeners once Redis is back."""
        now = time.time()
        with self._lock:
            for topic, _ in messages:
                if topic != MISSED_TOPIC:
                    self._dropped[topic] = now

    def _with_notice(self, messages: Sequence[Message]
                     ) -> tuple[list[Message], dict[str, float]]:
        """The messages, behind a notice of the events dropped so far if there were any."""
        with self._lock:
            dropped = dict(self._dropped)
        if not dropped:
            return list(messages), dropped
        return [(MISSED_TOPIC, {"topics": dropped}), *messages], dropped

    def _told(self, dropped: dict[str, float]) -> None:
        """The notice of ``dropped`` reached Redis: forget what it told (not later drops)."""
        with self._lock:
            if self._down:
                log.info("publishing events to Redis again; told the listeners about events "
                         "dropped on %d topics", len(dropped))
            self._down = False
            for topic, at in dropped.items():
                if self._dropped.get(topic) == at:
                    del self._dropped[topic]

    async def publish(self, topic: str, event: Event) -> None:
        await self.publish_many([(topic, event)])

    async def publish_many(self, messages: Sequence[Message]) -> None:
        """Publish in one round trip; with no messages, only the notice of dropped events
        if there is one to give."""
        if not messages and not self._dropped:
            return
        if self._skipping():
            self._drop(messages)
            return
        if not self._fanout.on_loop():
            # Another loop (an actor's) or none started: the async client belongs to the
            # loop that started the bus, so use the blocking client off this loop.
            await asyncio.to_thread(self._publish_blocking, messages)
            return
        sent, dropped = self._with_notice(messages)
        try:
            async with self._client().pipeline(transaction=False) as pipe:
                for topic, event in sent:
                    pipe.publish(self.prefix + topic, json.dumps(event))
                await pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._failed(exc, messages)
            return
        self._told(dropped)

    def publish_sync(self, topic: str, event: Event) -> None:
        """Blocking (one round trip to Redis); safe from any thread."""
        if self._skipping():
            self._drop([(topic, event)])
        else:
            self._publish_blocking([(topic, event)])

    def _publish_blocking(self, messages: Sequence[Message]) -> None:
        sent, dropped = self._with_notice(messages)
        try:
            pipe = self._sync.pipeline(transaction=False)
            for topic, event in sent:
                pipe.publish(self.prefix + topic, json.dumps(event))
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._failed(exc, messages)
            return
        self._told(dropped)

    async def start(self) -> None:
        """Start listening, and wait (at most ``REDIS_TIMEOUT_SECONDS``) until subscribed,
        so that the first subscribers miss nothing; if Redis is not there yet, those opened
        before it is end with ``EVENTS_MISSED`` once it is."""
        self._fanout.loop = asyncio.get_running_loop()
        self._teller = asyncio.create_task(self._tell_dropped())
        if self._listen:
            self._listener = asyncio.create_task(self._run_listener())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.connected.wait(), REDIS_TIMEOUT_SECONDS)

    async def _tell_dropped(self) -> None:
        """Tell the listeners about dropped events as soon as Redis takes them again, even
        if this process has nothing more to publish (a quiet worker)."""
        while True:
            await asyncio.sleep(PUBLISH_BACKOFF_SECONDS)
            if self._dropped:  # publish_many skips Redis while it backs off
                try:
                    await self.publish_many([])
                except Exception:  # it must keep trying: a notice lost is events unreported
                    log.exception("telling the listeners about dropped events failed")

    async def stop(self) -> None:
        if self._teller is not None:
            self._teller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._teller
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # it failed on its way out: the rest still shuts down
                log.warning("event listener stopped with %r", exc)
        if self._async is not None:
            await self._async.aclose()
        self._sync.close()

    async def _run_listener(self) -> None:
        """Subscribe, fan out, and on any connection failure wait and subscribe again.
        Events published while the listener was away are lost: the subscriptions open when
        it went away, and those opened before it was back, end with ``EVENTS_MISSED``; so do
        the subscriptions to a topic on which a publisher dropped events (told by its
        ``MISSED_TOPIC`` notice once it reaches Redis again)."""
        delay = RECONNECT_MIN_SECONDS
        while True:
            try:
                await self._listen_once()
            except Exception as exc:  # redis-py also raises RuntimeError from a transport
                # closed under its reconnect: whatever it is, the listener must not die
                log.warning("event subscription to Redis lost (%r); retrying in %.1f s",
                            exc, delay)
            if self.connected.is_set():  # it was listening: tell, and retry soon
                self._fanout.interrupt()
                delay = RECONNECT_MIN_SECONDS
            self.connected.clear()
            self._gap = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    async def _listen_once(self) -> None:
        # A connection of its own, without a read timeout: a quiet channel is not a failure.
        client = aredis.Redis.from_url(self._url, socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
                                       health_check_interval=10)
        try:
            async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.psubscribe(self.prefix + "*")
                if self._gap:  # subscribed during the outage: they missed its events
                    self._fanout.interrupt()
                    self._gap = False
                self.connected.set()
                log.info("listening for events on %s*", self.prefix)
                async for message in pubsub.listen():
                    if message["type"] != "pmessage":
                        continue
                    topic = message["channel"].decode()[len(self.prefix):]
                    if topic == MISSED_TOPIC:
                        self._fanout.interrupt_missed(json.loads(message["data"])["topics"])
                    else:
                        self._fanout.deliver(topic, json.loads(message["data"]))
        finally:
            await client.aclose()


def build_bus(settings: Settings, listen: bool = True) -> EventBus:
    """Redis when ``ARBITER_REDIS_URL`` is set, else in-process."""
    if settings.redis_url:
        return RedisBus(settings.redis_url, settings.redis_namespace,
                        settings.subscription_buffer, listen=listen)
    return LocalBus(settings.subscription_buffer)
