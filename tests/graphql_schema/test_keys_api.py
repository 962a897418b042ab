"""API keys spelled one way, over real HTTP: roles are the ``Role`` enum, ids are ``ID``s;
an id written the old way (a number) is still answered."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from app.settings import Settings
from tests.support.server import Api, LiveServer, make_key

CREATE = """mutation($n: String!, $r: Role!) { createApiKey(name: $n, role: $r) {
  secret key { id name role } } }"""
REVOKE = "mutation($id: ID!) { revokeApiKey(id: $id) { id role revokedAt } }"


@pytest.fixture
def admin(settings: Settings) -> Iterator[Api]:
    with LiveServer(settings) as live, httpx.Client(base_url=live.url, timeout=60) as http:
        yield Api(http, make_key(settings, "ADMIN", "ops"))  # the enum name, as the CLI takes


def code(body: dict[str, object]) -> object:
    errors = body["errors"]
    assert isinstance(errors, list)
    return errors[0]["extensions"]["code"]


def test_roles_are_an_enum_in_and_out(admin: Api) -> None:
    made = admin(CREATE, n="app", r="PREDICTOR")["data"]["createApiKey"]
    assert made["key"]["role"] == "PREDICTOR" and made["key"]["name"] == "app"
    assert isinstance(made["key"]["id"], str) and made["key"]["id"].isdigit()
    literal = admin('mutation { createApiKey(name: "rita", role: REVIEWER) { key { role } } }')
    assert literal["data"]["createApiKey"]["key"]["role"] == "REVIEWER"
    me = Api(admin.client, made["secret"])("{ me { name role } }")["data"]["me"]
    assert me == {"name": "app", "role": "PREDICTOR"}
    assert admin("{ me { role } }")["data"]["me"]["role"] == "ADMIN"
    listed = admin("{ apiKeys { id name role } }")["data"]["apiKeys"]
    assert [(k["name"], k["role"]) for k in listed] == [
        ("ops", "ADMIN"), ("app", "PREDICTOR"), ("rita", "REVIEWER")]
    assert all(isinstance(k["id"], str) for k in listed)

    # a role that is no Role is refused before anything runs, naming the enum
    for document in ('mutation { createApiKey(name: "x", role: "predictor") { secret } }',
                     'mutation { createApiKey(name: "x", role: OWNER) { secret } }'):
        body = admin.post(document).json()
        assert code(body) == "GRAPHQL_VALIDATION_FAILED" and "Role" in body["errors"][0][
            "message"], body
    body = admin.post(CREATE, n="x", r="owner").json()
    assert code(body) == "GRAPHQL_VALIDATION_FAILED" and "Role" in body["errors"][0]["message"]
    assert len(admin("{ apiKeys { id } }")["data"]["apiKeys"]) == 3, "nothing was created"


def test_key_ids_are_ids_and_numbers_still_answer(admin: Api) -> None:
    ids = [admin(CREATE, n=f"k{i}", r="AUDITOR")["data"]["createApiKey"]["key"]["id"]
           for i in range(3)]
    new = admin(REVOKE, id=ids[0])["data"]["revokeApiKey"]
    assert new["id"] == ids[0] and new["role"] == "AUDITOR" and new["revokedAt"]
    # the old spelling: the id as a number, in the document or as a JSON variable
    inline = admin(f"mutation {{ revokeApiKey(id: {ids[1]}) {{ id revokedAt }} }}")
    assert inline["data"]["revokeApiKey"]["id"] == ids[1]
    number = admin(REVOKE, id=int(ids[2]))["data"]["revokeApiKey"]
    assert number["id"] == ids[2] and number["revokedAt"]

    for bad in ("abc", "-1", "99999999999999999999", " ", "٣"):
        body = admin.post(REVOKE, id=bad).json()
        assert code(body) == "NOT_FOUND" and "key ids are numbers" in body["errors"][0][
            "message"], (bad, body)
    assert code(admin.post(REVOKE, id="999999").json()) == "NOT_FOUND"
    assert code(admin.post(REVOKE, id="4\x00").json()) == "BAD_REQUEST", "NUL: refused by HTTP"
    assert code(admin.post(REVOKE, id=ids[0]).json()) == "BAD_REQUEST", "already revoked"
