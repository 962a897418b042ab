"""Every operation and every field of every object type has a rule (app.access.roles), README's
*Roles* table says the same, and the rules hold over real HTTP and websockets: allowed
means no FORBIDDEN, refused means FORBIDDEN and not one row changed."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from gql.transport.exceptions import TransportQueryError
from graphql import GraphQLObjectType, parse

import app.db.tables  # noqa: F401  (registers the tables in SQLModel.metadata)
from app.access.roles import (
    FIELD_RULES,
    PERMISSIONS,
    ROOT_TYPES,
    TYPE_RULES,
    Role,
    allowed,
    field_allowed,
)
from app.ml.task import TaskSpec
from app.settings import Settings
from graphql_schema.permissions import refused_field
from graphql_schema.schema import build_schema
from tests.support.databases import SEQUENCED, snapshot
from tests.support.inputs import example_inputs
from tests.support.server import Api, LiveServer, make_key
from tests.support.subscriber import client, take

README = Path(__file__).resolve().parents[2] / "docs" / "api.md"  # the *Roles* table
ROLES = (Role.PREDICTOR, Role.REVIEWER, Role.AUDITOR, Role.ADMIN)  # README's column order
REFUSED_CELL = "\N{EN DASH}"
SCHEMA = build_schema()._schema


def _object_types() -> dict[str, GraphQLObjectType]:
    return {name: t for name, t in SCHEMA.type_map.items()
            if isinstance(t, GraphQLObjectType) and not name.startswith("__")}


def _operations() -> set[str]:
    return {name for root in ROOT_TYPES if (t := _object_types().get(root))
            for name in t.fields}


def readme_rules() -> dict[str, frozenset[Role]]:
    """README's *Roles* table: name (operation, ``Type.*`` or ``Type.field``) -> roles."""
    section = README.read_text().split("\n### Roles\n", 1)[1].split("\n#", 1)[0]
    rules: dict[str, frozenset[Role]] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        roles = frozenset(r for r, c in zip(ROLES, cells[1:], strict=True) if c != REFUSED_CELL)
        for name in re.findall(r"`([^`]+)`", cells[0]):
            assert name not in rules, f"README's Roles table names {name} twice"
            rules[name] = roles
    return rules


def code_rules() -> dict[str, frozenset[Role]]:
    return {**PERMISSIONS, **{f"{t}.*": r for t, r in TYPE_RULES.items()}, **FIELD_RULES}


def test_every_operation_has_a_rule() -> None:
    missing = _operations() - set(PERMISSIONS)
    assert not missing, f"operations without a permission rule: {sorted(missing)}"
    stale = set(PERMISSIONS) - _operations()
    assert not stale, f"rules for operations that do not exist: {sorted(stale)}"


def test_every_field_of_every_object_type_has_a_rule() -> None:
    types = {n: t for n, t in _object_types().items() if n not in ROOT_TYPES}
    missing = set(types) - set(TYPE_RULES)
    assert not missing, f"object types without a rule in app.roles.TYPE_RULES: {sorted(missing)}"
    assert not set(TYPE_RULES) - set(types), "rules for types that do not exist"
    for name in FIELD_RULES:
        type_name, field = name.split(".")
        assert field in types[type_name].fields, f"FIELD_RULES names no field: {name}"
    for type_name, t in types.items():
        for field in t.fields:
            assert any(field_allowed(type_name, field, r) for r in Role), \
                f"{type_name}.{field} is closed to every role"


def test_readme_roles_table_matches_the_code() -> None:
    readme, code = readme_rules(), code_rules()
    assert set(readme) == set(code), (
        f"in the code only: {sorted(set(code) - set(readme))}; "
        f"in README only: {sorted(set(readme) - set(code))}")
    differ = {n: (sorted(readme[n]), sorted(code[n])) for n in code if readme[n] != code[n]}
    assert not differ, f"README and app.access.roles disagree (README, code): {differ}"


def test_unknown_operations_types_and_fields_are_refused() -> None:
    assert not any(allowed("somethingNew", role) for role in Role)
    assert not any(field_allowed("SomethingNew", "name", role) for role in Role)
    assert not any(field_allowed("Query", "somethingNew", role) for role in Role)


def test_auditors_change_nothing_and_only_admins_manage_releases() -> None:
    mutations = _object_types()["Mutation"].fields
    assert not [m for m in mutations if allowed(m, Role.AUDITOR)], "auditors write nothing"
    for op in ("promoteRelease", "rollback", "setReleaseRouting", "retrain", "apiKeys",
               "createApiKey", "revokeApiKey"):
        assert PERMISSIONS[op] == {Role.ADMIN}, op
    assert allowed("predict", Role.PREDICTOR) and not allowed("predict", Role.REVIEWER)
    assert allowed("claimReview", Role.REVIEWER) and not allowed("claimReview", Role.PREDICTOR)
    for op in ("reviewItems", "reviewItem", "reviewEvents", "claimReview"):
        assert not allowed(op, Role.PREDICTOR), f"predictors stay out of the queue: {op}"


