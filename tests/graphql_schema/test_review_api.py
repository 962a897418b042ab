"""Reviewers over real HTTP: claim, see, label, and leases that lapse through the embedded
Dramatiq worker fed by the outbox relay."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from app.ml.task import TaskSpec
from app.settings import Settings
from tests.support.documents import BATCH, CLAIM, ITEM, SUBMIT
from tests.support.inputs import example_inputs
from tests.support.server import Api, LiveServer, People, make_key


@pytest.fixture
def people(request: pytest.FixtureRequest, settings: Settings) -> Iterator[People]:
    review = getattr(request, "param", None)
    with LiveServer(settings, review) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        yield People(client, settings)

AGREEMENT = """{ reviewAgreement(task: "loan_default") {
  overall { items pairs pairwiseAgreement cohenItems cohenKappa
            fleiss { ratersPerItem items kappa } fleissGroups { ratersPerItem items kappa } }
  reviewers { reviewer reviews adjudications resolvedReviews finalAgreement peerPairs
              peerAgreement overturnRate }
  classes { label items modelAccuracy reviews finalAgreement pairs pairwiseAgreement }
  releases { release items reviews overturnRate resolvedItems finalOverturnRate pairs
             pairwiseAgreement } } }"""


def route_some(people: People, tasks: dict[str, TaskSpec]) -> list[str]:
    rows = people.predictor(BATCH, i=example_inputs(tasks["loan_default"], 60, seed=4))
    return [p["id"] for p in rows["data"]["predictBatch"] if p["route"] == "REVIEW"]


def test_a_reviewer_claims_sees_and_labels(people: People,
                                          example_tasks: dict[str, TaskSpec]) -> None:
    routed = route_some(people, example_tasks)
    listing = people.reviewer('{ reviewItems(task: "loan_default", status: PENDING) '
                              '{ totalCount edges { node { id priority } } } }')
    assert listing["data"]["reviewItems"]["totalCount"] == len(routed)
    lease = people.reviewer(CLAIM)["data"]["claimReview"]
    assert lease["item"]["status"] == "CLAIMED"
    assert lease["item"]["prediction"]["id"] in routed
    assert lease["item"]["prediction"]["explanation"] is not None
    done = people.reviewer(SUBMIT, t=lease["leaseToken"], l="default")["data"]["submitReview"]
    assert done == {"id": lease["item"]["id"], "status": "RESOLVED", "finalLabel": "default",
                    "resolution": "AGREEMENT"}
    stored = people.admin("query($id: ID!) { prediction(id: $id) { status finalLabel } }",
                          id=lease["item"]["prediction"]["id"])["data"]["prediction"]
    assert stored == {"status": "REVIEWED", "finalLabel": "default"}
    stale = people.reviewer(SUBMIT, t=lease["leaseToken"], l="late")
    assert stale["errors"][0]["extensions"]["code"] == "LEASE_STALE"


def test_only_reviewers_and_admins_work_the_queue(people: People) -> None:
    refused = people.predictor(CLAIM)
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert people.reviewer(CLAIM)["data"]["claimReview"] is None  # nothing routed yet
    listing = people.predictor("{ reviewItems { totalCount } }")
    assert listing["errors"][0]["extensions"]["code"] == "FORBIDDEN"


@pytest.mark.parametrize("people", [{"lease_seconds": 1.0}], indirect=True)
def test_a_lapsed_lease_returns_the_item_through_the_worker(
        people: People, example_tasks: dict[str, TaskSpec]) -> None:
    route_some(people, example_tasks)
    lease = people.reviewer(CLAIM)["data"]["claimReview"]
    item_id = lease["item"]["id"]
    deadline = time.monotonic() + 30
    while (item := people.admin(ITEM, id=item_id)["data"]["reviewItem"])["status"] != "PENDING":
        assert time.monotonic() < deadline, item
        time.sleep(0.2)
    assert item["leaseExpiresAt"] is None
    late = people.reviewer(SUBMIT, t=lease["leaseToken"], l="late")
    assert late["errors"][0]["extensions"]["code"] == "LEASE_EXPIRED"  # swept, still expired
    again = people.reviewer(CLAIM, id=item_id)["data"]["claimReview"]
    assert again["item"]["id"] == item_id  # the same item, claimed anew
    stale = people.reviewer(SUBMIT, t=lease["leaseToken"], l="late")
    assert stale["errors"][0]["extensions"]["code"] == "LEASE_STALE"  # superseded


@pytest.mark.parametrize("people", [{"hide_explanation": True}], indirect=True)
def test_explanations_can_wait_until_the_reviewer_asks(
        people: People, example_tasks: dict[str, TaskSpec]) -> None:
    route_some(people, example_tasks)
    lease = people.reviewer(CLAIM)["data"]["claimReview"]
    assert lease["item"]["prediction"]["explanation"] is None
    query = ("query($id: ID!) { reviewItem(id: $id) { prediction(revealExplanation: true) "
             "{ explanation { baseValue outputValue } } } }")
    shown: dict[str, Any] = people.reviewer(query, id=lease["item"]["id"])
    assert shown["data"]["reviewItem"]["prediction"]["explanation"]["outputValue"] is not None


@pytest.mark.parametrize("people", [{"required_reviews": 2}], indirect=True)
def test_double_review_escalates_and_auditors_see_agreement(
        people: People, settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    route_some(people, example_tasks)
    client = people.reviewer.client
    rob = Api(client, make_key(settings, "reviewer", "rob"))
    judge = Api(client, make_key(settings, "reviewer", "judge"))
    auditor = Api(client, make_key(settings, "auditor", "audit"))
    outcomes = []
    for rita_says, rob_says in (("late", "late"), ("late", "default"), ("repaid", "repaid")):
        lease = people.reviewer(CLAIM)["data"]["claimReview"]
        item_id = lease["item"]["id"]
        people.reviewer(SUBMIT, t=lease["leaseToken"], l=rita_says)
        again = rob(CLAIM, id=item_id)["data"]["claimReview"]
        outcomes.append(rob(SUBMIT, t=again["leaseToken"], l=rob_says)["data"]["submitReview"])
    assert [o["status"] for o in outcomes] == ["RESOLVED", "ESCALATED", "RESOLVED"]
    escalated = outcomes[1]["id"]
    refused = people.reviewer(CLAIM, id=escalated)
    assert refused["errors"][0]["extensions"]["code"] == "REVIEW_CONFLICT"
    adjudication = judge(CLAIM, id=escalated)["data"]["claimReview"]
    final = judge(SUBMIT, t=adjudication["leaseToken"], l="default")["data"]["submitReview"]
    assert final["finalLabel"] == "default" and final["resolution"] == "ADJUDICATION"
    report = auditor(AGREEMENT)["data"]["reviewAgreement"]
    overall = report["overall"]
    assert overall["items"] == 3 and overall["pairs"] == 3 and overall["cohenItems"] == 3
    assert overall["pairwiseAgreement"] == pytest.approx(2 / 3)
    assert overall["fleiss"]["ratersPerItem"] == 2 and overall["fleiss"]["items"] == 3
    judge_row = next(r for r in report["reviewers"] if r["reviewer"].startswith("judge#"))
    assert judge_row["adjudications"] == 1 and judge_row["reviews"] == 0
    assert {c["label"] for c in report["classes"]} == {"late", "default", "repaid"}
    assert [r["release"] for r in report["releases"]] == [1]
    # the old spelling, deprecated for one release: the same numbers as snake_case JSON
    old = auditor('{ reviewAgreementJson(task: "loan_default") }')["data"]["reviewAgreementJson"]
    assert old["overall"]["pairwise_agreement"] == pytest.approx(2 / 3)
    assert old["reviewers"][0].keys() >= {"reviewer", "final_agreement", "overturn_rate"}
    refused_stats = people.reviewer("{ reviewAgreement { overall { pairs } } }")
    assert refused_stats["errors"][0]["extensions"]["code"] == "FORBIDDEN"


def test_a_release_routing_override_sets_lease_length_and_hides_explanations(
        people: People, example_tasks: dict[str, TaskSpec]) -> None:
    route_some(people, example_tasks)
    before = people.reviewer(CLAIM)["data"]["claimReview"]
    assert before["item"]["prediction"]["explanation"] is not None
    routing = ("mutation($p: JSON!) { setReleaseRouting(task: \"loan_default\", version: 1, "
               "policy: $p) { routing } }")
    too_long = people.admin(routing, p={"lease_seconds": 1e12})
    assert too_long["errors"][0]["extensions"]["code"] == "BAD_REQUEST", too_long
    assert "lease_seconds" in too_long["errors"][0]["message"]
    done = people.admin(routing, p={"lease_seconds": 45, "hide_explanation": True})
    assert done["data"]["setReleaseRouting"]["routing"]["lease_seconds"] == 45
    lease = people.reviewer(CLAIM)["data"]["claimReview"]
    held = (datetime.fromisoformat(lease["expiresAt"]) - datetime.now(UTC)).total_seconds()
    assert 30 < held <= 45
    assert lease["item"]["prediction"]["explanation"] is None
    seen = people.admin("query($id: ID!) { reviewItem(id: $id) { prediction "
                        "{ explanation { baseValue } } } }", id=lease["item"]["id"])
    assert seen["data"]["reviewItem"]["prediction"]["explanation"] is not None
