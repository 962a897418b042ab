"""The drift statistics (app.drift.report) called directly: which test each feature gets, where
each threshold cuts, the dataset verdict, the rates over time, and the [drift] settings."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from app.drift.report import (
    DriftReport,
    Recent,
    Verdict,
    bucket_rates,
    category_summary,
    choose_test,
    compare,
    drift_report,
    feature_reference,
    numeric_summary,
    prediction_reference,
)
from app.errors import BadRequestError, ConfigurationError
from app.ml.contract import to_matrix
from app.ml.drift_settings import DriftSettings, DriftTest, FeatureDrift, window_seconds
from app.ml.task import TaskSpec, load_task
from app.settings import EXAMPLE_TASKS_DIR
from tests.support.inputs import frame_inputs

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def normal(n: int, mean: float = 0.0, seed: int = 1) -> list[float]:
    return list(np.random.default_rng(seed).normal(mean, 1.0, n))


def numeric_ref(n: int = 5000) -> dict[str, Any]:
    return numeric_summary(np.asarray(normal(n, seed=0)), 0.0)


def counts(shares: dict[str, float], n: int) -> list[str]:
    return [c for c, s in shares.items() for _ in range(round(s * n))]


def test_the_test_follows_type_and_sample_size() -> None:
    assert choose_test(True, 1000) == (DriftTest.KS, 0.05)
    assert choose_test(True, 1001) == (DriftTest.WASSERSTEIN, 0.1)
    assert choose_test(False, 1000) == (DriftTest.CHI2, 0.05)
    assert choose_test(False, 1001) == (DriftTest.JENSEN_SHANNON, 0.1)
    assert choose_test(True, 50, FeatureDrift(test=DriftTest.WASSERSTEIN, threshold=0.3)) == (
        DriftTest.WASSERSTEIN, 0.3)
    assert choose_test(False, 5000, FeatureDrift(threshold=0.2)) == (
        DriftTest.JENSEN_SHANNON, 0.2)


def test_kolmogorov_smirnov_cuts_at_a_p_value_of_005() -> None:
    same = compare("x", numeric_ref(), normal(500, 0.0, seed=2), 30)
    moved = compare("x", numeric_ref(), normal(500, 0.3, seed=2), 30)
    assert same.test == moved.test == "ks"
    assert same.statistic is not None and same.statistic >= 0.05 and not same.drifted
    assert moved.statistic is not None and moved.statistic < 0.05 and moved.drifted
    assert moved.p_value == moved.statistic and moved.status == Verdict.DRIFTED


def test_wasserstein_is_in_reference_standard_deviations_and_cuts_at_01() -> None:
    small = compare("x", numeric_ref(), normal(3000, 0.05, seed=2), 30)
    large = compare("x", numeric_ref(), normal(3000, 0.2, seed=2), 30)
    assert small.test == large.test == "wasserstein"
    assert small.statistic is not None and small.statistic < 0.1 and not small.drifted
    # a shift of 0.2 standard deviations moves the distribution by about 0.2
    assert large.statistic == pytest.approx(0.2, abs=0.05) and large.drifted
    assert large.p_value is None


def test_chi_squared_and_jensen_shannon_on_categories() -> None:
    reference = category_summary(counts({"a": 0.5, "b": 0.3, "c": 0.2}, 5000), "abc", 0.0)
    same = compare("c", reference, counts({"a": 0.5, "b": 0.3, "c": 0.2}, 500), 30)
    moved = compare("c", reference, counts({"a": 0.4, "b": 0.3, "c": 0.3}, 500), 30)
    assert same.test == "chi2" and not same.drifted and same.statistic == pytest.approx(1, abs=1e-4)
    assert moved.test == "chi2" and moved.drifted and moved.statistic is not None
    assert moved.statistic < 0.05
    near = compare("c", reference, counts({"a": 0.48, "b": 0.32, "c": 0.2}, 4000), 30)
    far = compare("c", reference, counts({"a": 0.2, "b": 0.3, "c": 0.5}, 4000), 30)
    assert near.test == far.test == "jensenshannon"
    assert near.statistic is not None and near.statistic < 0.1 and not near.drifted
    assert far.statistic is not None and far.statistic > 0.1 and far.drifted


def test_a_category_the_reference_never_saw_is_drift_not_a_crash() -> None:
    reference = category_summary(counts({"a": 0.5, "b": 0.5}, 1000), ["a", "b", "c"], 0.0)
    result = compare("c", reference, counts({"a": 0.3, "b": 0.3, "c": 0.4}, 200), 30)
    assert result.drifted and result.statistic is not None and np.isfinite(result.statistic)


def test_missing_values_are_left_out_and_too_few_are_not_tested() -> None:
    values: list[float | None] = [None] * 80
    values += normal(20)
    result = compare("x", numeric_ref(), values, 30)
    assert result.status == Verdict.INSUFFICIENT_DATA and result.test is None
    assert result.sample_size == 20 and not result.drifted


def test_overrides_change_the_test_and_threshold() -> None:
    loose = FeatureDrift(test=DriftTest.KS, threshold=1e-12)
    result = compare("x", numeric_ref(), normal(3000, 0.3, seed=2), 30, loose)
    assert result.test == "ks" and result.threshold == 1e-12
    assert result.drifted == (result.statistic is not None and result.statistic < 1e-12)


def loan() -> TaskSpec:
    return load_task(EXAMPLE_TASKS_DIR / "loan_default.toml")


def recent(task: TaskSpec, rows: list[dict[str, Any]], routes: list[str] | None = None,
           finals: Sequence[str | None] | None = None) -> Recent:
    n = len(rows)
    return Recent(rows, [NOW - timedelta(minutes=i % 60) for i in range(n)],
                  routes or ["AUTO"] * n, ["repaid"] * n, list(finals or [None] * n), [0.9] * n,
                  [True] * n)


def loan_rows(task: TaskSpec, n: int, seed: int, **shift: float) -> list[dict[str, Any]]:
    from app.examples.loan import generate
    return frame_inputs(task, generate(n, seed, **shift))


def test_the_dataset_drifts_when_the_share_of_drifted_features_reaches_the_threshold() -> None:
    task = loan()
    reference = feature_reference(task, to_matrix(task, loan_rows(task, 6000, 2026)))
    rows = loan_rows(task, 3000, 3, shift=1.0, long_terms=0.5)
    at_half = drift_report(task, 1, reference, None, recent(task, rows), task.drift, "1h",
                           NOW, 3600)
    assert set(at_half.drifted_features) == {"income", "loan_amount", "employment",
                                             "term_months"}
    assert at_half.share == pytest.approx(0.4) and not at_half.drifted
    assert "no prediction reference" in at_half.message
    lower = task.drift.model_copy(update={"share": 0.4})
    at_40 = drift_report(task, 1, reference, None, recent(task, rows), lower, "1h", NOW, 3600)
    assert at_40.drifted and at_40.verdict == Verdict.DRIFTED
    ignored = task.drift.model_copy(update={"share": 0.4, "features": {
        "income": FeatureDrift(ignore=True)}})
    without = drift_report(task, 1, reference, None, recent(task, rows), ignored, "1h", NOW,
                           3600)
    assert "income" not in [f.feature for f in without.features]
    assert without.share == pytest.approx(3 / 9) and not without.drifted


def test_prediction_drift_compares_classes_and_top_probabilities() -> None:
    task = loan()
    rng = np.random.default_rng(0)
    proba = rng.dirichlet([8, 1, 1], 2000)  # mostly "repaid"
    reference = prediction_reference(task, proba)
    assert reference["predicted_class"]["counts"]["repaid"] > 1500
    rows = loan_rows(task, 400, 3)
    same = recent(task, rows)
    moved = recent(task, rows)
    moved.labels = ["default"] * 200 + ["repaid"] * 200
    moved.confidence = [0.5] * 400
    features = feature_reference(task, to_matrix(task, loan_rows(task, 3000, 2026)))
    quiet = drift_report(task, 1, features, reference, same, task.drift, "1h", NOW, 3600)
    assert [p.feature for p in quiet.prediction] == ["predicted_class", "probability"]
    loud = drift_report(task, 1, features, reference, moved, task.drift, "1h", NOW, 3600)
    assert loud.prediction_drifted and all(p.drifted for p in loud.prediction)


def test_too_few_rows_give_insufficient_data_without_any_test() -> None:
    task = loan()
    features = feature_reference(task, to_matrix(task, loan_rows(task, 1000, 2026)))
    report = drift_report(task, 1, features, None, recent(task, loan_rows(task, 29, 1)),
                          task.drift, "1h", NOW, 3600)
    assert report.verdict == Verdict.INSUFFICIENT_DATA and not report.drifted
    assert report.features == [] and "at least 30 needed" in report.message


def test_routing_and_overturn_rates_per_bucket() -> None:
    start = NOW - timedelta(hours=12)
    times = [start + timedelta(minutes=30), start + timedelta(minutes=40),
             start + timedelta(hours=11, minutes=59)]
    routed = bucket_rates(start, NOW, times, [True, False, True], [True, True, True])
    assert len(routed) == 12 and routed[0].start == start
    assert (routed[0].rate, routed[0].count) == (0.5, 2)
    assert (routed[11].rate, routed[11].count) == (1.0, 1)
    assert routed[5].rate is None and routed[5].count == 0
    task = loan()
    rows = loan_rows(task, 40, 1)
    r = recent(task, rows, routes=["REVIEW"] * 10 + ["AUTO"] * 30,
               finals=["default"] * 5 + ["repaid"] * 5 + ["repaid"] * 30)
    features = feature_reference(task, to_matrix(task, loan_rows(task, 1000, 2026)))
    report = drift_report(task, 1, features, None, r, task.drift, "1h", NOW, 3600)
    assert sum(b.count for b in report.routing_rate) == 40
    routed_share = sum((b.rate or 0) * b.count for b in report.routing_rate) / 40
    assert routed_share == pytest.approx(10 / 40)
    # overturned: reviewed predictions whose final label differs from the model's ("repaid")
    assert sum(b.count for b in report.overturn_rate) == 10
    overturned = sum((b.rate or 0) * b.count for b in report.overturn_rate)
    assert overturned == pytest.approx(5)
    # no outcome recorded: an empty series of 12 buckets
    assert [b.count for b in report.outcome_error_rate] == [0] * 12
    r.outcomes = ["default"] * 3 + ["repaid"] * 7 + [None] * 30
    report = drift_report(task, 1, features, None, r, task.drift, "1h", NOW, 3600)
    assert sum(b.count for b in report.outcome_error_rate) == 10
    wrong = sum((b.rate or 0) * b.count for b in report.outcome_error_rate)
    assert wrong == pytest.approx(3)


def test_a_report_survives_its_json_round_trip() -> None:
    task = loan()
    features = feature_reference(task, to_matrix(task, loan_rows(task, 1000, 2026)))
    report = drift_report(task, 3, features, None, recent(task, loan_rows(task, 200, 1)),
                          task.drift, "1h", NOW, 3600)
    again = DriftReport.from_json(report.to_json())
    assert again == report
    stored_before = {k: v for k, v in report.to_json().items() if k != "outcome_error_rate"}
    assert DriftReport.from_json(stored_before).outcome_error_rate == []


def test_reference_samples_are_bounded_and_deterministic() -> None:
    task = loan()
    X = to_matrix(task, loan_rows(task, 6000, 2026))
    first, second = feature_reference(task, X), feature_reference(task, X)
    assert first == second
    income = first["features"]["income"]
    assert len(income["sample"]) == 5000 and income["rows"] == 5000
    assert set(income["quantiles"]) == {"p05", "p25", "p50", "p75", "p95"}
    history = first["features"]["credit_history_years"]
    assert history["missing"] == pytest.approx(0.1, abs=0.02)
    assert set(first["features"]["has_cosigner"]["counts"]) == {"false", "true"}
    assert sum(first["features"]["employment"]["counts"].values()) == 6000


@pytest.mark.parametrize(("window", "seconds"),
                         [("90m", 5400), ("24h", 86400), ("7d", 604800), ("2w", 1209600)])
def test_windows(window: str, seconds: int) -> None:
    assert window_seconds(window) == seconds


@pytest.mark.parametrize("window", ["", "24", "h", "1.5h", "-1h", "0h", "3y", "400d"])
def test_bad_windows_are_refused_by_name(window: str) -> None:
    with pytest.raises(BadRequestError, match="window"):
        window_seconds(window)


def with_drift(tmp_path: Any, table: str) -> TaskSpec:
    text = (EXAMPLE_TASKS_DIR / "loan_default.toml").read_text() + "\n" + table
    path = tmp_path / "loan_default.toml"
    path.write_text(text)
    return load_task(path)


def test_drift_settings_from_the_task_file(tmp_path: Any) -> None:
    task = with_drift(tmp_path, """[drift]