@pytest.mark.parametrize(("role", "document", "refused"), [
    (Role.PREDICTOR, "{ predictions { edges { node { label trainedInto { version } } } } }",
     ("Prediction", "trainedInto")),
    (Role.PREDICTOR, "{ predictions { edges { node { ...F } } } } "
                     "fragment F on Prediction { id ... on Prediction { trainedInto { split } } }",
     ("Prediction", "trainedInto")),
    (Role.REVIEWER, "{ reviewItems { edges { node { prediction { input idempotencyKey } } } } }",
     ("Prediction", "idempotencyKey")),
    (Role.REVIEWER, "{ reviewItems { edges { node { prediction { x: latencyMs } } } } }",
     ("Prediction", "latencyMs")),
    (Role.PREDICTOR, "{ me { name } releases(task: \"t\") { version } }", ("Query", "releases")),
    (Role.AUDITOR, "mutation { claimReview(task: \"t\") { leaseToken } }",
     ("Mutation", "claimReview")),
    (Role.REVIEWER, "{ reviewItems { edges { node { prediction { input } } } } }", None),
    (Role.AUDITOR, "{ predictions { edges { node { trainedInto { version } } } } }", None),
    (Role.PREDICTOR, "{ __schema { types { name } } me { __typename role } }", None),
])
def test_the_first_refused_field_is_found(role: Role, document: str,
                                          refused: tuple[str, str] | None) -> None:
    assert refused_field(SCHEMA, parse(document), None, role) == refused


# operation -> (document, variables for refused roles, variables for allowed roles or None)
def _catalogue(row: dict[str, Any], prediction_id: str) -> dict[str, tuple[str, dict[str, Any],
                                                                        dict[str, Any] | None]]:
    loan = {"t": "loan_default"}
    nope = {"t": "no_such_task"}
    return {
        "tasks": ("{ tasks { name } }", {}, None),
        "task": ('{ task(name: "loan_default") { name features { name } } }', {}, None),
        "me": ("{ me { role } }", {}, None),
        "prediction": ("query($id: ID!) { prediction(id: $id) { id label } }",
                       {"id": prediction_id}, None),
        "predictions": ("{ predictions { totalCount edges { node { id } } } }", {}, None),
        "releases": ('{ releases(task: "loan_default") { version metrics } }', {}, None),
        "release": ('{ release(task: "loan_default", version: 1) { version gate } }', {}, None),
        "routingPreview": ('query($i: [JSON!]!) { routingPreview(task: "loan_default", '
                           "inputs: $i) { total } }", {"i": [row]}, None),
        "reviewItems": ("{ reviewItems { totalCount } }", {}, None),
        "reviewItem": ('{ reviewItem(id: "nope") { id } }', {}, None),
        "reviewAgreement": ("{ reviewAgreement { overall { pairs } } }", {}, None),
        "reviewAgreementJson": ("{ reviewAgreementJson }", {}, None),
        "releaseComparison": ('{ releaseComparison(task: "loan_default", version: 1) '
                              "{ version } }", {}, None),
        "trainingJob": ('{ trainingJob(id: "nope") { id } }', {}, None),
        "trainingJobs": ('{ trainingJobs(task: "loan_default") { totalCount } }', {}, None),
        "driftReport": ('{ driftReport(task: "loan_default", window: "1h") { drifted } }', {},
                        None),
        "verifyAuditLog": ("{ verifyAuditLog { ok checked } }", {}, None),
        "auditEvents": ("{ auditEvents(first: 5) { totalCount } }", {}, None),
        "predictionStory": ("query($id: ID!) { predictionStory(id: $id) { finalLabel } }",
                            {"id": prediction_id}, None),
        "apiKeys": ("{ apiKeys { id name role } }", {}, None),
        "createApiKey": ('mutation { createApiKey(name: "walked", role: AUDITOR) '
                         "{ secret } }", {}, None),
        "revokeApiKey": ('mutation { revokeApiKey(id: 999999) { id } }', {}, None),
        "latestDriftReport": ('{ latestDriftReport(task: "loan_default") { drifted } }', {},
                              None),
        "autoQuality": ('{ autoQuality(task: "loan_default") { label n } }', {}, None),
        "recordOutcomes": ('mutation($o: [OutcomeInput!]!) { recordOutcomes(task: '
                           '"loan_default", outcomes: $o) { recorded unchanged } }',
                           {"o": [{"predictionId": prediction_id, "label": "late"}]}, None),
        "predict": ('mutation($i: JSON!) { predict(task: "loan_default", input: $i) { id } }',
                    {"i": row}, None),
        "predictBatch": ('mutation($i: [JSON!]!) { predictBatch(task: "loan_default", '
                         "inputs: $i) { id } }", {"i": [row, row]}, None),
        "setReleaseRouting": ('mutation($t: String!) { setReleaseRouting(task: $t, version: 1, '
                              'policy: {audit_rate: 0.5}) { version routing } }', loan, None),
        "claimReview": ('mutation { claimReview(task: "loan_default") { leaseToken } }', {},
                        None),
        "submitReview": ('mutation { submitReview(leaseToken: "nope", label: "repaid") '
                         "{ id } }", {}, None),
        "releaseReview": ('mutation { releaseReview(leaseToken: "nope") { id } }', {}, None),
        "promoteRelease": ('mutation($t: String!) { promoteRelease(task: $t, version: 1, '
                           "stage: RETIRED) { version } }", loan, nope),
        "rollback": ("mutation($t: String!) { rollback(task: $t) { version } }", loan, nope),
        "retrain": ("mutation($t: String!) { retrain(task: $t) { id } }", loan, nope),
    }


