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

``publish`` works on any event loop and ``publish_sync`` from any thread; with Redis, both
only queue the events for the bus's sender thread (behind a circuit breaker, with hard
socket timeouts), so no caller ever waits for Redis. Neither raises when Redis is down:
the events are dropped, and once Redis takes events again (the next send, or a retry every
second) the publisher tells every listener on which topics it dropped events and when
(``MISSED_TOPIC``), so that the subscriptions open then end with ``EVENTS_MISSED``. A
listener that loses Redis, or hears nothing from it for ``LISTENER_DEAD_SECONDS`` (it pings
every ``HEARTBEAT_SECONDS``), ends this process's open subscriptions the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import redis
import redis.asyncio as aredis
from redis.asyncio.client import PubSub

from app.events.breaker import CircuitBreaker
from app.events.subscribers import Subscribers, Subscription
from app.events.topics import Event, Message
from app.settings import Settings

log = logging.getLogger("arbiter.events")

RECONNECT_MIN_SECONDS = 0.1
RECONNECT_MAX_SECONDS = 2.0
# After a failed publish, the circuit stays open this long (events are dropped, not sent).
PUBLISH_BACKOFF_SECONDS = 1.0
# Hard connect/read timeouts of every call to Redis.
REDIS_TIMEOUT_SECONDS = 1.0
# The listener pings this often, and gives Redis up (ending the open subscriptions with
# EVENTS_MISSED) after this long without a word: within 2 s of Redis hanging.
HEARTBEAT_SECONDS = 0.5
LISTENER_DEAD_SECONDS = 1.25
PENDING_MAX = 10_000  # batches of events waiting for the sender thread
SEND_BATCH = 500  # events in one pipeline
# A publisher's notice, published ahead of its next events once Redis takes them again:
# ``{"topics": {topic: wall time of the last event it dropped there}}``. Not a task's topic
# (those all have a ``kind.`` prefix), so older servers deliver it to nobody.
MISSED_TOPIC = "missed"


