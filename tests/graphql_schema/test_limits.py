"""Hostile and oversized requests over real HTTP: each is refused with an error that says
which limit it broke, nothing runs, and the server keeps answering; unexpected errors reach
the client as an id only; production mode gives strangers no schema hints."""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.db.engine import make_engine
from app.settings import Settings
from tests.support.inputs import example_inputs
from tests.support.server import Api, LiveServer, make_key, run

ME = "{ me { name role } }"


@pytest.fixture
def limited(settings: Settings) -> Settings:
    """Small limits, so that breaking each costs little."""
    return settings.model_copy(update={
        "max_body_bytes": 200_000, "max_batch_size": 5, "page_size_max": 20,
        "max_query_depth": 8, "max_query_tokens": 2_000, "max_aliases": 10})


@pytest.fixture
def api(limited: Settings) -> Iterator[Api]:
    with LiveServer(limited) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        yield Api(client, make_key(limited, "admin", "ops"))


def only_error(body: dict[str, Any]) -> dict[str, Any]:
    assert body.get("data") is None, body
    (error,) = body["errors"]
    return error


def alive(api: Api) -> None:
    assert api(ME)["data"]["me"]["role"] == "ADMIN"


def count(settings: Settings, table: str) -> int:
    async def work() -> int:
        engine = make_engine(settings.resolved_database_url)
        try:
            async with engine.connect() as conn:
                return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar())
        finally:
            await engine.dispose()

    return int(run(work()))


