"""Schema fuzzing over real HTTP with every role's key (hypothesis-graphql): whatever valid
query or mutation is sent, no answer is a 5xx, none leaks a traceback or internal text,
every error has a code, and a mutation refused to a role changes no row."""

from __future__ import annotations

import os
from typing import Any

import graphql
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import from_schema, nodes

from app.access.roles import Role, allowed
from app.ml.task import TaskSpec
from app.settings import Settings
from graphql_schema.schema import build_schema
from tests.support.databases import snapshot
from tests.support.server import LiveServer, make_key

SCHEMA = build_schema()._schema
EXAMPLES_PER_ROLE = int(os.environ.get("ARBITER_FUZZ_EXAMPLES", "15"))
# `retrain` starts a training that keeps writing its job's heartbeat in the background, which
# would blur "a refused mutation changed nothing"; test_permissions.py walks it instead.
ROOT_FIELDS = {*(SCHEMA.query_type.fields if SCHEMA.query_type else ()),
               *(SCHEMA.mutation_type.fields if SCHEMA.mutation_type else ())}
FIELDS = sorted(ROOT_FIELDS - {"retrain"})
LEAKS = ("Traceback", 'File "', "site-packages", "sqlalchemy", "asyncpg", "aiosqlite",
         "Exception", "/work/", "/tmp/")


def _json_value(task: TaskSpec) -> st.SearchStrategy[graphql.ValueNode]:
    """JSON inputs: scalars, and objects with the task's real feature names (so that
    predictions and input validation really run) with values of any kind."""
    scalar = st.one_of(st.integers(-10**6, 10**6).map(nodes.Int),
                       st.floats(allow_nan=False, allow_infinity=False).map(nodes.Float),
                       st.text(max_size=20).map(nodes.String),
                       st.booleans().map(lambda b: graphql.BooleanValueNode(value=b)))
    names = st.sampled_from([f.name for f in task.features] + ["unknown_field"])
    field = st.tuples(names, scalar).map(lambda kv: graphql.ObjectFieldNode(
        name=graphql.NameNode(value=kv[0]), value=kv[1]))
    obj = st.lists(field, max_size=len(task.features) + 1,
                   unique_by=lambda f: f.name.value).map(nodes.Object)
    return st.one_of(scalar, obj)


class _RealTasks(graphql.Visitor):
    """Most generated `task`/`name` strings become a real task, so that operations go past
    the task lookup into the code behind it; the rest stay as generated."""

    def enter_argument(self, node: graphql.ArgumentNode, *_: Any) -> Any:
        value = node.value
        if (node.name.value in ("task", "name") and isinstance(value, graphql.StringValueNode)
                and len(value.value) % 4 != 3):
            return graphql.ArgumentNode(name=node.name, value=graphql.StringValueNode(
                value="loan_default"))
        return None


def _print_with_real_tasks(document: graphql.DocumentNode) -> str:
    return graphql.print_ast(graphql.visit(document, _RealTasks()))


def _operation_names(document: str) -> list[str]:
    parsed = graphql.parse(document)
    return [sel.name.value for d in parsed.definitions
            if isinstance(d, graphql.OperationDefinitionNode)
            for sel in d.selection_set.selections if isinstance(sel, graphql.FieldNode)]


def _check_answer(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code < 500, response.text
    for leak in LEAKS:
        assert leak not in response.text, (leak, response.text[:2000])
    body: dict[str, Any] = response.json()
    for error in body.get("errors") or []:
        assert error.get("extensions", {}).get("code"), f"an error without a code: {error}"
    return body


# graphql-core abandons the sibling resolvers of a field that failed (a refused or bad field
# inside a list) without awaiting them; Python then warns when the coroutine is collected.
# Nothing runs half: the abandoned resolvers never started.
@pytest.mark.filterwarnings("ignore:coroutine 'GraphQLCoreConverter.from_resolver.<locals>."
                            "_async_resolver' was never awaited:RuntimeWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_fuzzed_operations_with_every_role(settings: Settings,
                                           example_tasks: dict[str, TaskSpec]) -> None:
    keys = {role: make_key(settings, role.value, f"fuzz-{role.value}") for role in Role}
    operations = from_schema(SCHEMA, fields=FIELDS, custom_scalars={
        "JSON": _json_value(example_tasks["loan_default"])}, allow_x00=False,
        print_ast=_print_with_real_tasks)
    seen = {"refused mutations": 0, "answers with data": 0, "errors": 0}
    with LiveServer(settings) as live, httpx.Client(base_url=live.url, timeout=120) as http:

        @settings_for_ci
        @given(role=st.sampled_from(list(Role)), document=operations)
        def fuzz(role: Role, document: str) -> None:
            refused_mutation = document.lstrip().startswith("mutation") and not all(
                allowed(op, role) for op in _operation_names(document))
            before = snapshot(settings) if refused_mutation else None
            body = _check_answer(http.post("/graphql", json={"query": document},
                                           headers={"Authorization": f"Bearer {keys[role]}"}))
            seen["answers with data"] += body.get("data") is not None
            seen["errors"] += bool(body.get("errors"))
            if refused_mutation:
                seen["refused mutations"] += 1
                assert body.get("data") is None, body
                assert [e["extensions"]["code"] for e in body["errors"]] == ["FORBIDDEN"]
                assert snapshot(settings) == before, f"{role.value} changed rows: {document}"

        fuzz()
        assert http.get("/healthz").status_code == 200, "the server is still up"
    assert all(seen.values()), f"the fuzzing must reach every kind of answer: {seen}"


settings_for_ci = settings(
    max_examples=EXAMPLES_PER_ROLE * len(Role),
    deadline=None,
    derandomize=True,  # the same examples on every run: CI never flakes on a new one
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)
