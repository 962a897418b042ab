"""Risk-controlled routing end to end: a task with ``max_auto_error`` trains, serves its
certified thresholds as ``release.risk``, routes by them, and routes every prediction with
NOT_CERTIFIED when its calibration is too small to certify the bound."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.ml.task import TaskSpec, load_tasks
from app.ml.training import fit_release
from app.risk.certificates import RiskControl
from app.settings import Settings
from tests.support.releases import store_all
from tests.support.risk_tasks import risk_rows, write_risk_tasks
from tests.support.server import Api, LiveServer, make_key, run

RISK = """query($task: String!) { release(task: $task, version: 1) { risk {
  scope maxAutoError riskConfidence crossFittedRows
  classes { label certified threshold calibrationRows expectedRoutingRate rowsNeeded }
  overall { certified calibrationRows autoRows autoErrors upperBound } } } }"""

BATCH = """mutation($task: String!, $i: [JSON!]!) { predictBatch(task: $task, inputs: $i) {
  label probabilities { label probability } predictionSet
  route reasons { code detail value threshold } } }"""


@dataclass
class Served:
    api: Api
    tasks: dict[str, TaskSpec]
    risks: dict[str, RiskControl]


@pytest.fixture
def served(database_url: str, tmp_path: Path) -> Iterator[Served]:
    """Two tasks: "ample" (3,000 rows: 1,200 held out from training) and "scarce" (150: 60)."""
    folder = write_risk_tasks(tmp_path / "tasks")
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url,
                        tasks_dir=folder, release_refresh_seconds=0.0)
    settings.data_dir.mkdir()
    tasks = load_tasks(folder)
    trained = {name: fit_release(task) for name, task in tasks.items()}
    risks = {name: t.calibration.risk(tasks[name], tasks[name].review)
             for name, t in trained.items()}
    run(store_all(settings, trained))
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        yield Served(Api(c, make_key(settings, "admin", "risk")), tasks,
                     {k: v for k, v in risks.items() if v is not None})


def _inputs(n: int) -> list[dict[str, float]]:
    return risk_rows(n, 99)[["x1", "x2"]].to_dict("records")


def test_release_risk_shows_the_certified_thresholds(served: Served) -> None:
    body = served.api(RISK, task="ample")
    assert "errors" not in body, body
    risk = body["data"]["release"]["risk"]
    expected = served.risks["ample"]
    assert (risk["scope"], risk["maxAutoError"], risk["riskConfidence"]) == ("CLASS", 0.1, 0.9)
    assert [c["label"] for c in risk["classes"]] == ["good", "bad"]
    assert all(c["certified"] for c in risk["classes"])
    for shown, cert in zip(risk["classes"], expected.classes, strict=True):
        assert shown["threshold"] == cert.threshold and 0 < shown["threshold"] < 0.5
        assert shown["calibrationRows"] == cert.calibration_rows
        assert shown["expectedRoutingRate"] == pytest.approx(cert.expected_routing_rate)
    assert sum(c["calibrationRows"] for c in risk["classes"]) == 1200  # calibration + test
    assert risk["crossFittedRows"] == 0  # risk_calibration = "split": an exact bound
    overall = risk["overall"]
    assert overall["certified"] and overall["upperBound"] <= 0.1
    assert overall["autoErrors"] / overall["autoRows"] <= 0.1


def test_predictions_route_by_the_certified_threshold(served: Served) -> None:
    body = served.api(BATCH, task="ample", i=_inputs(300))
    assert "errors" not in body, body
    thresholds = {c.label: c.threshold for c in served.risks["ample"].classes}
    routes = set()
    for p in body["data"]["predictBatch"]:
        probabilities = [c["probability"] for c in p["probabilities"]]
        assert all(0.0 <= q <= 1.0 for q in probabilities)
        score = 1 - max(probabilities)
        threshold = thresholds[p["label"]]
        assert threshold is not None
        if score <= threshold:
            assert (p["route"], p["reasons"]) == ("AUTO", [])
        else:
            [reason] = p["reasons"]
            assert p["route"] == "REVIEW" and reason["code"] == "LOW_CONFIDENCE"
            assert reason["value"] == pytest.approx(score)
            assert reason["threshold"] == threshold
            assert f"certified for predictions of {p['label']}" in reason["detail"]
        routes.add(p["route"])
    assert routes == {"AUTO", "REVIEW"}, "the inputs hold rows on both sides"


def test_too_small_a_calibration_routes_everything_as_not_certified(served: Served) -> None:
    risk = served.api(RISK, task="scarce")["data"]["release"]["risk"]
    assert [c["certified"] for c in risk["classes"]] == [False, False]
    assert [c["threshold"] for c in risk["classes"]] == [None, None]
    assert all(c["expectedRoutingRate"] == 1.0 for c in risk["classes"])
    assert sum(c["calibrationRows"] for c in risk["classes"]) == 60
    body = served.api(BATCH, task="scarce", i=_inputs(50))
    assert "errors" not in body, body
    for p in body["data"]["predictBatch"]:
        [reason] = p["reasons"]
        assert (p["route"], reason["code"]) == ("REVIEW", "NOT_CERTIFIED")
        cert = next(c for c in risk["classes"] if c["label"] == p["label"])
        assert reason["value"] == cert["calibrationRows"]
        assert f"{cert['calibrationRows']} calibration rows predicted {p['label']} cannot " \
            "certify AUTO error <= 10.0% at 90% confidence" in reason["detail"]
