"""The live-quality gauges on ``/metrics``, set by whichever process last checked a task
(multiprocess mode ``mostrecent``, like the drift gauges)."""

from __future__ import annotations

from prometheus_client import Gauge

from app.quality.estimates import AutoQuality

ALL = "_all"  # the label value of the overall row

AUTO_ERROR_ESTIMATE = Gauge(
    "arbiter_auto_error_estimate",
    "Estimated error rate of AUTO predictions (audit sample and outcomes), by task, release "
    "version and predicted class (_all: overall); absent before the first labelled one",
    ["task", "release", "label"],
    multiprocess_mode="mostrecent",
)
AUTO_ERROR_UPPER_BOUND = Gauge(
    "arbiter_auto_error_upper_bound",
    "Time-uniform upper confidence bound of the AUTO error rate (as the estimate)",
    ["task", "release", "label"],
    multiprocess_mode="mostrecent",
)
AUTO_ERROR_LABELLED = Gauge(
    "arbiter_auto_error_labelled",
    "Labelled AUTO predictions the estimate is taken over (as the estimate)",
    ["task", "release", "label"],
    multiprocess_mode="mostrecent",
)
AUTO_ERROR_BOUND_EXCEEDED = Gauge(
    "arbiter_auto_error_bound_exceeded",
    "1 once live AUTO error of the release was shown above the task's max_auto_error",
    ["task", "release"],
    multiprocess_mode="mostrecent",
)


def record(quality: AutoQuality, alarmed: bool) -> None:
    """Set the gauges of one release's quality."""
    version = str(quality.release.version)
    for row in quality.rows:
        labels = (quality.task, version, row.label or ALL)
        AUTO_ERROR_LABELLED.labels(*labels).set(row.bounds.n)
        AUTO_ERROR_UPPER_BOUND.labels(*labels).set(row.bounds.upper)
        if row.bounds.estimate is not None:
            AUTO_ERROR_ESTIMATE.labels(*labels).set(row.bounds.estimate)
    AUTO_ERROR_BOUND_EXCEEDED.labels(quality.task, version).set(1.0 if alarmed else 0.0)