def test_document_limits(api: Api, limited: Settings) -> None:
    deep = '{ trainingJobs(task: "loan_default") { edges { node { release { version } } } } }'
    nested = ("{ trainingJobs(task: \"loan_default\") { edges { node { release { parent { "
              "parent { parent { parent { parent { version } } } } } } } } } }")
    error = only_error(api.post(nested).json())
    assert "exceeds maximum operation depth of 8" in error["message"], error
    assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert "errors" not in api(deep)

    wide = "{ " + " ".join(f"a{i}: me {{ name }}" for i in range(11)) + " }"
    error = only_error(api.post(wide).json())
    assert error["message"] == "11 aliases found. Allowed: 10"
    assert "errors" not in api("{ " + " ".join(f"a{i}: me {{ name }}" for i in range(10)) + " }")

    many_tokens = "{ " + " ".join(["me { name }"] * 600) + " }"
    error = only_error(api.post(many_tokens).json())
    assert error["message"] == ("Syntax Error: Document contains more than 2000 tokens. "
                                "Parsing aborted."), error
    assert error["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"
    alive(api)


def test_fragment_cycles_and_duplicate_operations_are_refused(api: Api) -> None:
    cycle = ("query { me { ...A } } fragment A on Me { name ...B } "
             "fragment B on Me { role ...A }")
    messages = [e["message"] for e in api.post(cycle).json()["errors"]]
    assert any("Cannot spread fragment 'A' within itself" in m for m in messages), messages
    self_cycle = "query { me { ...A } } fragment A on Me { ...A }"
    assert api.post(self_cycle).json()["errors"]

    twice = "query Q { me { name } } query Q { me { role } }"
    messages = [e["message"] for e in api.post(twice).json()["errors"]]
    assert "There can be only one operation named 'Q'." in messages
    anonymous = "{ me { name } } { me { role } }"
    messages = [e["message"] for e in api.post(anonymous).json()["errors"]]
    assert "This anonymous operation must be the only defined operation." in messages

    batch = api.client.post("/graphql", json=[{"query": ME}, {"query": ME}],
                            headers={"Authorization": f"Bearer {api.key}"})
    assert batch.status_code == 400
    assert "batch" in batch.text.lower(), batch.text
    alive(api)


def test_oversized_bodies_get_413_naming_the_limit(api: Api, limited: Settings) -> None:
    huge = "{ me { name } }" + " " * 300_000  # whitespace is no token: only size stops it
    response = api.post(huge)
    assert response.status_code == 413, response.text
    error = only_error(response.json())
    assert error["extensions"] == {"code": "PAYLOAD_TOO_LARGE", "maxBytes": 200_000}
    assert "ARBITER_MAX_BODY_BYTES" in error["message"]

    def chunks() -> Iterator[bytes]:  # no content-length: chunked transfer encoding
        yield b'{"query": "{ me { name } }", "padding": "'
        for _ in range(40):
            yield b"x" * 10_000
        yield b'"}'

    response = api.client.post("/graphql", content=chunks(), headers={
        "Authorization": f"Bearer {api.key}", "Content-Type": "application/json"})
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 413, response.text
    assert only_error(response.json())["extensions"]["code"] == "PAYLOAD_TOO_LARGE"

    small_chunks = iter([b'{"query": "{ me ', b'{ name } }"}'])
    response = api.client.post("/graphql", content=small_chunks, headers={
        "Authorization": f"Bearer {api.key}", "Content-Type": "application/json"})
    assert response.json()["data"]["me"]["name"] == "ops"
    alive(api)


def test_a_lying_content_length_is_cut_off(api: Api, limited: Settings) -> None:
    """A client that announces a small body and sends a huge one is stopped at the limit."""
    url = httpx.URL(api.client.base_url)
    with socket.create_connection((url.host, url.port), timeout=30) as raw:
        raw.sendall(b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Transfer-Encoding: chunked\r\nAuthorization: Bearer "
                    + (api.key or "").encode() + b"\r\n\r\n")
        chunk = b"y" * 50_000
        try:
            for _ in range(8):
                raw.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            raw.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server may close the connection once it has answered
        answer = raw.recv(65536).decode("latin-1")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert "PAYLOAD_TOO_LARGE" in answer
    alive(api)


def test_batch_and_page_caps(api: Api, limited: Settings, example_tasks: Any) -> None:
    rows = example_inputs(example_tasks["loan_default"], 6)
    batch = 'mutation($i: [JSON!]!) { predictBatch(task: "loan_default", inputs: $i) { id } }'
    before = count(limited, "predictions")
    error = only_error(api.post(batch, i=rows).json())
    assert error["extensions"]["code"] == "BAD_REQUEST"
    assert error["message"] == "predictBatch takes at most 5 inputs, got 6"
    assert count(limited, "predictions") == before, "nothing of a refused batch is stored"
    assert len(api(batch, i=rows[:5])["data"]["predictBatch"]) == 5

    for query in ('{ predictions(first: 21) { totalCount } }',
                  '{ reviewItems(first: 21) { totalCount } }',
                  '{ trainingJobs(task: "loan_default", first: 21) { totalCount } }',
                  '{ predictions(first: 0) { totalCount } }'):
        error = only_error(api.post(query).json())
        assert error["extensions"]["code"] == "BAD_REQUEST", error
        assert "first must be between 1 and 20" in error["message"], error
    assert api('{ predictions(first: 20) { totalCount } }')["data"]["predictions"][
        "totalCount"] == 5


def test_an_unexpected_error_reaches_the_client_as_an_id_only(
        api: Api, limited: Settings, example_tasks: Any, caplog: pytest.LogCaptureFixture
) -> None:
    row = example_inputs(example_tasks["loan_default"], 1)[0]
    stored = api('mutation($i: JSON!) { predict(task: "loan_default", input: $i) { id } }',
                 i=row)["data"]["predict"]

    async def corrupt() -> None:  # a row the code cannot read: a real unexpected failure
        engine = make_engine(limited.resolved_database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("UPDATE predictions SET explanation = :e WHERE id = :i"),
                                   {"e": '{"secretInternalDetail": 1}', "i": stored["id"]})
        finally:
            await engine.dispose()

    run(corrupt())
    with caplog.at_level(logging.ERROR):
        body = api.post("query($id: ID!) { prediction(id: $id) { id explanation { status } } }",
                        id=stored["id"]).json()
    # The failing field is nulled (it is nullable), the rest of the answer stands.
    assert body["data"] == {"prediction": {"id": stored["id"], "explanation": None}}, body
    (error,) = body["errors"]
    assert error["path"] == ["prediction", "explanation"]
    assert error["extensions"]["code"] == "INTERNAL_ERROR"
    error_id = error["extensions"]["errorId"]
    assert re.fullmatch(r"[0-9a-f]{12}", error_id)
    assert error["message"] == f"internal error (id {error_id}); the server log has the details"
    assert "secret" not in str(body) and "Traceback" not in str(body)
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None, "the log has the id and the traceback"
    alive(api)


def test_production_hides_hints_graphiql_and_introspection(settings: Settings) -> None:
    prod = settings.model_copy(update={"environment": "production"})
    with LiveServer(prod) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        api = Api(client, make_key(prod, "admin", "ops"))
        error = only_error(api.post("{ me { nme } }").json())
        assert error["message"] == "Cannot query field 'nme' on type 'Me'."
        errors = api.post('{ task(nme: "x") { name } }').json()["errors"]
        assert errors and not any("Did you mean" in e["message"] for e in errors), errors
        body = api.post("{ __schema { types { name } } }").json()
        assert body.get("data") is None
        assert "introspection has been disabled" in body["errors"][0]["message"], body
        assert client.get("/graphql", headers={"Accept": "text/html"}).status_code == 404
        alive(api)


def test_development_keeps_hints_graphiql_and_introspection(settings: Settings) -> None:
    with LiveServer(settings) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        api = Api(client, make_key(settings, "admin", "ops2"))
        error = only_error(api.post("{ me { nme } }").json())
        assert "Did you mean 'name'?" in error["message"], "development keeps the hints"
        assert api("{ __schema { queryType { name } } }")["data"]
        page = client.get("/graphql", headers={"Accept": "text/html"})
        assert page.status_code == 200 and "graphiql" in page.text.lower()
