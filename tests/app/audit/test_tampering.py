"""Someone with database access rewrites what was recorded, each on a fresh copy of a log
a checkpoint signed: every tampering is named by `verify`, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import col, select

from app.access.roles import Principal, Role
from app.audit import log as audit
from app.audit.checkpoints import key_id, load_signing_key, sign
from app.db.tables import AuditEvent, Review
from app.ml.task import TaskSpec
from app.predictions.path import predict_batch
from app.predictions.services import Services
from app.settings import Settings
from review import queue
from tests.support.inputs import example_inputs
from tests.support.server import make_key
from tests.support.services import run_with
from tests.support.tampering import rebuild_tree, rewrite_route, tamper, verified

TASK = "loan_default"


def history(settings: Settings, task: TaskSpec) -> dict[str, Any]:
    """Predictions (some routed to review), one of them reviewed and resolved."""
    make_key(settings, "reviewer", "rita")

    async def work(services: Services) -> dict[str, Any]:
        await services.registry.load_all()
        made = await predict_batch(services, None, TASK, example_inputs(task, 80, seed=5))
        lease = await queue.claim(services.sessions, TASK, Principal(1, "rita", Role.REVIEWER),
                                  60)
        assert lease is not None
        item = await queue.submit(services.sessions, lease.token,
                                  Principal(1, "rita", Role.REVIEWER), "late", "checked",
                                  lambda _: task.classes)
        async with services.sessions() as session:
            events = list((await session.exec(select(AuditEvent)
                                              .order_by(col(AuditEvent.id)))).all())
            review = (await session.exec(select(Review))).one()
        routed = [e for e in events if e.kind == "prediction.made"
                  and json.loads(e.payload)["route"] == "REVIEW"]
        return {"events": events, "routed": routed, "item": item, "review": review,
                "prediction": made[3]}

    return dict(run_with(settings, work))


def _forged(h: dict[str, Any]) -> str:
    """A prediction.made event with a valid leaf hash (queued for the sequencer)."""
    last = h["events"][-1].id
    [values] = audit.event_values([audit.Entry(
        audit.Kind.PREDICTION_MADE, "key:9:intruder", "prediction", "forged-1",
        {"label": "repaid", "route": "AUTO"}, TASK,
        {"predictions/forged-1": "0" * 64})], [last + 100], [{"predictions/forged-1": "0" * 64}])
    v = {**values, "at": values["at"].strftime("%Y-%m-%d %H:%M:%S.%f+00:00")}
    return (f"INSERT INTO audit_events (id, at, kind, actor, task, subject_type, subject_id, "
            f"payload, prev_hash, hash) VALUES ({v['id']}, '{v['at']}', '{v['kind']}', "
            f"'{v['actor']}', '{TASK}', 'prediction', 'forged-1', '{v['payload']}', NULL, "
            f"'{v['hash']}')")  # the database marks it pending


def _other_key_checkpoint(settings: Settings, h: dict[str, Any]) -> str:
    """A checkpoint of a larger tree, signed by another key under the log's key id."""
    mine = load_signing_key(None, settings.data_dir, False)
    c = sign(Ed25519PrivateKey.generate(), 10**6, "ab" * 32, h["events"][-1].at)
    at = c.at.strftime("%Y-%m-%d %H:%M:%S.%f+00:00")
    return (f"INSERT INTO audit_checkpoints (tree_size, root_hash, at, signature, key_id) "
            f"VALUES ({c.tree_size}, '{c.root_hash}', '{at}', '{c.signature}', "
            f"'{key_id(mine.public)}')")


Tampering = Callable[[Settings, dict[str, Any]], str]
CASES: dict[str, tuple[Tampering, bool, str]] = {
    # name: (SQL, rebuild the stored tree afterwards, what verify says)
    "payload edited": (lambda s, h: rewrite_route(h["routed"][2].id), False,
                       "does not match its leaf hash"),
    "row deleted": (lambda s, h: f"DELETE FROM audit_events WHERE id = {h['routed'][2].id}",
                    False, "is missing: deleted"),
    "edit with the tree recomputed": (lambda s, h: rewrite_route(h["routed"][2].id), True,
                                      "history rewritten"),
    "deletion with renumbering": (
        lambda s, h: f"DELETE FROM audit_events WHERE id = {h['routed'][2].id}", True,
        "leaves (truncated)"),
    "newest 50 deleted": (
        lambda s, h: f"DELETE FROM audit_events WHERE id > {h['events'][-51].id}", True,
        "truncated"),
    "prediction label, final label and input edited": (
        lambda s, h: "UPDATE predictions SET label = 'default', final_label = 'default', "
        f"input = '{{\"income\": 1}}' WHERE id = '{h['item'].prediction_id}'", False,
        "predictions/{item.prediction_id} was changed behind the log's back"),
    "review item final label edited": (
        lambda s, h: f"UPDATE review_items SET final_label = 'repaid' WHERE id = "
        f"'{h['item'].id}'", False, "review_items/{item.id} was changed"),
    "review row deleted": (lambda s, h: f"DELETE FROM reviews WHERE id = {h['review'].id}",
                           False, "reviews/{review.id} was deleted behind the log's back"),
    # Sequenced, it commits to a prediction that is not there; with the database's
    # triggers off (PostgreSQL's DISABLE TRIGGER USER), it is not even pending.
    "forged event appended with a valid hash": (
        lambda s, h: _forged(h), False,
        "predictions/forged-1 was deleted behind|in no leaf and not waiting for one"),
    "checkpoint signed with another key": (_other_key_checkpoint, False,
                                           "does not verify with key"),
    "event inserted in the middle, tree recomputed": (lambda s, h: _forged(h), True,
                                                      "history rewritten"),
    "stored explanation edited": (
        lambda s, h: "UPDATE predictions SET explanation = '{}' WHERE id = "
        f"'{h['prediction'].id}'", False, "predictions/{prediction.id} was changed"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_tampering_is_named(case: str, settings: Settings,
                                 example_tasks: dict[str, TaskSpec]) -> None:
    h = history(settings, example_tasks[TASK])
    before = verified(settings)
    assert before.ok and before.checkpoints >= 1, before.problems
    statement, rebuild, expected = CASES[case]
    for sql in statement(settings, h).split("; "):
        tamper(settings.resolved_database_url, sql)
    if rebuild:
        middle = h["routed"][1].id if case.startswith("event inserted") else None
        rebuild_tree(settings.resolved_database_url, middle)
    after = verified(settings)
    said = " | ".join(after.problems)
    assert not after.ok
    named = expected.format(item=h["item"], review=h["review"], prediction=h["prediction"])
    assert any(one in said for one in named.split("|")), said


def test_an_untouched_log_verifies_with_every_row_committed(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    h = history(settings, example_tasks[TASK])
    check = verified(settings)
    assert check.ok, check.problems
    assert check.leaves == len(h["events"]) and check.legacy_rows == 0
    routed = len(h["routed"])
    # 80 predictions, their review items, 1 review, 2 releases, their stage changes, 1 key
    assert check.rows >= 80 + routed + 1 + 2 + 1

