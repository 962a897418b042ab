"""Every malformed request to /graphql, over real HTTP on both databases, is answered with a
JSON error carrying ``extensions.code`` and the status GraphQL over HTTP names: never plain
text, a bare 500 or ``INTERNAL_ERROR``; nothing is stored, nothing is logged as an error, and
the server keeps serving."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from app.ml.task import TaskSpec
from app.settings import Settings
from tests.support.inputs import example_inputs
from tests.support.server import Api, LiveServer, make_key
from tests.support.subscriber import ws_url

COUNT = "{ predictions { totalCount } }"
PREDICT = """mutation($i: JSON!, $k: String, $e: String) {
  predict(task: "loan_default", input: $i, idempotencyKey: $k, entityKey: $e) { id } }"""


@pytest.fixture
def admin(settings: Settings, caplog: pytest.LogCaptureFixture) -> Iterator[Api]:
    with caplog.at_level(logging.ERROR), LiveServer(settings) as live, \
            httpx.Client(base_url=live.url, timeout=60) as http:
        api = Api(http, make_key(settings, "admin", "ops"))
        yield api
        assert api("{ me { role } }")["data"]["me"]["role"] == "ADMIN", "still serving"
    # what answers requests (not the periodic jobs, which a loaded machine may delay)
    answering = ("arbiter.graphql", "strawberry", "uvicorn")
    errors = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.ERROR and r.name.startswith(answering)]
    assert not errors, f"a hostile request was logged as an error: {errors}"


def refused(response: httpx.Response, status: int = 400, code: str = "BAD_REQUEST") -> str:
    """The one error of a refused request; its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"errors"}, body
    [error] = body["errors"]
    assert error["extensions"]["code"] == code, body
    assert "Traceback" not in error["message"]
    message: str = error["message"]
    return message


