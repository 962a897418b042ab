"""The event bus: in-process and over real Redis, from coroutines and from plain threads;
bounded buffers that cut off a slow subscriber without slowing anyone else; a Redis
restart that subscribers ride through without subscribing again."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis

from app.errors import EventsMissedError, SubscriberTooSlowError
from app.events.announcements import announce
from app.events.breaker import CircuitState
from app.events.bus import PUBLISH_BACKOFF_SECONDS, EventBus, LocalBus, RedisBus
from app.events.subscribers import CLOCK_MARGIN_SECONDS, Subscription
from app.events.topics import ReleaseEventKind, release_event, releases_topic, review_topic
from tests.support.redis_server import REDIS_URL, RedisServer, require_redis
from tests.support.tcp_proxy import TcpProxy

WAIT_SECONDS = 30


async def take(sub: Subscription, n: int) -> list[dict[str, object]]:
    return [await asyncio.wait_for(anext(sub), WAIT_SECONDS) for _ in range(n)]


def test_release_event_has_every_documented_key_and_checks_its_values() -> None:
    event = release_event(ReleaseEventKind.TRAINING_PROGRESS, "loan_default", version=3,
                          job_id="j1", progress=0.5, message="fitting members")
    assert event["kind"] == "TRAINING_PROGRESS" and event["progress"] == 0.5
    assert set(event) == {"kind", "task", "version", "fromStage", "toStage", "trafficPercent",
                          "actor", "reason", "at", "jobId", "status", "progress", "message"}
    with pytest.raises(ValueError, match="not a valid ReleaseEventKind"):
        release_event("PROMOTED", "loan_default")
    with pytest.raises(ValueError, match=r"progress must be within 0\.\.1"):
        release_event("TRAINING_PROGRESS", "loan_default", progress=1.5)


def test_local_bus_delivers_from_the_loop_and_from_threads_in_order() -> None:
    async def scenario() -> None:
        bus = LocalBus()
        await bus.start()
        sub = bus.subscribe([releases_topic("a")])
        other = bus.subscribe([releases_topic("b")])
        await bus.publish(releases_topic("a"), {"n": 0})
        # A Dramatiq worker thread publishes without a loop of its own.
        thread = threading.Thread(target=lambda: [
            bus.publish_sync(releases_topic("a"), {"n": n}) for n in range(1, 4)])
        thread.start()
        thread.join()
        assert [e["n"] for e in await take(sub, 4)] == [0, 1, 2, 3]
        await bus.publish(releases_topic("b"), {"n": "b"})
        assert await take(other, 1) == [{"n": "b"}]
        sub.close()
        other.close()
        assert bus.subscribers() == 0

    asyncio.run(scenario())


def test_announce_publishes_committed_events_in_order_on_their_topics() -> None:
    async def scenario() -> None:
        bus = LocalBus()
        await bus.start()
        releases, review = bus.subscribe([releases_topic("a")]), bus.subscribe([review_topic("a")])
        await announce(bus, [(releases_topic("a"), {"n": 1}), (review_topic("a"), {"n": 2}),
                             (releases_topic("a"), {"n": 3})])
        await announce(bus, [])  # nothing committed: nothing heard
        assert [e["n"] for e in await take(releases, 2)] == [1, 3]
        assert await take(review, 1) == [{"n": 2}]
        releases.close()
        review.close()

    asyncio.run(scenario())


async def _slow_subscriber_is_cut_off_alone(bus: EventBus, topic: str) -> None:
    slow = bus.subscribe([topic], buffer=3)
    fast = bus.subscribe([topic])
    for n in range(10):
        await bus.publish(topic, {"n": n})
        assert [e["n"] for e in await take(fast, 1)] == [n]  # never held back by `slow`
    assert [e["n"] for e in await take(slow, 3)] == [0, 1, 2]  # what it had, in order
    with pytest.raises(SubscriberTooSlowError) as cut:
        await take(slow, 1)
    assert cut.value.dropped == 7 and cut.value.buffer == 3
    assert bus.subscribers() == 1  # the slow one is gone, its memory with it
    fast.close()


def test_a_slow_subscriber_is_told_and_dropped_while_others_keep_up() -> None:
    async def scenario() -> None:
        bus = LocalBus()
        await bus.start()
        await _slow_subscriber_is_cut_off_alone(bus, releases_topic("t"))

    asyncio.run(scenario())


@pytest.fixture
def namespace() -> Iterator[str]:
    require_redis()
    yield f"arbiter-test-{uuid.uuid4().hex[:8]}"


async def _started(url: str, namespace: str, listen: bool = True) -> RedisBus:
    bus = RedisBus(url, namespace, listen=listen)
    await bus.start()
    if listen:
        await asyncio.wait_for(bus.connected.wait(), WAIT_SECONDS)
    return bus


@pytest.mark.redis
def test_redis_bus_fans_out_to_every_listening_process(namespace: str) -> None:
    async def scenario() -> None:
        servers = [await _started(REDIS_URL, namespace) for _ in range(2)]
        worker = await _started(REDIS_URL, namespace, listen=False)
        stranger = await _started(REDIS_URL, f"{namespace}-other")
        subs = [s.subscribe([releases_topic("t")]) for s in servers]
        unrelated = stranger.subscribe([releases_topic("t")], buffer=1)
        # A worker thread publishes; an actor's own loop publishes too.
        await asyncio.to_thread(worker.publish_sync, releases_topic("t"), {"n": 1})
        await worker.publish(releases_topic("t"), {"n": 2})
        for sub in subs:  # one publisher's events arrive in the order it published them
            assert [e["n"] for e in await take(sub, 2)] == [1, 2]
        await servers[0].publish_many([(releases_topic("t"), {"n": 3}),
                                       (releases_topic("u"), {"n": "elsewhere"})])
        for sub in subs:
            assert [e["n"] for e in await take(sub, 1)] == [3]
        await stranger.publish(releases_topic("t"), {"n": "own namespace"})
        assert await take(unrelated, 1) == [{"n": "own namespace"}]
        for bus in [*servers, worker, stranger]:
            await bus.stop()

    asyncio.run(scenario())


@pytest.mark.redis
def test_redis_bus_cuts_off_a_slow_subscriber_alone(namespace: str) -> None:
    async def scenario() -> None:
        bus = await _started(REDIS_URL, namespace)
        await _slow_subscriber_is_cut_off_alone(bus, releases_topic("t"))
        await bus.stop()

    asyncio.run(scenario())


@pytest.mark.redis
def test_a_redis_restart_ends_open_subscriptions_with_events_missed(namespace: str) -> None:
    server = RedisServer().start()

    async def scenario() -> None:
        bus = await _started(server.url, namespace)
        sub = bus.subscribe([releases_topic("t")])
        probe = bus.subscribe([releases_topic("t")])
        await bus.publish(releases_topic("t"), {"n": "before"})
        await bus.publish(releases_topic("t"), {"n": "kept"})
        assert await take(sub, 1) == [{"n": "before"}]
        # Both reached this process (one delivery fills every subscription): "kept" is in
        # sub's buffer before Redis goes, not still on its way from Redis.
        assert await take(probe, 2) == [{"n": "before"}, {"n": "kept"}]
        probe.close()

        server.kill()
        # While Redis is away publishing neither raises nor blocks: events are notices.
        await bus.publish(releases_topic("t"), {"n": "lost"})
        bus.publish_sync(releases_topic("t"), {"n": "lost too"})
        while bus.connected.is_set():  # the listener notices the lost connection
            await asyncio.sleep(0.05)
        # The open subscription gets what it had, then is told events may be missing.
        assert await take(sub, 1) == [{"n": "kept"}]
        with pytest.raises(EventsMissedError):
            await take(sub, 1)
        assert bus.subscribers() == 0

        during = bus.subscribe([releases_topic("t")])  # opened while Redis is away
        await asyncio.to_thread(server.start)
        await asyncio.wait_for(bus.connected.wait(), WAIT_SECONDS)  # resubscribed by itself
        with pytest.raises(EventsMissedError):  # it missed the outage's events too
            await take(during, 1)

        after = bus.subscribe([releases_topic("t")])
        publisher = await _started(server.url, namespace, listen=False)
        await publisher.publish(releases_topic("t"), {"n": "after"})
        assert await take(after, 1) == [{"n": "after"}]
        await publisher.stop()
        await bus.stop()

    try:
        asyncio.run(asyncio.wait_for(scenario(), WAIT_SECONDS * 3))
    finally:
        server.kill()


@pytest.mark.redis
def test_events_a_publisher_could_not_send_end_the_subscriptions_that_missed_them(
    namespace: str,
) -> None:
    """Redis stays up for the listening server; only the publisher (a worker) loses it.
    Once the publisher reaches Redis again, with or without new events to publish, its
    notice ends the subscriptions to the topics it dropped events on that were open then,
    and no others."""
    proxy = TcpProxy(int(REDIS_URL.split(":")[2].split("/")[0])).open()

    async def scenario() -> None:
        server = await _started(REDIS_URL, namespace)
        worker = await _started(f"redis://127.0.0.1:{proxy.port}/0", namespace, listen=False)
        missed = server.subscribe([releases_topic("t")])
        elsewhere = server.subscribe([releases_topic("u")])
        await worker.publish(releases_topic("t"), {"n": "before"})
        assert await take(missed, 1) == [{"n": "before"}]

        proxy.cut()
        await worker.publish(releases_topic("t"), {"n": "lost"})  # fails, then skipped:
        worker.publish_sync(releases_topic("t"), {"n": "lost too"})
        assert server.connected.is_set()  # the listener never noticed anything
        while worker.breaker.state is CircuitState.CLOSED:  # the sender dropped them
            await asyncio.sleep(0.02)

        await asyncio.sleep(PUBLISH_BACKOFF_SECONDS + CLOCK_MARGIN_SECONDS + 0.1)
        later = server.subscribe([releases_topic("t")])  # opened after the last drop
        proxy.open()
        # The worker has nothing more to publish: it tells anyway, once Redis is back.
        with pytest.raises(EventsMissedError):
            await take(missed, 1)
        await worker.publish_many([(releases_topic("t"), {"n": "after"}),
                                   (releases_topic("u"), {"n": "after"})])
        assert await take(later, 1) == [{"n": "after"}]
        assert await take(elsewhere, 1) == [{"n": "after"}]

        # Told once: the next events reach everyone without another notice.
        again = server.subscribe([releases_topic("t")])
        await worker.publish(releases_topic("t"), {"n": "next"})
        assert await take(again, 1) == [{"n": "next"}]
        assert await take(later, 1) == [{"n": "next"}]
        await worker.stop()
        await server.stop()

    try:
        asyncio.run(asyncio.wait_for(scenario(), WAIT_SECONDS * 3))
    finally:
        proxy.close()


def test_redis_publish_refuses_nothing_when_redis_was_never_there() -> None:
    async def scenario() -> None:
        bus = RedisBus("redis://127.0.0.1:1/0", "nowhere", listen=False)
        await bus.publish(releases_topic("t"), {"n": 1})
        bus.publish_sync(releases_topic("t"), {"n": 2})
        await bus.stop()

    asyncio.run(scenario())
    with pytest.raises(redis.ConnectionError):  # the address really is unreachable
        redis.Redis.from_url("redis://127.0.0.1:1/0").ping()


@pytest.mark.redis
def test_a_hung_redis_ends_subscriptions_while_still_hung_and_never_holds_a_publisher(
    namespace: str,
) -> None:
    """SIGSTOP keeps Redis's sockets open and silent: the listener's heartbeat gives it up
    and the open subscription ends with EVENTS_MISSED before Redis resumes; publishing
    meanwhile returns at once (the sender thread meets the timeout, the circuit opens);
    once Redis resumes the bus publishes again by itself."""
    server = RedisServer().start()

    async def scenario() -> None:
        bus = await _started(server.url, namespace)
        sub = bus.subscribe([releases_topic("t")])
        await bus.publish(releases_topic("t"), {"n": "before"})
        assert await take(sub, 1) == [{"n": "before"}]
        server.pause()
        try:
            for n in range(100):  # queued for the sender thread, never waited for
                await bus.publish(releases_topic("t"), {"n": n})
            with pytest.raises(EventsMissedError):
                await take(sub, 1)
            while bus.breaker.state is CircuitState.CLOSED:  # the sender met the timeout
                await asyncio.sleep(0.05)
        finally:
            server.resume()
        await asyncio.wait_for(bus.connected.wait(), WAIT_SECONDS)
        after = bus.subscribe([releases_topic("t")])
        while True:  # until the circuit lets a probe through and it reaches Redis
            await bus.publish(releases_topic("t"), {"n": "after"})
            try:
                event = await asyncio.wait_for(anext(after), 1)
            except TimeoutError:
                continue
            except EventsMissedError:  # opened right after the outage: told, reopen
                after = bus.subscribe([releases_topic("t")])
                continue
            assert event == {"n": "after"}
            break
        assert bus.breaker.state is CircuitState.CLOSED
        await bus.stop()

    try:
        asyncio.run(asyncio.wait_for(scenario(), WAIT_SECONDS * 3))
    finally:
        server.resume()
        server.kill()