class EventBus(Protocol):
    """What publishers and subscribers use; ``LocalBus`` and ``RedisBus`` provide it."""

    async def publish(self, topic: str, event: Event) -> None: ...
    async def publish_many(self, messages: Sequence[Message]) -> None: ...
    def publish_sync(self, topic: str, event: Event) -> None: ...
    def subscribe(self, topics: Iterable[str], buffer: int | None = None,
                  listeners: Callable[[], int] | None = None) -> Subscription: ...
    def subscribers(self) -> int: ...
    def feeds(self) -> int: ...
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
    (workers); servers listen with one connection whatever the number of subscribers.

    Publishing never waits for Redis: once started, the bus queues what it is given and a
    sender thread of its own publishes it, behind a circuit breaker, with hard socket
    timeouts. A commit therefore never waits on a hung Redis; what cannot be sent (the
    circuit is open, the send failed, the queue is full) is dropped and told afterwards."""

    def __init__(self, url: str, namespace: str, buffer: int = 256, listen: bool = True) -> None:
        super().__init__(buffer)
        self.prefix = f"{namespace}:events:"
        self._url = url
        self._listen = listen
        self._sync = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_SECONDS,
                                          socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
        self.breaker = CircuitBreaker("events", PUBLISH_BACKOFF_SECONDS)
        self._pending: queue.Queue[list[Message] | None] = queue.Queue(PENDING_MAX)
        self._sender: threading.Thread | None = None
        self._listener: asyncio.Task[None] | None = None
        self._lock = threading.Lock()
        self._dropped: dict[str, float] = {}  # topic -> time of the last event not published
        self.connected = asyncio.Event()  # set while the listener holds its subscription
        self._gap = False  # the listener lost its subscription and has not got it back

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
        if not dropped:
            return
        log.info("told the event listeners about events dropped on %d topics", len(dropped))
        with self._lock:
            for topic, at in dropped.items():
                if self._dropped.get(topic) == at:
                    del self._dropped[topic]

    async def publish(self, topic: str, event: Event) -> None:
        self.post([(topic, event)])

    async def publish_many(self, messages: Sequence[Message]) -> None:
        """Queue the messages for the sender thread (never waits for Redis); before the
        bus is started, send them off the loop at once."""
        if self._sender is None:
            await asyncio.to_thread(self._send, list(messages))
        else:
            self.post(messages)

    def publish_sync(self, topic: str, event: Event) -> None:
        """Safe from any thread; never blocks once the bus is started."""
        self.post([(topic, event)])

    def post(self, messages: Sequence[Message]) -> None:
        """Hand messages to the sender thread, in order; a full queue drops them (told
        later). Before the bus is started (or after it stopped), send them right here."""
        if not messages:
            return
        if self._sender is None:
            self._send(list(messages))
            return
        try:
            self._pending.put_nowait(list(messages))
        except queue.Full:
            self._drop(messages)

    def _send(self, messages: list[Message]) -> None:
        """One pipeline to Redis, unless the circuit is open; a failure drops the messages."""
        if not messages and not self._dropped:
            return
        if not self.breaker.allow():
            self._drop(messages)
            return
        sent, dropped = self._with_notice(messages)
        try:
            pipe = self._sync.pipeline(transaction=False)
            for topic, event in sent:
                pipe.publish(self.prefix + topic, json.dumps(event))
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self.breaker.failed(exc)
            self._drop(messages)
            return
        self.breaker.succeeded()
        self._told(dropped)

    def _run_sender(self) -> None:
        """Send what is queued, in batches; every ``PUBLISH_BACKOFF_SECONDS`` of quiet, tell
        the listeners about dropped events if Redis takes them again (a quiet worker)."""
        while True:
            try:
                first = self._pending.get(timeout=PUBLISH_BACKOFF_SECONDS)
            except queue.Empty:
                first = []
            batch, stopping = list(first or ()), first is None
            while not stopping and len(batch) < SEND_BATCH:
                try:
                    more = self._pending.get_nowait()
                except queue.Empty:
                    break
                stopping = more is None
                batch += more or ()
            try:
                self._send(batch)
            except Exception:  # it must keep running: a dead sender drops every event
                log.exception("publishing events failed")
            if stopping:
                return

    async def start(self) -> None:
        """Start the sender and the listener, and wait (at most ``REDIS_TIMEOUT_SECONDS``)
        until subscribed, so that the first subscribers miss nothing; if Redis is not
        there yet, those opened before it is end with ``EVENTS_MISSED`` once it is."""
        self._fanout.loop = asyncio.get_running_loop()
        self._sender = threading.Thread(target=self._run_sender, name="arbiter-events",
                                        daemon=True)
        self._sender.start()
        if self._listen:
            self._listener = asyncio.create_task(self._run_listener())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.connected.wait(), REDIS_TIMEOUT_SECONDS)

    async def stop(self) -> None:
        if self._sender is not None:
            sender, self._sender = self._sender, None
            await asyncio.to_thread(self._stop_sender, sender)
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # it failed on its way out: the rest still shuts down
                log.warning("event listener stopped with %r", exc)
        self._sync.close()

    def _stop_sender(self, sender: threading.Thread) -> None:
        with contextlib.suppress(queue.Full):  # full: it is stuck on Redis; do not wait
            self._pending.put(None, timeout=REDIS_TIMEOUT_SECONDS)
        sender.join(timeout=2 * REDIS_TIMEOUT_SECONDS)

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
        # A connection of its own without a read timeout (a quiet channel is not a failure);
        # a hung Redis is noticed by the heartbeat instead.
        client = aredis.Redis.from_url(self._url, socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
        try:
            async with client.pubsub() as pubsub:
                await asyncio.wait_for(pubsub.psubscribe(self.prefix + "*"),
                                       REDIS_TIMEOUT_SECONDS)
                if self._gap:  # subscribed during the outage: they missed its events
                    self._fanout.interrupt()
                    self._gap = False
                self.connected.set()
                log.info("listening for events on %s*", self.prefix)
                await self._receive(pubsub)
        finally:
            await client.aclose()

    async def _receive(self, pubsub: PubSub) -> None:
        """Fan out what arrives; ping every ``HEARTBEAT_SECONDS`` and give up on Redis when
        nothing (not even a pong) came for ``LISTENER_DEAD_SECONDS``: a stopped Redis keeps
        its sockets open, and the subscribers must hear of it within seconds."""
        heard = pinged = time.monotonic()
        while True:
            message = await pubsub.get_message(timeout=HEARTBEAT_SECONDS)
            now = time.monotonic()
            if message is not None:
                heard = now
                self._dispatch(message)
            elif now - heard > LISTENER_DEAD_SECONDS:
                raise redis.ConnectionError(
                    f"Redis did not answer a ping within {LISTENER_DEAD_SECONDS:g} s")
            if now - pinged >= HEARTBEAT_SECONDS:
                await pubsub.ping()
                pinged = now

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message["type"] != "pmessage":
            return  # a pong or a subscription confirmation: it only proves Redis is there
        topic = message["channel"].decode()[len(self.prefix):]
        if topic == MISSED_TOPIC:
            self._fanout.interrupt_missed(json.loads(message["data"])["topics"])
        else:
            self._fanout.deliver(topic, json.loads(message["data"]))


def build_bus(settings: Settings, listen: bool = True) -> EventBus:
    """Redis when ``ARBITER_REDIS_URL`` is set, else in-process."""
    if settings.redis_url:
        return RedisBus(settings.redis_url, settings.redis_namespace,
                        settings.subscription_buffer, listen=listen)
    return LocalBus(settings.subscription_buffer)
