"""Finding predictions: by the model's label, the reviewers' final label and a time range,
combined with the other filters; bad ranges are refused with what is wrong."""

from __future__ import annotations

import time

import httpx

from app.ml.task import TaskSpec
from app.settings import Settings
from tests.support.inputs import example_inputs
from tests.support.server import Api, make_key

BATCH = """mutation($i: [JSON!]!) { predictBatch(task: "loan_default", inputs: $i)
  { id label route createdAt } }"""
FIND = """query($label: String, $finalLabel: String, $after: DateTime, $before: DateTime,
    $route: Route, $status: PredictionStatus) {
  predictions(task: "loan_default", label: $label, finalLabel: $finalLabel, route: $route,
      status: $status,
      createdAfter: $after, createdBefore: $before, first: 100) {
    totalCount edges { node { id label finalLabel createdAt } } } }"""
CLAIM = """mutation { claimReview(task: "loan_default") {
  leaseToken item { prediction { id } } } }"""
SUBMIT = 'mutation($t: String!) { submitReview(leaseToken: $t, label: "default") { status } }'


def ids(body: dict[str, object]) -> set[str]:
    edges = body["data"]["predictions"]["edges"]  # type: ignore[index]
    return {e["node"]["id"] for e in edges}


def test_predictions_by_label_final_label_and_time(
        predictor: Api, admin: Api, http: httpx.Client, settings: Settings,
        example_tasks: dict[str, TaskSpec]) -> None:
    task = example_tasks["loan_default"]
    early = predictor(BATCH, i=example_inputs(task, 20, seed=4))["data"]["predictBatch"]
    time.sleep(0.05)
    late = predictor(BATCH, i=example_inputs(task, 10, seed=8))["data"]["predictBatch"]
    boundary = min(p["createdAt"] for p in late)
    assert max(p["createdAt"] for p in early) < boundary

    assert ids(admin(FIND, after=boundary)) == {p["id"] for p in late}  # inclusive
    assert ids(admin(FIND, before=boundary)) == {p["id"] for p in early}  # exclusive
    everyone = early + late
    label = everyone[0]["label"]
    assert ids(admin(FIND, label=label)) == {p["id"] for p in everyone if p["label"] == label}
    both = admin(FIND, label=label, after=boundary, route="REVIEW")
    assert ids(both) == {p["id"] for p in late if p["label"] == label and p["route"] == "REVIEW"}

    reviewer = Api(http, make_key(settings, "reviewer", "rita"))
    lease = reviewer(CLAIM)["data"]["claimReview"]
    assert reviewer(SUBMIT, t=lease["leaseToken"])["data"]["submitReview"]["status"] == "RESOLVED"
    reviewed = admin(FIND, finalLabel="default", status="REVIEWED")["data"]["predictions"]
    assert [e["node"]["id"] for e in reviewed["edges"]] == [lease["item"]["prediction"]["id"]]
    assert admin(FIND, finalLabel="late", status="REVIEWED")["data"]["predictions"][
        "totalCount"] == 0
    # AUTO predictions are final as the model said
    auto_default = {p["id"] for p in everyone if p["route"] == "AUTO" and p["label"] == "default"}
    assert ids(admin(FIND, finalLabel="default")) == auto_default | ids(
        {"data": {"predictions": reviewed}})


def test_a_bad_time_range_is_refused_with_what_is_wrong(admin: Api) -> None:
    backwards = admin(FIND, after="2026-02-01T00:00:00Z", before="2026-01-01T00:00:00Z")
    assert backwards["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    assert "createdAfter (2026-02-01T00:00:00+00:00) must be before createdBefore" in \
        backwards["errors"][0]["message"]
    naive = admin(FIND, after="2026-02-01T00:00:00")
    assert naive["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    assert "createdAfter needs a time zone" in naive["errors"][0]["message"]
    garbage = admin(FIND, after="last tuesday")
    assert "DateTime" in garbage["errors"][0]["message"]


def test_tasks_tell_reviewers_whether_explanations_wait(predictor: Api) -> None:
    body = predictor("{ tasks { name hideExplanation leaseSeconds } }")
    assert {t["name"]: (t["hideExplanation"], t["leaseSeconds"])
            for t in body["data"]["tasks"]} == {"breast_cancer": (False, 600.0),
                                                 "loan_default": (False, 600.0)}
