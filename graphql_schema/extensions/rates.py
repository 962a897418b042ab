"""Per-key request rates (moving windows, the ``limits`` library): shared by every server
through Redis when one is configured, counted in this process otherwise.

Redis trouble never stops a request: the client has short timeouts, and after a failure
the limits are counted in this process for ``REDIS_PAUSE_SECONDS`` before Redis is tried
again (a key then gets its rate per server for that while, not none)."""

from __future__ import annotations

import functools
import logging
import math
import time

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from redis.asyncio import ConnectionPool

from app.errors import RateLimitedError
from app.settings import Settings

log = logging.getLogger("arbiter.limits")
REDIS_TIMEOUT_SECONDS = 0.25
REDIS_PAUSE_SECONDS = 5.0


@functools.lru_cache(maxsize=64)
def rate_items(rate: str) -> list[RateLimitItem]:
    """The windows of a rate in ``limits`` notation ("300/second;10000/minute")."""
    return parse_many(rate)


class KeyRates:
    """Counts each API key's requests against its role's rate limit."""

    def __init__(self, settings: Settings) -> None:
        self._pool: ConnectionPool | None = None
        self._shared: MovingWindowRateLimiter | None = None
        if settings.redis_url:
            self._pool = ConnectionPool.from_url(
                settings.redis_url, socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
            self._shared = MovingWindowRateLimiter(RedisStorage(
                "async+" + settings.redis_url, wrap_exceptions=True, implementation="redispy",
                key_prefix=f"{settings.redis_namespace}:limits",
                connection_pool=self._pool))  # type: ignore[arg-type]
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._redis_paused_until = 0.0

    async def aclose(self) -> None:
        """Close the Redis connections (at the server's shutdown, on its event loop)."""
        if self._pool is not None:
            await self._pool.disconnect()

    def _limiter(self) -> MovingWindowRateLimiter:
        if self._shared is not None and time.monotonic() >= self._redis_paused_until:
            return self._shared
        return self._local

    async def hit(self, key_id: int, rate: str) -> None:
        """Count one request of the key; RateLimitedError (with the seconds to wait) when
        one of the rate's windows is full."""
        for item in rate_items(rate):
            limiter = self._limiter()
            try:
                allowed = await limiter.hit(item, str(key_id))
            except StorageError as exc:
                self._pause_redis(exc)
                allowed = await self._local.hit(item, str(key_id))
                limiter = self._local
            if not allowed:
                raise RateLimitedError(str(item), await self._retry_after(limiter, item,
                                                                          key_id))

    async def _retry_after(self, limiter: MovingWindowRateLimiter, item: RateLimitItem,
                           key_id: int) -> int:
        try:
            stats = await limiter.get_window_stats(item, str(key_id))
        except StorageError:
            return item.get_expiry()
        return max(1, math.ceil(stats.reset_time - time.time()))

    def _pause_redis(self, exc: Exception) -> None:
        if time.monotonic() >= self._redis_paused_until:
            log.warning("rate limits counted in this process for %.0f s: Redis failed (%s)",
                        REDIS_PAUSE_SECONDS, type(exc).__name__)
        self._redis_paused_until = time.monotonic() + REDIS_PAUSE_SECONDS