async def websocket_answers(api: Api, operations: list[tuple[str, dict[str, Any]]]
                            ) -> list[dict[str, Any]]:
    """The first answer to each operation, sent over graphql-transport-ws one by one."""
    url = ws_url(str(api.client.base_url).rstrip("/"))
    async with websockets.connect(url, subprotocols=["graphql-transport-ws"]) as ws:
        await ws.send(json.dumps({"type": "connection_init",
                                  "payload": {"Authorization": f"Bearer {api.key}"}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        answers = []
        for n, (document, variables) in enumerate(operations):
            await ws.send(json.dumps({"id": str(n), "type": "subscribe", "payload": {
                "query": document, "variables": variables}}))
            answers.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
            assert json.loads(await asyncio.wait_for(ws.recv(), 60))["type"] == "complete"
        return answers


def post(api: Api, content: bytes, content_type: str | None = "application/json"
         ) -> httpx.Response:
    headers = {"Authorization": f"Bearer {api.key}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return api.client.post("/graphql", content=content, headers=headers)


def test_bodies_that_are_no_graphql_request(admin: Api) -> None:
    assert "not valid JSON" in refused(post(admin, b'{"query": "{ me { name } }"'))
    assert "UTF-8" in refused(post(admin, b'{"query": "{ me { name } }", "x": "\xff\xfe"}'))
    for body, kind in ((b"null", "null"), (b"42", "a number"), (b'"{ me { name } }"',
                       "a string"), (b"true", "a boolean")):
        assert f"not {kind}" in refused(post(admin, body)), body
    deep = b"[" * 5000 + b"]" * 5000
    assert "nested too deeply" in refused(post(admin, deep))
    deep_variables = (b'{"query": "query($i: JSON!) { me { name } }", "variables": {"i": '
                      + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}}")
    assert "nested too deeply" in refused(post(admin, deep_variables))
    assert "No GraphQL query" in refused(post(admin, b"{}"))
    assert "No GraphQL query" in refused(post(admin, b'{"variables": {"a": 1}}'))
    assert "must be a string" in refused(post(admin, b'{"query": 7}'))
    assert "must be an object" in refused(post(admin, b'{"query": "{ me { name } }", '
                                                  b'"variables": [1]}'))
    assert "Batching" in refused(post(admin, b'[{"query": "{ me { name } }"}]'))
    # a well-formed request whose document nests too deeply: a GraphQL error, as the spec says
    document = "{ task(name: " + "[" * 3000 + "]" * 3000 + ") { name } }"
    nested = post(admin, json.dumps({"query": document}).encode()).json()
    assert nested["errors"][0]["extensions"]["code"] == "GRAPHQL_PARSE_FAILED", nested


def test_content_types_and_methods(admin: Api) -> None:
    query = json.dumps({"query": "{ me { name } }"}).encode()
    assert "Content-Type: application/json" in refused(
        post(admin, query, "text/plain"), 415, "UNSUPPORTED_MEDIA_TYPE")
    refused(post(admin, query, None), 415, "UNSUPPORTED_MEDIA_TYPE")
    refused(post(admin, b"query=%7B%20me%20%7D", "application/x-www-form-urlencoded"),
            415, "UNSUPPORTED_MEDIA_TYPE")
    ok = post(admin, query, "application/json; charset=utf-8")
    assert ok.json()["data"]["me"]["name"] == "ops"

    auth = {"Authorization": f"Bearer {admin.key}"}
    for method in ("PUT", "DELETE", "PATCH"):
        answer = admin.client.request(method, "/graphql", content=query, headers=auth)
        refused(answer, 405, "METHOD_NOT_ALLOWED")
        assert answer.headers["allow"] == "GET, POST"
    over_get = admin.client.get("/graphql", headers=auth, params={
        "query": 'mutation { retrain(task: "loan_default") { id } }'})
    assert "POST" in refused(over_get, 405, "METHOD_NOT_ALLOWED")
    subscription = 'subscription { predictions(task: "loan_default") { id } }'
    assert "websocket" in refused(admin.post(subscription))
    assert "websocket" in refused(admin.client.get("/graphql", headers=auth,
                                                   params={"query": subscription}))
    read_over_get = admin.client.get("/graphql", headers=auth, params={"query": "{ me { name } }"})
    assert read_over_get.json()["data"]["me"]["name"] == "ops"
    bad_variables = admin.client.get("/graphql", headers=auth, params={
        "query": "query($n: Int) { me { name } }", "variables": "{nope"})
    assert "not valid JSON" in refused(bad_variables)


# Each string argument that reaches a column, a key or a filter, spelled in the document and
# as a variable; none of them may carry a NUL.
NUL_DOCUMENTS: list[tuple[str, dict[str, Any]]] = [
    ('{ task(name: "loan\\u0000default") { name } }', {}),
    ('{ predictions(label: "late\\u{0}") { totalCount } }', {}),
    ('{ predictions(finalLabel: "late\\u0000") { totalCount } }', {}),
    ('{ auditEvents(kind: "key.created\\u0000") { totalCount } }', {}),
    ('mutation { createApiKey(name: "bad\\u0000name", role: PREDICTOR) { secret } }', {}),
    ('mutation { retrain(task: "loan_default", reason: "why\\u0000") { id } }', {}),
    ('mutation { rollback(task: "loan_default", reason: "\\u0000") { version } }', {}),
    ('mutation { submitReview(leaseToken: "t\\u0000", label: "late") { id } }', {}),
    ('mutation($c: String!) { submitReview(leaseToken: "t", label: "late", comment: $c) '
     "{ id } }", {"c": "looked \x00 twice"}),
    ('mutation($n: String!) { createApiKey(name: $n, role: PREDICTOR) { secret } }',
     {"n": "x\x00"}),
    ('mutation($t: String!) { claimReview(task: $t) { leaseToken } }', {"t": "loan\x00"}),
]


def test_nul_characters_in_any_string_are_refused(admin: Api,
                                                   example_tasks: dict[str, TaskSpec]) -> None:
    row = example_inputs(example_tasks["loan_default"], 1)[0]
    before = admin(COUNT)["data"]["predictions"]["totalCount"]
    keys = len(admin("{ apiKeys { id } }")["data"]["apiKeys"])
    for document, variables in NUL_DOCUMENTS:
        message = refused(admin.post(document, **variables))
        assert "NUL character" in message, (document, message)
    for variables, where in (({"i": row, "k": "order\x0017"}, "variables.k"),
                             ({"i": row, "e": "\x00"}, "variables.e"),
                             ({"i": {**row, "employment": "salaried\x00"}},
                              "variables.i.employment"),
                             ({"i": {**row, "bad\x00key": 1}}, "an object key")):
        assert where in refused(admin.post(PREDICT, **variables)), variables
    over_get = admin.client.get("/graphql", headers={"Authorization": f"Bearer {admin.key}"},
                                params={"query": '{ task(name: "a\x00") { name } }'})
    assert "NUL character" in refused(over_get)
    assert admin(COUNT)["data"]["predictions"]["totalCount"] == before, "nothing stored"
    assert len(admin("{ apiKeys { id } }")["data"]["apiKeys"]) == keys

    # over the websocket: the same refusals, as the operation's error
    over_ws = asyncio.run(websocket_answers(admin, [
        (PREDICT, {"i": row, "e": "a\x00b"}),
        (NUL_DOCUMENTS[0][0], NUL_DOCUMENTS[0][1]),
        ('{ task(name: "a\\u0000") { name } }', {})]))
    for answer in over_ws:
        [error] = answer["payload"]["errors"]
        assert error["extensions"]["code"] == "BAD_REQUEST" and "NUL character" in error["message"]
    assert admin(COUNT)["data"]["predictions"]["totalCount"] == before, "nothing stored"

    # not a NUL: an escaped backslash followed by u0000, and other escapes, are plain text
    made = admin('mutation { createApiKey(name: "back\\\\u0000slash \\u00e9", role: AUDITOR) '
                 "{ key { name } } }")["data"]["createApiKey"]["key"]
    assert made["name"] == "back\\u0000slash é"
    stored = admin(PREDICT, i=row, k="order-\\u0000-17")["data"]["predict"]
    assert stored["id"]

