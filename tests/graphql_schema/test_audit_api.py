"""Auditors and admins over real HTTP: the audit log, a prediction's story, API keys, and
personal data redacted for everyone else."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from app.audit import merkle
from app.audit.log import entry_text
from app.ml.task import TaskSpec
from app.settings import Settings
from tests.support.inputs import example_inputs
from tests.support.server import Api, LiveServer, make_key
from tests.support.tampering import rewrite_route, tamper

BATCH = """mutation($i: [JSON!]!) { predictBatch(task: "loan_default", inputs: $i) {
  id route input explanation { contributions { feature value } } } }"""
CLAIM = """mutation { claimReview(task: "loan_default") { leaseToken
  item { prediction { id input } } } }"""
SUBMIT = """mutation($t: String!) { submitReview(leaseToken: $t, label: "late",
  comment: "income checked") { status } }"""
STORY = """query($id: ID!) { predictionStory(id: $id) {
  prediction { id input route reasons { code } explanation { space } }
  release { version members { name algorithm sha256 } }
  reviewItem { status } reviews { reviewer label comment kind reviewKind at } finalLabel
  trainedInto { version } auditEvents { id kind actor subjectType } } }"""
PROOF = """query($id: ID!) { predictionStory(id: $id) { auditProof { leafIndex leafHash
  treeSize auditPath rootHash entry checkpoint { treeSize rootHash signature keyId } } } }"""
VERIFY = "{ verifyAuditLog { ok checked firstBrokenEventId reason headHash } }"
EVENTS = """query($kind: String, $first: Int!, $after: String) {
  auditEvents(kind: $kind, first: $first, after: $after) { totalCount
    pageInfo { hasNextPage endCursor } edges { node { id sequence at kind actor task subjectType
    subjectId payload payloadJson prevHash hash } } } }"""
CREATE = """mutation($n: String!, $r: Role!) { createApiKey(name: $n, role: $r) {
  secret key { id name role prefix revokedAt } } }"""
KEYS = "{ apiKeys { id name role prefix createdAt revokedAt } }"
REVOKE = "mutation($id: ID!) { revokeApiKey(id: $id) { id revokedAt } }"
PERSONAL = {"income", "payment_to_income"}  # income is pii; the ratio is derived from it


class Office:
    def __init__(self, client: httpx.Client, settings: Settings) -> None:
        self.client = client
        self.predictor = Api(client, make_key(settings, "predictor", "app"))
        self.admin = Api(client, make_key(settings, "admin", "ops"))

    def hire(self, name: str, role: str) -> tuple[Api, dict[str, Any]]:
        made = self.admin(CREATE, n=name, r=role.upper())["data"]["createApiKey"]
        return Api(self.client, made["secret"]), made["key"]


@pytest.fixture
def office(settings: Settings) -> Iterator[Office]:
    settings.key_cache_seconds = 0.5
    with LiveServer(settings) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        yield Office(client, settings)


def story_hash(auditor: Api, pid: str) -> str:
    """The hash of the prediction.made event of a prediction, as the log lists it."""
    found = auditor(EVENTS, kind="prediction.made", first=500)["data"]["auditEvents"]
    return next(str(e["node"]["hash"]) for e in found["edges"]
                if e["node"]["subjectId"] == pid)


def code(body: dict[str, Any]) -> str:
    return str(body["errors"][0]["extensions"]["code"])


def test_story_keys_and_redaction(office: Office, example_tasks: dict[str, TaskSpec]) -> None:
    reviewer, _ = office.hire("rita", "reviewer")
    auditor, _ = office.hire("audrey", "auditor")
    inputs = example_inputs(example_tasks["loan_default"], 60, seed=4)
    rows = office.predictor(BATCH, i=inputs)["data"]["predictBatch"]
    # the predictor reads its own input back with personal features redacted
    assert rows[0]["input"]["income"] == "[redacted]"
    assert rows[0]["input"]["loan_amount"] == inputs[0]["loan_amount"]
    shown = {c["feature"]: c["value"] for c in rows[0]["explanation"]["contributions"]}
    assert {f for f, v in shown.items() if v == "[redacted]"} == PERSONAL

    lease = reviewer(CLAIM)["data"]["claimReview"]
    assert lease["item"]["prediction"]["input"]["income"] == "[redacted]"
    pid = lease["item"]["prediction"]["id"]
    assert reviewer(SUBMIT, t=lease["leaseToken"])["data"]["submitReview"]["status"] == "RESOLVED"

    story = auditor(STORY, id=pid)["data"]["predictionStory"]
    sent = inputs[[r["id"] for r in rows].index(pid)]
    assert story["prediction"]["input"] == sent  # auditors read personal data as sent
    assert story["prediction"]["route"] == "REVIEW" and story["prediction"]["reasons"]
    assert [m["name"] for m in story["release"]["members"]] == ["logistic", "boosted"]
    assert story["reviews"][0] | {"at": None} == {
        "reviewer": "rita", "label": "late", "comment": "income checked", "kind": "review",
        "reviewKind": "REVIEW", "at": None}
    assert story["finalLabel"] == "late" and story["reviewItem"]["status"] == "RESOLVED"
    assert story["trainedInto"] == []
    assert [e["kind"] for e in story["auditEvents"]] == [
        "prediction.made", "review.claimed", "review.submitted", "review.resolved"]
    assert story["auditEvents"][0]["actor"].endswith(":app")
    assert story["auditEvents"][1]["actor"].endswith(":rita")
    assert code(office.predictor(STORY, id=pid)) == "FORBIDDEN"
    assert code(reviewer(KEYS)) == "FORBIDDEN"

    # The server's sequencer gives the event a leaf and signs a checkpoint within seconds.
    proof = None
    for _ in range(300):
        proof = auditor(PROOF, id=pid)["data"]["predictionStory"]["auditProof"]
        if proof is not None:
            break
        time.sleep(0.1)
    assert proof is not None
    leaf = merkle.leaf_hash(proof["entry"].encode())
    assert leaf.hex() == proof["leafHash"] == story_hash(auditor, pid)
    path = [bytes.fromhex(h) for h in proof["auditPath"]]
    root = merkle.root_from_inclusion(proof["leafIndex"], proof["treeSize"], leaf, path)
    assert root.hex() == proof["rootHash"] == proof["checkpoint"]["rootHash"]
    assert proof["checkpoint"]["treeSize"] == proof["treeSize"]
    assert len(bytes.fromhex(proof["checkpoint"]["signature"])) == 64
    assert code(auditor(CREATE, n="x", r="ADMIN")) == "FORBIDDEN"

    listed = office.admin(KEYS)["data"]["apiKeys"]
    assert [k["name"] for k in listed] == ["app", "ops", "rita", "audrey"]
    no_secret = office.admin.post("{ apiKeys { secret keyHash } }").json()
    assert "Cannot query field 'secret'" in no_secret["errors"][0]["message"]
    predictor_id = listed[0]["id"]
    revoked = office.admin(REVOKE, id=predictor_id)["data"]["revokeApiKey"]
    assert revoked["revokedAt"] is not None
    assert code(office.admin(REVOKE, id=predictor_id)) == "BAD_REQUEST"
    assert code(office.admin(REVOKE, id=999)) == "NOT_FOUND"
    time.sleep(0.6)  # the key cache's TTL
    assert office.predictor.post(BATCH, i=inputs[:1]).status_code == 401

    events = auditor(EVENTS, kind="key.revoked", first=10)["data"]["auditEvents"]
    assert events["totalCount"] == 1
    [node] = [e["node"] for e in events["edges"]]
    assert node["subjectId"] == str(predictor_id) and node["actor"].endswith(":ops")
    created = auditor(EVENTS, kind="key.created", first=10)["data"]["auditEvents"]
    assert [(e["node"]["payload"]["name"], e["node"]["actor"].endswith(":ops"))
            for e in created["edges"]] == [
        ("app", False), ("ops", False), ("rita", True), ("audrey", True)]


def test_verify_names_the_tampered_event(office: Office, settings: Settings,
                                         example_tasks: dict[str, TaskSpec]) -> None:
    auditor, _ = office.hire("audrey", "auditor")
    inputs = example_inputs(example_tasks["loan_default"], 60, seed=4)
    office.predictor(BATCH, i=inputs)
    first = auditor(VERIFY)["data"]["verifyAuditLog"]
    assert first["ok"] and first["firstBrokenEventId"] is None and first["checked"] > 60

    seen: list[dict[str, Any]] = []
    after = None
    while True:  # page through the whole log: contiguous ids, oldest first
        page = auditor(EVENTS, first=25, after=after)["data"]["auditEvents"]
        seen += [e["node"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    ids = [e["sequence"] for e in seen]
    assert ids == sorted(set(ids)) and page["totalCount"] == len(seen)
    assert [e["id"] for e in seen] == [str(n) for n in ids]
    # payloadJson is the hashed text itself: every leaf hash recomputes from it
    for e in seen:
        at = datetime.fromisoformat(e["at"])
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        entry = entry_text(e["sequence"], at, e["kind"], e["actor"], e["task"], e["subjectType"],
                           e["subjectId"], e["payloadJson"], e["prevHash"])
        assert merkle.leaf_hash(entry.encode()).hex() == e["hash"], e
        assert json.loads(e["payloadJson"]) == e["payload"]

    routed = [e for e in seen if e["kind"] == "prediction.made"
              and e["payload"]["route"] == "REVIEW"]
    target = routed[len(routed) // 2]
    for _ in range(300):  # the server's sequencer puts the event in a signed tree
        if auditor(PROOF, id=target["subjectId"])["data"]["predictionStory"]["auditProof"]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the event never reached a signed checkpoint")
    sealed = auditor(VERIFY)["data"]["verifyAuditLog"]
    tamper(settings.resolved_database_url, rewrite_route(target["sequence"]))
    broken = auditor(VERIFY)["data"]["verifyAuditLog"]
    assert broken["ok"] is False and broken["firstBrokenEventId"] == str(target["sequence"])
    assert "does not match its leaf hash" in broken["reason"]
    assert broken["headHash"] != sealed["headHash"]  # the root recomputed from the events

    earlier = routed[0]["sequence"]
    tamper(settings.resolved_database_url, f"DELETE FROM audit_events WHERE id = {earlier}")
    gone = auditor(VERIFY)["data"]["verifyAuditLog"]
    assert gone["firstBrokenEventId"] == str(earlier) and "missing" in gone["reason"]
