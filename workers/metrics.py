"""Counts every message our actors process, by outcome, in the process that ran it."""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy

from app.metrics import JOBS


class JobMetrics(dramatiq.Middleware):
    """``arbiter_jobs_total{actor,outcome}``: success, retry (the broker will deliver it
    again), failure (retries exhausted or not retryable) or skipped. Add it before
    ``Retries`` so that, as "after" hooks run in reverse order, it sees Retries' verdict."""

    def after_process_message(self, broker: dramatiq.Broker, message: MessageProxy, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        outcome = "success" if exception is None else "failure" if message.failed else "retry"
        JOBS.labels(message.actor_name, outcome).inc()

    def after_skip_message(self, broker: dramatiq.Broker,
                           message: MessageProxy) -> None:
        JOBS.labels(message.actor_name, "skipped").inc()
