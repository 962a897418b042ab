"""The circuit breaker in front of each Redis client: fail fast while Redis is unhealthy,
one probe at a time, and never stuck half-open when a probe does not report. Time is a
clock the test moves (sleeping made each `not allow()` depend on the next statement running
within the reset time)."""

from __future__ import annotations

import pytest

from app.events.breaker import CircuitBreaker, CircuitState

RESET = 0.2


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_an_open_circuit_fails_fast_then_lets_one_probe_through(clock: Clock) -> None:
    breaker = CircuitBreaker("test-open", reset_seconds=RESET, clock=clock)
    assert breaker.allow()
    breaker.failed(ConnectionError("refused"))
    assert breaker.state is CircuitState.OPEN and not breaker.allow()
    clock.advance(RESET * 0.9)
    assert not breaker.allow(), "open until the reset time"
    clock.advance(RESET * 0.2)
    assert breaker.allow() and breaker.state is CircuitState.HALF_OPEN
    assert not breaker.allow()  # one probe at a time
    breaker.succeeded()
    assert breaker.state is CircuitState.CLOSED and breaker.allow()


def test_a_probe_that_never_reports_is_replaced_after_the_reset_time(clock: Clock) -> None:
    breaker = CircuitBreaker("test-lost-probe", reset_seconds=RESET, clock=clock)
    breaker.failed(ConnectionError("refused"))
    clock.advance(RESET * 1.5)
    assert breaker.allow()  # the probe raises something its caller does not catch
    assert not breaker.allow()
    clock.advance(RESET * 0.9)
    assert not breaker.allow(), "the lost probe still has its reset time"
    clock.advance(RESET * 0.6)
    assert breaker.allow(), "stuck half-open: no call would ever reach Redis again"
    breaker.failed(ConnectionError("still refused"))
    assert breaker.state is CircuitState.OPEN and not breaker.allow()
