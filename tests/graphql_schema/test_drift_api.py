"""driftReport over real HTTP on releases trained from a real snapshot: predictions on
shifted loans (``app.examples.loan.generate``) drift in exactly the shifted features, with
the hypothesis tests at a small sample and the distances at a large one; unshifted loans do
not drift; too few predictions give an "insufficient data" verdict."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import GraphQLObjectType

from app.examples.loan import generate
from app.ml.task import TaskSpec
from app.ml.training import TrainedRelease
from app.settings import Settings
from graphql_schema.schema import build_schema
from tests.support.inputs import frame_inputs
from tests.support.loans import LARGE, SEED, SHIFTED, SMALL
from tests.support.releases import store_with_snapshots
from tests.support.server import Api, LiveServer, make_key

TASK = "loan_default"
BATCH_ROWS = 300

REPORT = """query($w: String) { driftReport(task: "loan_default", window: $w) {
  task release window verdict drifted rows share shareThreshold message driftedFeatures
  features { feature kind test statistic value pValue threshold drifted status sampleSize
             referenceSize }
  prediction { feature test statistic drifted sampleSize }
  routingRate { start rate count } overturnRate { start rate count }
  outcomeErrorRate { start rate count } computedAt } }"""
BATCH = """mutation($i: [JSON!]!) { predictBatch(task: "loan_default", inputs: $i) { id } }"""


@pytest.fixture
def drift_settings(database_url: str, tmp_path: Path,
                   trained: dict[str, TrainedRelease]) -> Settings:
    s = Settings(data_dir=tmp_path / "data", database_url=database_url,
                 release_refresh_seconds=0.0)
    s.data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(store_with_snapshots(s, trained))
    return s


@pytest.fixture
def auditor(drift_settings: Settings) -> Iterator[tuple[Api, Api]]:
    """(auditor, predictor) on a live server."""
    with LiveServer(drift_settings) as server, \
            httpx.Client(base_url=server.url, timeout=300) as c:
        yield (Api(c, make_key(drift_settings, "auditor", "compliance")),
               Api(c, make_key(drift_settings, "predictor", "app")))


def data(body: dict[str, Any]) -> dict[str, Any]:
    assert "errors" not in body, body["errors"]
    result: dict[str, Any] = body["data"]
    return result


def predict(predictor: Api, task: TaskSpec, rows: int, **shift: float) -> None:
    inputs = frame_inputs(task, generate(rows, SEED, **shift))
    for start in range(0, rows, BATCH_ROWS):
        data(predictor(BATCH, i=inputs[start:start + BATCH_ROWS]))


def report(auditor: Api, window: str | None = "1h") -> dict[str, Any]:
    result: dict[str, Any] = data(auditor(REPORT, w=window))["driftReport"]
    return result


@pytest.mark.parametrize(("rows", "numeric", "categorical"),
                         [(SMALL, "ks", "chi2"), (LARGE, "wasserstein", "jensenshannon")])
def test_shifted_loans_drift_in_exactly_the_shifted_features(
        auditor: tuple[Api, Api], example_tasks: dict[str, TaskSpec], rows: int,
        numeric: str, categorical: str) -> None:
    api, predictor = auditor
    task = example_tasks[TASK]
    predict(predictor, task, rows, shift=1.0, long_terms=0.5)
    found = report(api)
    assert set(found["driftedFeatures"]) == SHIFTED
    by_name = {f["feature"]: f for f in found["features"]}
    assert set(by_name) == {f.name for f in task.features}
    for f in task.features:
        tested = by_name[f.name]
        assert tested["test"] == (numeric if f.type == "numeric" else categorical), tested
        assert tested["drifted"] == (f.name in SHIFTED), tested
        assert tested["referenceSize"] >= 4000
        assert tested["value"] == tested["statistic"]  # deprecated, still answered
        if tested["test"] in ("ks", "chi2"):
            assert tested["pValue"] == tested["statistic"] and tested["threshold"] == 0.05
            assert (tested["statistic"] < 0.05) == tested["drifted"]
        else:
            assert tested["pValue"] is None and tested["threshold"] == 0.1
            assert (tested["statistic"] > 0.1) == tested["drifted"]
    # credit history is optional: missing values are left out of the test
    assert by_name["credit_history_years"]["sampleSize"] < rows
    assert by_name["income"]["sampleSize"] == rows
    assert found["rows"] == rows and found["release"] == 1 and found["window"] == "1h"
    assert found["share"] == pytest.approx(len(SHIFTED) / len(task.features))
    # 4 of 10 features is below the default share of 0.5: not a drifted dataset
    assert found["shareThreshold"] == 0.5
    assert found["drifted"] is False and found["verdict"] == "NOT_DRIFTED"
    # the LIVE release's predicted classes and top probabilities, tested the same way
    predicted = {p["feature"]: p for p in found["prediction"]}
    assert predicted["predicted_class"]["test"] == categorical
    assert predicted["probability"]["test"] == numeric
    assert predicted["predicted_class"]["sampleSize"] == rows
    assert sum(b["count"] for b in found["routingRate"]) == rows
    assert len(found["routingRate"]) == 12


def test_unshifted_loans_do_not_drift(auditor: tuple[Api, Api],
                                      example_tasks: dict[str, TaskSpec]) -> None:
    api, predictor = auditor
    predict(predictor, example_tasks[TASK], SMALL)
    found = report(api, None)  # the task's default window (24h)
    assert found["window"] == "24h"
    assert found["driftedFeatures"] == [] and found["drifted"] is False
    assert found["verdict"] == "NOT_DRIFTED" and found["share"] == 0.0
    assert all(f["status"] == "NOT_DRIFTED" for f in found["features"])
    assert {p["feature"]: p["drifted"] for p in found["prediction"]} == {
        "predicted_class": False, "probability": False}


def test_recorded_outcomes_give_the_error_rate_per_bucket(
        auditor: tuple[Api, Api], example_tasks: dict[str, TaskSpec]) -> None:
    api, predictor = auditor
    task = example_tasks[TASK]
    body = data(predictor("""mutation($i: [JSON!]!) { predictBatch(task: "loan_default",
        inputs: $i) { id label } }""", i=frame_inputs(task, generate(40, SEED))))
    made = body["predictBatch"]
    other = {p["id"]: next(c for c in task.classes if c != p["label"]) for p in made}
    outcomes = [{"predictionId": p["id"], "label": other[p["id"]] if i < 5 else p["label"]}
                for i, p in enumerate(made[:20])]
    recorded = data(predictor("""mutation($o: [OutcomeInput!]!) { recordOutcomes(
        task: "loan_default", outcomes: $o) { recorded } }""", o=outcomes))
    assert recorded["recordOutcomes"]["recorded"] == 20
    found = report(api)
    series = found["outcomeErrorRate"]
    assert len(series) == 12 and sum(b["count"] for b in series) == 20
    assert sum((b["rate"] or 0) * b["count"] for b in series) == pytest.approx(5)
    assert all(b["rate"] is None for b in series if b["count"] == 0)


def test_too_few_predictions_are_insufficient_data_and_bad_input_is_refused(
        auditor: tuple[Api, Api], example_tasks: dict[str, TaskSpec]) -> None:
    api, predictor = auditor
    predict(predictor, example_tasks[TASK], 10, shift=1.0)
    found = report(api)
    assert found["verdict"] == "INSUFFICIENT_DATA" and found["drifted"] is False
    assert found["features"] == [] and found["rows"] == 10
    assert "insufficient data: 10 predictions" in found["message"]
    assert "min_rows" in found["message"]

    bad = api(REPORT, w="a week")
    assert bad["data"] is None
    assert bad["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    assert "'a week' is not a duration" in bad["errors"][0]["message"]
    refused = predictor(REPORT, w="1h")
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    unknown = api('{ driftReport(task: "nope") { drifted } }')
    assert unknown["errors"][0]["extensions"]["code"] == "UNKNOWN_TASK"


def test_a_release_without_a_snapshot_has_no_reference(settings: Settings) -> None:
    """conftest's releases are stored straight from a fit, with no training snapshot."""
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        admin = Api(c, make_key(settings, "admin", "ops"))
        body = admin(REPORT, w="1h")
    error = body["errors"][0]
    assert error["extensions"]["code"] == "NO_DRIFT_REFERENCE"
    assert "release 1 of loan_default has no training snapshot" in error["message"]
    assert "retrain" in error["message"]


def test_value_is_deprecated_for_statistic() -> None:
    drift = build_schema()._schema.type_map["FeatureDrift"]
    assert isinstance(drift, GraphQLObjectType)
    field = drift.fields["value"]
    assert field.deprecation_reason is not None and "statistic" in field.deprecation_reason
