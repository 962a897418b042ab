"""The circuit breaker in front of each Redis client: fail fast while Redis is unhealthy,
one probe at a time, and never stuck half-open when a probe does not report."""

from __future__ import annotations

import time

from app.events.breaker import CircuitBreaker, CircuitState

RESET = 0.2


def test_an_open_circuit_fails_fast_then_lets_one_probe_through() -> None:
    breaker = CircuitBreaker("test-open", reset_seconds=RESET)
    assert breaker.allow()
    breaker.failed(ConnectionError("refused"))
    assert breaker.state is CircuitState.OPEN and not breaker.allow()
    time.sleep(RESET * 1.5)
    assert breaker.allow() and breaker.state is CircuitState.HALF_OPEN
    assert not breaker.allow()  # one probe at a time
    breaker.succeeded()
    assert breaker.state is CircuitState.CLOSED and breaker.allow()


def test_a_probe_that_never_reports_is_replaced_after_the_reset_time() -> None:
    breaker = CircuitBreaker("test-lost-probe", reset_seconds=RESET)
    breaker.failed(ConnectionError("refused"))
    time.sleep(RESET * 1.5)
    assert breaker.allow()  # the probe raises something its caller does not catch
    assert not breaker.allow()
    time.sleep(RESET * 1.5)
    assert breaker.allow(), "stuck half-open: no call would ever reach Redis again"
    breaker.failed(ConnectionError("still refused"))
    assert breaker.state is CircuitState.OPEN and not breaker.allow()