window = "7d"
share = 0.3
min_rows = 50
check_every_minutes = 15
retrain_on_drift = true
[drift.features.income]
test = "ks"
threshold = 0.01
[drift.features.purpose]
ignore = true
""")
    assert task.drift.window == "7d" and task.drift.share == 0.3
    assert task.drift.retrain_on_drift and task.drift.check_every_minutes == 15
    assert task.drift.features["income"].test is DriftTest.KS
    assert task.drift.features["purpose"].ignore
    assert DriftSettings() == loan().drift  # the example declares none: the defaults


@pytest.mark.parametrize(("table", "message"), [
    ('[drift]\nwindow = "soon"', "window 'soon' is not a duration"),
    ("[drift]\nshare = 1.5", "drift.share"),
    ("[drift]\nmin_rows = 1", "drift.min_rows"),
    ("[drift]\nretrain_on_drfit = true", "retrain_on_drfit"),
    ('[drift.features.salary]\ntest = "ks"', "'salary' is not an input feature"),
    ('[drift.features.employment]\ntest = "ks"', "test 'ks' does not fit a categorical"),
    ('[drift.features.income]\ntest = "chi2"', "test 'chi2' does not fit a numeric"),
    ('[drift.features.income]\ntest = "ks"\nthreshold = 2', "must be below 1"),
    ('[drift.features.income]\ntest = "t-test"', "drift.features.income.test"),
])
def test_bad_drift_settings_name_what_is_wrong(tmp_path: Any, table: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=r"loan_default\.toml is invalid") as error:
        with_drift(tmp_path, table)
    assert message in str(error.value)
