"""GraphQL documents that test modules of several areas send, and the checks of their
answers."""

from __future__ import annotations

import math
import time
from typing import Any

from app.ml.task import TaskSpec
from tests.support.server import Api

JOB_WAIT_SECONDS = 600  # an upper bound on waiting, not a speed requirement

# review
BATCH = 'mutation($i: [JSON!]!) { predictBatch(task: "loan_default", inputs: $i) { id route } }'
CLAIM = """mutation($id: ID) { claimReview(task: "loan_default", itemId: $id) {
  leaseToken expiresAt item { id status prediction { id label probabilities { label probability }
  explanation { baseValue outputValue } reasons { code } } } } }"""
SUBMIT = """mutation($t: String!, $l: String!) { submitReview(leaseToken: $t, label: $l,
  comment: "checked the file") { id status finalLabel resolution } }"""
ITEM = "query($id: ID!) { reviewItem(id: $id) { id status leaseExpiresAt } }"

# releases
RELEASE_FIELDS = ("task version stage trafficPercent stageHistory { fromStage toStage "
                  "trafficPercent actor reason at }")
PROMOTE = ("mutation($task: String!, $v: Int!, $stage: ReleaseStage!, $p: Float, $why: String!)"
           " { promoteRelease(task: $task, version: $v, stage: $stage, trafficPercent: $p, "
           "reason: $why) { " + RELEASE_FIELDS + " } }")
COMPARE = ("query($task: String!, $v: Int!) { releaseComparison(task: $task, version: $v) { "
           "version stage liveVersion overall { paired agreed agreement reviewed "
           "releaseAccuracy liveAccuracy } byClass { label paired agreement } } }")
PREDICTIONS = """subscription($task: String!, $only: Boolean!) {
  predictions(task: $task, onlyReview: $only) { id task route label status
    explanation { baseValue outputValue } } }"""
REVIEW_EVENTS = """subscription { reviewEvents(task: "loan_default") {
  itemId predictionId task change status waiting at } }"""
RELEASE_EVENTS = """subscription { releaseEvents(task: "loan_default") {
  kind task version fromStage toStage trafficPercent actor reason at jobId status progress
  message } }"""

# training
RETRAIN = """mutation($r: String!) { retrain(task: "loan_default", reason: $r) {
  id status trigger triggeredBy requests } }"""
JOB = """query($id: ID!) { trainingJob(id: $id) { id status progress message error
  release { version stage gate } } }"""

# predictions
CONTRACT = """
mutation($task: String!, $input: JSON!, $key: String) {
  predict(task: $task, input: $input, idempotencyKey: $key) {
    id task release label confidence
    probabilities { label probability } predictionSet
    members { name version label weight error probabilities { label probability }
              explanation { status space explainedClass baseValue outputValue
                            contributions { feature value shap derived } } }
    explanation { status space explainedClass baseValue outputValue
                  contributions { feature value shap derived } }
    route reasons { code detail } status finalLabel createdAt } }
"""


def check_prediction(task: TaskSpec, p: dict[str, Any]) -> None:
    """What every prediction must satisfy, whatever the task."""
    probs = {c["label"]: c["probability"] for c in p["probabilities"]}
    assert list(probs) == list(task.classes)
    assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-9)
    assert p["label"] == max(probs, key=probs.__getitem__)
    assert p["confidence"] == probs[p["label"]]
    ex = p["explanation"]
    assert ex["explainedClass"] == p["label"]
    total = ex["baseValue"] + sum(c["shap"] for c in ex["contributions"])
    assert abs(total - ex["outputValue"]) < 1e-6
    q = probs[p["label"]]
    if ex["space"] == "LOG_ODDS" and len(task.classes) == 2:
        assert abs(ex["outputValue"] - math.log(q / (1 - q))) < 1e-6
    elif ex["space"] == "LOG_ODDS":
        mean_log = sum(math.log(v) for v in probs.values()) / len(probs)
        assert abs(ex["outputValue"] - (math.log(q) - mean_log)) < 1e-6
    assert [c["feature"] for c in ex["contributions"]] == task.model_columns
    assert {m["name"] for m in p["members"]} == {m.name for m in task.members}
    check_members(p)
    assert set(p["predictionSet"]) <= set(task.classes)
    assert (p["route"] == "AUTO") == (not p["reasons"])
    if p["route"] == "AUTO":
        assert p["status"] == "ACCEPTED" and p["finalLabel"] == p["label"]
        assert p["predictionSet"] == [p["label"]]
    else:
        assert p["status"] == "PENDING_REVIEW" and p["finalLabel"] is None


def check_members(p: dict[str, Any]) -> None:
    """Each member explains the ensemble's class over the same features and values, exactly
    (base + SHAP = output), and the ensemble's SHAP values are their weighted sum."""
    ex = p["explanation"]
    features = [(c["feature"], c["value"], c["derived"]) for c in ex["contributions"]]
    for m in p["members"]:
        mex = m["explanation"]
        assert mex["explainedClass"] == ex["explainedClass"] and mex["space"] == ex["space"]
        assert [(c["feature"], c["value"], c["derived"]) for c in mex["contributions"]] == features
        total = mex["baseValue"] + sum(c["shap"] for c in mex["contributions"])
        assert abs(total - mex["outputValue"]) < 1e-6
    weight = sum(m["weight"] for m in p["members"])
    for j, c in enumerate(ex["contributions"]):
        mixed = sum(m["weight"] / weight * m["explanation"]["contributions"][j]["shap"]
                    for m in p["members"])
        assert abs(mixed - c["shap"]) < 1e-9


def data(body: dict[str, Any]) -> dict[str, Any]:
    """The data of a GraphQL answer, failing on any error."""
    assert "errors" not in body, body["errors"]
    result: dict[str, Any] = body["data"]
    return result


def wait_for_job(api: Api, job_id: str) -> dict[str, Any]:
    """Poll a training job until it SUCCEEDED or FAILED."""
    deadline = time.monotonic() + JOB_WAIT_SECONDS
    while time.monotonic() < deadline:
        job: dict[str, Any] = data(api(JOB, id=job_id))["trainingJob"]
        if job["status"] in ("SUCCEEDED", "FAILED"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"training job {job_id} did not finish: {job}")
