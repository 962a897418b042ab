"""The GraphQL API over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from app.db.engine import make_engine, make_sessionmaker
from app.db.tables import Prediction
from app.ml.task import TaskSpec
from app.settings import Settings
from tests.support.documents import CONTRACT, check_prediction
from tests.support.inputs import example_inputs
from tests.support.server import Api, make_key, run

FIELDS = CONTRACT.split("{", 2)[2].rsplit("}", 1)[0]  # the selection set of `predict`
GET = "query($id: ID!) { prediction(id: $id) {" + FIELDS.rsplit("}", 1)[0] + "} }"


@pytest.mark.parametrize("task_name", ["breast_cancer", "loan_default"])
def test_predict_returns_what_is_stored(
    predictor: Api, example_tasks: dict[str, TaskSpec], task_name: str
) -> None:
    task = example_tasks[task_name]
    for row in example_inputs(task, 6):
        body = predictor(CONTRACT, task=task_name, input=row)
        assert "errors" not in body, body
        p = body["data"]["predict"]
        check_prediction(task, p)
        assert p["task"] == task_name and p["release"] == 1
        stored = predictor(GET, id=p["id"])["data"]["prediction"]
        assert stored == p


def test_routes_with_reasons_over_many_inputs(
    predictor: Api, example_tasks: dict[str, TaskSpec]
) -> None:
    task = example_tasks["loan_default"]
    query = (
        'mutation($i: [JSON!]!) { predictBatch(task: "loan_default", inputs: $i) {'
        + FIELDS.rsplit("}", 1)[0]
        + "} }"
    )
    body = predictor(query, i=example_inputs(task, 300, seed=9))
    rows = body["data"]["predictBatch"]
    assert len(rows) == 300
    for p in rows:
        check_prediction(task, p)
    codes = {r["code"] for p in rows for r in p["reasons"]}
    routes = {p["route"] for p in rows}
    assert routes == {"AUTO", "REVIEW"}, "300 loan inputs should include both routes"
    assert "LOW_CONFIDENCE" in codes


def test_bad_input_lists_every_field_and_stores_nothing(predictor: Api, admin: Api) -> None:
    bad = {
        "income": -1,
        "loan_amount": "lots",
        "employment": "pirate",
        "has_cosigner": 1,
        "orders": float("inf") if False else 3,
        "surprise": True,
    }
    body = predictor(CONTRACT, task="loan_default", input=bad)
    [error] = body["errors"]
    assert error["extensions"]["code"] == "INPUT_INVALID"
    problems = {(f["field"], f["problem"]) for f in error["extensions"]["fields"]}
    assert problems == {
        ("income", "OUT_OF_RANGE"),
        ("loan_amount", "WRONG_TYPE"),
        ("employment", "UNKNOWN_CATEGORY"),
        ("has_cosigner", "WRONG_TYPE"),
        ("surprise", "UNKNOWN_FIELD"),
        ("term_months", "MISSING"),
        ("home_ownership", "MISSING"),
        ("purpose", "MISSING"),
        ("total_spend", "MISSING"),
    }
    for not_an_object in ([1, 2], "text", 7):
        body = predictor(CONTRACT, task="loan_default", input=not_an_object)
        assert body["errors"][0]["extensions"]["fields"][0]["problem"] == "NOT_AN_OBJECT"
    count = admin("{ predictions { totalCount } }")["data"]["predictions"]["totalCount"]
    assert count == 0


def test_bad_batch_is_refused_whole(
    predictor: Api, admin: Api, example_tasks: dict[str, TaskSpec]
) -> None:
    rows: list[Any] = example_inputs(example_tasks["breast_cancer"], 4)
    rows[2] = {**rows[2], "mean_radius": "big"}
    rows[3] = {**rows[3], "mean_area": -3.0}
    body = predictor(
        'mutation($i: [JSON!]!) { predictBatch(task: "breast_cancer", inputs: $i) { id } }', i=rows
    )
    fields = body["errors"][0]["extensions"]["fields"]
    assert {(f["index"], f["field"]) for f in fields} == {(2, "mean_radius"), (3, "mean_area")}
    assert admin("{ predictions { totalCount } }")["data"]["predictions"]["totalCount"] == 0


def test_unknown_task_is_a_clear_error(predictor: Api) -> None:
    body = predictor(CONTRACT, task="nope", input={})
    assert body["errors"][0]["extensions"]["code"] == "UNKNOWN_TASK"
    assert "breast_cancer" in body["errors"][0]["message"]


def test_idempotency_key_returns_the_stored_prediction(
    predictor: Api, admin: Api, example_tasks: dict[str, TaskSpec]
) -> None:
    row = example_inputs(example_tasks["loan_default"], 1)[0]
    first = predictor(CONTRACT, task="loan_default", input=row, key="order-17")["data"]["predict"]
    again = predictor(CONTRACT, task="loan_default", input=row, key="order-17")["data"]["predict"]
    assert again == first
    changed = predictor(CONTRACT, task="loan_default", input={**row, "orders": 1.0}, key="order-17")
    assert changed["errors"][0]["extensions"]["code"] == "IDEMPOTENCY_CONFLICT"
    assert admin("{ predictions { totalCount } }")["data"]["predictions"]["totalCount"] == 1


def test_concurrent_requests_with_one_key_store_one_prediction(
    server: Any, settings: Settings, admin: Api, example_tasks: dict[str, TaskSpec]
) -> None:
    key = make_key(settings, "predictor", "racer")
    row = example_inputs(example_tasks["breast_cancer"], 1)[0]

    def call(_: int) -> str:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            body = Api(client, key)(CONTRACT, task="breast_cancer", input=row, key="same")
            return str(body["data"]["predict"]["id"])

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(call, range(16)))
    assert len(ids) == 1
    assert admin("{ predictions { totalCount } }")["data"]["predictions"]["totalCount"] == 1


def test_requests_need_a_valid_key(http: httpx.Client) -> None:
    query = {"query": "{ tasks { name } }"}
    missing = http.post("/graphql", json=query)
    assert missing.status_code == 401
    assert missing.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    wrong = http.post("/graphql", json=query, headers={"Authorization": "Bearer arb_nope"})
    assert wrong.status_code == 401
    assert "invalid" in wrong.json()["errors"][0]["message"]


def test_predictors_see_only_their_own_predictions(
    predictor: Api,
    admin: Api,
    http: httpx.Client,
    settings: Settings,
    example_tasks: dict[str, TaskSpec],
) -> None:
    other = Api(http, make_key(settings, "predictor", "another-app"))
    rows = example_inputs(example_tasks["breast_cancer"], 3)
    mine = [
        predictor(CONTRACT, task="breast_cancer", input=r)["data"]["predict"]["id"]
        for r in rows[:2]
    ]
    theirs = other(CONTRACT, task="breast_cancer", input=rows[2])["data"]["predict"]["id"]
    listing = '{ predictions(task: "breast_cancer") { totalCount edges { node { id } } } }'
    seen = predictor(listing)["data"]["predictions"]
    assert seen["totalCount"] == 2
    assert {e["node"]["id"] for e in seen["edges"]} == set(mine)
    hidden = predictor(GET, id=theirs)
    assert hidden["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    assert admin(listing)["data"]["predictions"]["totalCount"] == 3


def test_releases_are_for_admins_not_predictors(predictor: Api, admin: Api) -> None:
    query = '{ releases(task: "loan_default") { version stage createdAt metrics } }'
    refused = predictor(query)
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    [release] = admin(query)["data"]["releases"]
    assert release["stage"] == "LIVE" and release["version"] == 1
    assert 0.7 < release["metrics"]["accuracy"] <= 1


def test_predictions_paginate_newest_first(
    predictor: Api, example_tasks: dict[str, TaskSpec]
) -> None:
    rows = example_inputs(example_tasks["breast_cancer"], 7)
    made = [
        predictor(CONTRACT, task="breast_cancer", input=r)["data"]["predict"]["id"] for r in rows
    ]
    query = """query($after: String) { predictions(task: "breast_cancer", first: 3, after: $after)
      { totalCount pageInfo { hasNextPage endCursor } edges { cursor node { id } } } }"""
    seen: list[str] = []
    after = None
    while True:
        page = predictor(query, after=after)["data"]["predictions"]
        assert page["totalCount"] == 7
        seen += [e["node"]["id"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == made[::-1]
    bad = predictor(query, after="not-a-cursor")
    assert bad["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


def test_tasks_describe_the_contract(predictor: Api) -> None:
    body = predictor(
        "{ tasks { name classes features { name type required min max categories description } } }"
    )
    tasks = {t["name"]: t for t in body["data"]["tasks"]}
    assert tasks["loan_default"]["classes"] == ["repaid", "late", "default"]
    employment = next(f for f in tasks["loan_default"]["features"] if f["name"] == "employment")
    assert employment["type"] == "CATEGORICAL" and "salaried" in employment["categories"]
    history = next(
        f for f in tasks["loan_default"]["features"] if f["name"] == "credit_history_years"
    )
    assert history["required"] is False and history["min"] == 0


def test_readyz_reports_loaded_models(http: httpx.Client) -> None:
    deadline = time.monotonic() + 60
    while (ready := http.get("/readyz")).json()["status"] != "ready":
        # loading: not ready until a task is served, then degraded until all are
        assert (ready.status_code, ready.json()["status"]) in {(503, "not ready"),
                                                               (200, "degraded")}
        assert time.monotonic() < deadline, ready.json()
        time.sleep(0.1)
    assert ready.status_code == 200
    assert ready.json()["tasks"] == {"breast_cancer": "serving", "loan_default": "serving"}
    assert http.get("/healthz").json() == {"status": "alive"}


def test_routing_preview_counts_reasons_and_stores_nothing(
        admin: Api, predictor: Api, example_tasks: dict[str, TaskSpec]) -> None:
    rows = example_inputs(example_tasks["loan_default"], 200, seed=21)
    query = """query($i: [JSON!]!) { routingPreview(task: "loan_default", inputs: $i) {
      total routed share reasons { code count share sole } } }"""
    preview = admin(query, i=rows)["data"]["routingPreview"]
    assert preview["total"] == 200 and 0 < preview["routed"] < 200
    assert preview["share"] == preview["routed"] / 200
    by_code = {r["code"]: r for r in preview["reasons"]}
    assert "LOW_CONFIDENCE" in by_code
    assert sum(r["sole"] for r in preview["reasons"]) <= preview["routed"]
    assert max(r["count"] for r in preview["reasons"]) <= preview["routed"]
    assert admin("{ predictions { totalCount } }")["data"]["predictions"]["totalCount"] == 0
    assert admin("{ reviewItems { totalCount } }")["data"]["reviewItems"]["totalCount"] == 0
    refused = predictor(query, i=rows[:2])
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    bad = admin(query, i=[{"income": "x"}])
    assert bad["errors"][0]["extensions"]["code"] == "INPUT_INVALID"


def test_a_release_can_override_the_routing_policy(
        admin: Api, predictor: Api, example_tasks: dict[str, TaskSpec]) -> None:
    rows = example_inputs(example_tasks["loan_default"], 200, seed=31)
    preview = """query($i: [JSON!]!) { routingPreview(task: "loan_default", inputs: $i) {
      reasons { code count } } }"""
    low = "LOW_CONFIDENCE"

    def low_confidence() -> int:
        reasons = admin(preview, i=rows)["data"]["routingPreview"]["reasons"]
        return next((r["count"] for r in reasons if r["code"] == low), 0)

    before = low_confidence()
    set_routing = """mutation($p: JSON!, $v: Int! = 1) {
      setReleaseRouting(task: "loan_default", version: $v, policy: $p) { version routing } }"""
    done = admin(set_routing, p={"confidence_level": 0.97, "audit_rate": 1.0,
                                 "required_reviews": 2})
    assert done["data"]["setReleaseRouting"]["routing"]["audit_rate"] == 1.0
    assert low_confidence() > before  # a higher level gives larger conformal sets
    p = predictor(CONTRACT, task="loan_default", input=rows[0])["data"]["predict"]
    assert p["route"] == "REVIEW" and "AUDIT_SAMPLE" in {r["code"] for r in p["reasons"]}
    items = admin("{ reviewItems { edges { node { requiredReviews } } } }")
    assert [e["node"]["requiredReviews"] for e in items["data"]["reviewItems"]["edges"]] == [2]

    for policy, needle in (({"ood_quantile": 0.9}, "new training"),
                           ({"audit_rate": 2}, "audit_rate"), ([1], "JSON object")):
        refused = admin(set_routing, p=policy)["errors"][0]
        assert refused["extensions"]["code"] == "BAD_REQUEST" and needle in refused["message"]
    missing = admin(set_routing, p={}, v=9)
    assert missing["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    forbidden = predictor(set_routing, p={})
    assert forbidden["errors"][0]["extensions"]["code"] == "FORBIDDEN"


def test_member_explanations_stored_in_full_still_read_the_same(
    predictor: Api, settings: Settings, example_tasks: dict[str, TaskSpec]
) -> None:
    """Members' explanations are stored compact (SHAP values alone); rows stored before,
    with every contribution spelled out, answer exactly as the compact ones do."""
    [row] = example_inputs(example_tasks["loan_default"], 1)
    p = predictor(CONTRACT, task="loan_default", input=row)["data"]["predict"]

    async def spell_out() -> None:
        engine = make_engine(settings.resolved_database_url)
        try:
            async with make_sessionmaker(engine)() as session, session.begin():
                stored = await session.get(Prediction, p["id"])
                assert stored is not None
                features = stored.explanation["contributions"]
                members = []
                for m in stored.members:
                    compact = m["explanation"]
                    assert set(compact) == {"status", "space", "explainedClass", "baseValue",
                                            "outputValue", "shap"}
                    full = {k: v for k, v in compact.items() if k != "shap"}
                    full["contributions"] = [{**c, "shap": s}
                                             for c, s in zip(features, compact["shap"],
                                                             strict=True)]
                    members.append({**m, "explanation": full})
                stored.members = members
        finally:
            await engine.dispose()

    run(spell_out())
    assert predictor(GET, id=p["id"])["data"]["prediction"] == p


KEYED_BATCH = """mutation($task: String!, $inputs: [JSON!]!, $keys: [String]) {
  predictBatch(task: $task, inputs: $inputs, idempotencyKeys: $keys) { id idempotencyKey } }"""


def test_a_retried_batch_stores_each_keyed_input_once(
    predictor: Api, admin: Api, example_tasks: dict[str, TaskSpec]
) -> None:
    rows = example_inputs(example_tasks["loan_default"], 7, seed=31)
    keys = ["a", "b", None, "d", "e"]

    def batch(inputs: list[Any], keys: list[str | None]) -> list[dict[str, Any]]:
        body = predictor(KEYED_BATCH, task="loan_default", inputs=inputs, keys=keys)
        assert "errors" not in body, body
        return list(body["data"]["predictBatch"])

    def count() -> int:
        return int(admin("{ predictions { totalCount } }")["data"]["predictions"]["totalCount"])

    first = batch(rows[:5], keys)
    assert [p["idempotencyKey"] for p in first] == keys
    retried = batch(rows[:5], keys)  # a client's retry after a timeout
    same = [r["id"] == f["id"] for r, f in zip(retried, first, strict=True)]
    assert same == [True, True, False, True, True]  # the input without a key is new
    assert count() == 6

    # Old keys among new ones, in another order: the old answered, the new stored, in order.
    mixed = batch([rows[6], rows[3], rows[5], rows[0]], ["g", "d", "f", "a"])
    assert mixed[1]["id"] == first[3]["id"] and mixed[3]["id"] == first[0]["id"]
    assert len({p["id"] for p in mixed} | {p["id"] for p in first}) == 5 + 2
    assert count() == 8


def test_bad_batch_keys_are_refused_and_store_nothing(
    predictor: Api, admin: Api, example_tasks: dict[str, TaskSpec]
) -> None:
    rows = example_inputs(example_tasks["loan_default"], 3, seed=32)
    stored = predictor(KEYED_BATCH, task="loan_default", inputs=rows[:1], keys=["k1"])
    assert "errors" not in stored, stored

    def refused(inputs: list[Any], keys: list[str | None]) -> dict[str, Any]:
        body = predictor(KEYED_BATCH, task="loan_default", inputs=inputs, keys=keys)
        return dict(body["errors"][0])

    # k1 with another input, beside a new key: the whole batch is refused.
    conflict = refused([rows[1], rows[2]], ["k2", "k1"])
    assert conflict["extensions"]["code"] == "IDEMPOTENCY_CONFLICT"
    assert "'k1'" in conflict["message"]
    repeated = refused([rows[1], rows[2]], ["k3", "k3"])
    assert repeated["extensions"]["code"] == "BAD_REQUEST"
    assert "repeats 'k3' (inputs 0 and 1)" in repeated["message"]
    short = refused([rows[1], rows[2]], ["k4"])
    assert short["extensions"]["code"] == "BAD_REQUEST"
    assert "one key per input: 1 keys, 2 inputs" in short["message"]
    blank = refused([rows[1]], [" "])
    assert "idempotencyKeys must be 1 to 200 characters" in blank["message"]
    assert admin("{ predictions { totalCount } }")["data"]["predictions"]["totalCount"] == 1


def test_concurrent_retries_of_a_keyed_batch_store_it_once(
    server: Any, settings: Settings, admin: Api, example_tasks: dict[str, TaskSpec]
) -> None:
    key = make_key(settings, "predictor", "retrier")
    rows = example_inputs(example_tasks["breast_cancer"], 10, seed=33)
    keys = [f"row-{i}" for i in range(10)]

    def call(_: int) -> list[str]:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            body = Api(client, key)(KEYED_BATCH, task="breast_cancer", inputs=rows, keys=keys)
            assert "errors" not in body, body
            return [p["id"] for p in body["data"]["predictBatch"]]

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(call, range(12)))
    assert all(a == answers[0] for a in answers) and len(set(answers[0])) == 10
    assert admin("{ predictions { totalCount } }")["data"]["predictions"]["totalCount"] == 10
    assert admin("{ verifyAuditLog { ok } }")["data"]["verifyAuditLog"]["ok"]