SUBSCRIPTIONS = {
    "predictions": "subscription($t: String!) { predictions(task: $t) { id } }",
    "reviewEvents": "subscription($t: String!) { reviewEvents(task: $t) { itemId } }",
    "releaseEvents": "subscription($t: String!) { releaseEvents(task: $t) { kind } }",
}


def codes(body: dict[str, Any]) -> list[str]:
    return [e.get("extensions", {}).get("code") for e in body.get("errors") or []]


def test_every_operation_with_every_role(settings: Settings,
                                         example_tasks: dict[str, TaskSpec]) -> None:
    row = example_inputs(example_tasks["loan_default"], 1)[0]
    keys = {role: make_key(settings, role.value, f"{role.value}-key") for role in Role}
    with LiveServer(settings) as live, httpx.Client(base_url=live.url, timeout=60) as http:
        api = {role: Api(http, key) for role, key in keys.items()}
        mine = api[Role.ADMIN]('mutation($i: JSON!) { predict(task: "loan_default", '
                               "input: $i) { id } }", i=row)["data"]["predict"]["id"]
        catalogue = _catalogue(row, mine)
        assert set(catalogue) | set(SUBSCRIPTIONS) == _operations(), "walk every operation"
        for op, (document, refused_vars, allowed_vars) in catalogue.items():
            for role in ROLES:
                if allowed(op, role):
                    body = api[role](document, **(allowed_vars or refused_vars))
                    assert "FORBIDDEN" not in codes(body), (op, role, body)
                    continue
                before = snapshot(settings, without=SEQUENCED)
                body = api[role](document, **refused_vars)
                assert body.get("data") is None, (op, role, body)
                assert codes(body) == ["FORBIDDEN"], (op, role, body)
                assert body["errors"][0]["message"] == f"role {role.value} may not use {op}"
                assert snapshot(settings, without=SEQUENCED) == before, (
                    f"{role.value} refused {op} changed rows")

        # predictors read their own predictions only: by id, by list
        theirs = api[Role.PREDICTOR]('mutation($i: JSON!) { predict(task: "loan_default", '
                                     "input: $i) { id } }", i=row)["data"]["predict"]["id"]
        other = Api(http, make_key(settings, "predictor", "other-app"))
        body = other("query($id: ID!) { prediction(id: $id) { id } }", id=theirs)
        assert codes(body) == ["NOT_FOUND"]
        assert other("{ predictions { totalCount } }")["data"]["predictions"]["totalCount"] == 0
        listed = api[Role.PREDICTOR]("{ predictions { edges { node { id } } } }")
        ids = [e["node"]["id"] for e in listed["data"]["predictions"]["edges"]]
        assert theirs in ids and mine not in ids
        assert len(ids) == 4, "its predict, predictBatch (2) of the walk, and this one"

        # a refused field inside an allowed operation refuses the request, names the field
        before = snapshot(settings, without=SEQUENCED)
        body = api[Role.PREDICTOR]('mutation($i: JSON!) { predict(task: "loan_default", '
                                   "input: $i) { id trainedInto { version } } }", i=row)
        assert body["data"] is None and codes(body) == ["FORBIDDEN"]
        assert body["errors"][0]["message"] == \
            "role predictor may not read Prediction.trainedInto"
        assert snapshot(settings, without=SEQUENCED) == before, (
            "a refused field stops the mutation before it runs")

        asyncio.run(_walk_subscriptions(live.url, keys))


async def _walk_subscriptions(url: str, keys: dict[Role, str]) -> None:
    for op, document in SUBSCRIPTIONS.items():
        for role in ROLES:
            async with client(url, keys[role]) as session:
                with pytest.raises(TransportQueryError) as error:
                    await take(session, document, 1, t="no_such_task")
            expected = "UNKNOWN_TASK" if allowed(op, role) else "FORBIDDEN"
            assert codes({"errors": error.value.errors}) == [expected], (op, role)
    async with client(url, keys[Role.PREDICTOR]) as session:
        with pytest.raises(TransportQueryError) as error:
            await take(session, "subscription { predictions(task: \"loan_default\") "
                       "{ id trainedInto { version } } }", 1)
    assert error.value.errors
    assert error.value.errors[0]["message"] == "role predictor may not read Prediction.trainedInto"
