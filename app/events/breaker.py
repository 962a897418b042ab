"""A circuit breaker for Redis: while Redis fails or hangs, callers fail fast instead of
waiting out a socket timeout each, and one probe at a time finds out when it is back.

Closed, every call goes through. A failure (an error, or a timeout: the clients' sockets
have hard timeouts) opens the circuit: for ``reset_seconds`` ``allow`` answers False and
the caller drops or defers its work (events are notices; outbox rows stay in the database).
Then one caller is let through as a probe (half-open): its success closes the circuit, its
failure opens it again. Thread-safe: the bus's sender thread and the relay's share it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from enum import StrEnum

from app.metrics import REDIS_CIRCUIT_OPENED, REDIS_UP

log = logging.getLogger("arbiter.events")

RESET_SECONDS = 1.0


class CircuitState(StrEnum):
    """Where a circuit stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """One per Redis client of a process, named for its metric label and log lines."""

    def __init__(self, name: str, reset_seconds: float = RESET_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._opened_at = 0.0
        self._lock = threading.Lock()
        REDIS_UP.labels(name).set(1)

    @property
    def state(self) -> CircuitState:
        return self._state

    def allow(self) -> bool:
        """May a call to Redis be made now? Open: no, until a probe is due (then yes, once).
        Half-open: no while the probe runs; a probe that never reported (it raised something
        its caller did not catch) is replaced by another after ``reset_seconds``."""
        with self._lock:
            if self._state is CircuitState.CLOSED:
                return True
            if self._clock() - self._opened_at >= self.reset_seconds:
                self._state = CircuitState.HALF_OPEN
                self._opened_at = self._clock()  # the next probe is due from now
                return True
            return False

    def succeeded(self) -> None:
        with self._lock:
            if self._state is not CircuitState.CLOSED:
                log.info("Redis answers again (%s): circuit closed", self.name)
                REDIS_UP.labels(self.name).set(1)
            self._state = CircuitState.CLOSED

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            if self._state is CircuitState.CLOSED:
                log.warning("Redis failed (%s: %r): circuit open, calls fail fast and one "
                            "probe every %.1f s", self.name, exc, self.reset_seconds)
                REDIS_UP.labels(self.name).set(0)
                REDIS_CIRCUIT_OPENED.labels(self.name).inc()
            self._state = CircuitState.OPEN
            self._opened_at = self._clock()
