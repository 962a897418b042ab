"""The drift gauges on ``/metrics``, set by whichever process last checked a task.

Multiprocess-safe (``mostrecent``): under ``prometheus_client``'s multiprocess mode the
value a scrape sees is the one written last by any process, not a sum over processes.
"""

from __future__ import annotations

from prometheus_client import Gauge

from app.drift.report import DriftReport, FeatureResult

DRIFT_SCORE = Gauge(
    "arbiter_drift_score",
    "Drift of one input feature in the last check: the distance for wasserstein and "
    "jensenshannon, 1 - p-value for ks and chi2 (higher is more drift)",
    ["task", "feature"],
    multiprocess_mode="mostrecent",
)
DRIFT_DETECTED = Gauge(
    "arbiter_drift_detected",
    "1 when the last drift check of the task found the dataset drifted, else 0",
    ["task"],
    multiprocess_mode="mostrecent",
)
PREDICTION_DRIFT_SCORE = Gauge(
    "arbiter_prediction_drift_score",
    "Drift of the LIVE release's predicted classes in the last check (as arbiter_drift_score)",
    ["task"],
    multiprocess_mode="mostrecent",
)


def score(result: FeatureResult) -> float | None:
    """One direction for every test: higher is more drift; None when not tested."""
    if result.statistic is None:
        return None
    return 1.0 - result.statistic if result.p_value is not None else result.statistic


def record(report: DriftReport) -> None:
    """Set the gauges of the report's task (features without a test are left as they were)."""
    DRIFT_DETECTED.labels(report.task).set(1.0 if report.drifted else 0.0)
    for result in report.features:
        value = score(result)
        if value is not None:
            DRIFT_SCORE.labels(report.task, result.feature).set(value)
    for result in report.prediction[:1]:  # the predicted class
        value = score(result)
        if value is not None:
            PREDICTION_DRIFT_SCORE.labels(report.task).set(value)
