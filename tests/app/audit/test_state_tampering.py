"""What drives decisions, and what erasure leaves, changed behind the log's back with raw
SQL as an intruder with database write access would: `verify` names the row, on SQLite
and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import col, select

from app.audit.erasure import ERASED_DETAIL, erase_input, reasons_without_values
from app.db.engine import make_engine
from app.db.migrate import alembic_config, upgrade
from app.db.monitoring import Outcome
from app.db.tables import Prediction, Release, ReleaseMember, TrainingLabel
from app.ml.task import TaskSpec
from app.predictions.path import predict_batch
from app.predictions.services import Services
from app.quality.alarms import _store_alarm
from app.quality.outcomes import OutcomeInput, record_outcomes
from app.settings import Settings
from tests.app.audit.test_tampering import TASK, history
from tests.support.inputs import example_inputs
from tests.support.services import run_with
from tests.support.tampering import tamper, verified


def _tampered(settings: Settings, *statements: str) -> str:
    """The log verified, then changed by ``statements``, then what verify says of it."""
    before = verified(settings)
    assert before.ok, before.problems
    for sql in statements:
        tamper(settings.resolved_database_url, sql)
    after = verified(settings)
    assert not after.ok
    return " | ".join(after.problems)


def test_an_input_whose_salt_is_removed_is_named(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    """Without a salt the input was not checked at all: replaced, it passed."""
    pid = history(settings, example_tasks[TASK])["prediction"].id
    said = _tampered(settings, "UPDATE predictions SET input_salt = NULL, "
                     f"input = '{{\"income\": 1}}' WHERE id = '{pid}'")
    assert f"predictions/{pid} has lost its input's salt behind the log's back" in said, said


def test_an_erased_input_put_back_is_named(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    pid = history(settings, example_tasks[TASK])["prediction"].id
    run_with(settings, lambda s: erase_input(s.sessions, pid, "cli:test"))
    said = _tampered(settings, f"UPDATE predictions SET input = '{{\"income\": 1}}' "
                     f"WHERE id = '{pid}'")
    assert f"predictions/{pid} has an input again behind the log's back" in said, said


def test_a_key_dated_before_the_seal_is_not_taken_for_legacy(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    """An admin key inserted with a created_at in 2020 used to count as older than the
    log's commitments; only the rows migration 0017 pinned are legacy."""
    history(settings, example_tasks[TASK])
    said = _tampered(settings, "INSERT INTO api_keys (id, name, role, key_hash, prefix, "
                     f"created_at) VALUES (9001, 'old', 'admin', '{'1' * 64}', 'arb_old1', "
                     "'2020-01-01 00:00:00')")
    assert "api_keys/9001 was added behind the log's back" in said, said


def test_rows_older_than_the_pin_are_legacy_and_no_others(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    """A database migrated before 0017 holds rows no event commits to (a training label the
    older code wrote): 0017 pins them by id, and a row added after is named."""
    from alembic import command

    h = history(settings, example_tasks[TASK])
    [labelled] = [x.prediction_id for x in _labels(settings)]
    first, second = [e.subject_id for e in h["routed"] if e.subject_id != labelled][:2]
    url = settings.resolved_database_url

    def label(row_id: int, prediction_id: str) -> str:
        return ("INSERT INTO training_labels (id, prediction_id, task, label, source, "
                f"created_at) VALUES ({row_id}, '{prediction_id}', '{TASK}', 'default', "
                "'outcome', '2026-12-01 00:00:00')")
    command.downgrade(alembic_config(url), "0012")
    execute(url, label(9001, first))  # as the code before 0017 wrote it: uncommitted
    upgrade(url)
    pinned = verified(settings)
    assert pinned.ok and pinned.legacy_rows == 1, pinned.problems
    said = _tampered(settings, label(9002, second))
    assert "training_labels/9002 was added behind the log's back" in said, said
    assert "training_labels/9001" not in said, said


def execute(url: str, statement: str) -> None:
    """One statement, the log's triggers left as they are."""
    async def work() -> None:
        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text(statement))
        finally:
            await engine.dispose()
    asyncio.run(work())


def _release(settings: Settings) -> tuple[int, int]:
    """The LIVE release of the task and one of its members."""
    async def work(services: Services) -> tuple[int, int]:
        async with services.sessions() as session:
            release = (await session.exec(select(Release).where(
                col(Release.task) == TASK, col(Release.stage) == "LIVE"))).one()
            member = (await session.exec(select(ReleaseMember).where(
                col(ReleaseMember.release_id) == release.id))).first()
        assert release.id is not None and member is not None and member.id is not None
        return release.id, member.id
    return run_with(settings, work)


def test_a_lifted_quality_hold_is_named(settings: Settings) -> None:
    """The review-everything hold, raised through the audited path, then cleared by SQL."""
    release_id, _ = _release(settings)

    async def alarm(services: Services) -> bool:
        async with services.sessions() as session, session.begin():
            return await _store_alarm(session, release_id, {"action": "review_all",
                                                            "reason": "bound broken"})
    assert run_with(settings, alarm)
    said = _tampered(settings, f"UPDATE releases SET quality_alarm = NULL "
                     f"WHERE id = {release_id}")
    assert f"release_state/{release_id} was changed behind the log's back" in said, said


RELEASE_CASES = {
    "calibration emptied": ("UPDATE releases SET calibration = '{{}}' WHERE id = {r}",
                            "release_state/{r}"),
    "gate record rewritten": ("UPDATE releases SET gate = '{{\"decision\": \"PASS\"}}' "
                              "WHERE id = {r}", "release_state/{r}"),
    "member weight, hash and file changed": (
        "UPDATE release_members SET weight = 9, sha256 = '" + "0" * 64 + "', "
        "artifact_path = 'other.skops' WHERE id = {m}", "release_members/{m}"),
}


@pytest.mark.parametrize("case", list(RELEASE_CASES))
def test_what_a_release_decides_with_is_committed(case: str, settings: Settings) -> None:
    """Calibration (the rows the certified AUTO thresholds are recomputed from), the gate's
    record, a member's weight, file and hash."""
    release_id, member_id = _release(settings)
    sql, row = (t.format(r=release_id, m=member_id) for t in RELEASE_CASES[case])
    said = _tampered(settings, sql)
    assert f"{row} was changed behind the log's back" in said, said


def _labels(settings: Settings) -> list[TrainingLabel]:
    async def work(services: Services) -> list[TrainingLabel]:
        async with services.sessions() as session:
            return list((await session.exec(select(TrainingLabel))).all())
    return run_with(settings, work)


def test_a_reviewed_training_label_edited_or_added_is_named(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    h = history(settings, example_tasks[TASK])
    [label] = _labels(settings)
    other = next(e.subject_id for e in h["routed"] if e.subject_id != label.prediction_id)
    said = _tampered(
        settings, f"UPDATE training_labels SET label = 'repaid' WHERE id = {label.id}",
        "INSERT INTO training_labels (id, prediction_id, task, label, source, created_at) "
        f"VALUES (9001, '{other}', '{TASK}', 'default', 'review', '2020-01-01 00:00:00')")
    assert f"training_labels/{label.id} was changed behind the log's back" in said, said
    assert "training_labels/9001 was added behind the log's back" in said, said


def test_a_recorded_outcome_edited_is_named(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    task = example_tasks[TASK]

    async def outcomes(services: Services) -> list[Outcome]:
        await services.registry.load_all()
        made = await predict_batch(services, None, TASK, example_inputs(task, 3, seed=7))
        await record_outcomes(services.sessions, task, [
            OutcomeInput(f"outcome {i}", "default", prediction_id=p.id)
            for i, p in enumerate(made)], "key:1:ops", 100)
        async with services.sessions() as session:
            return list((await session.exec(select(Outcome))).all())
    [first, *_] = run_with(settings, outcomes)
    [label, *_] = [x for x in _labels(settings) if x.prediction_id == first.prediction_id]
    said = _tampered(settings, f"UPDATE outcomes SET label = 'repaid' WHERE id = {first.id}",
                     f"UPDATE training_labels SET label = 'repaid' WHERE id = {label.id}")
    assert f"outcomes/{first.id} was changed behind the log's back" in said, said
    assert f"training_labels/{label.id} was changed behind the log's back" in said, said


def test_erasure_drops_the_input_values_of_reasons(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    """An out-of-distribution detail repeats input values ("loan_amount=500 ..."): erased
    with the input, in the audited transaction, and committed (put back, it is named)."""
    [row] = example_inputs(example_tasks[TASK], 1, seed=11)
    far = {**row, "income": 9_876_543.25, "loan_amount": 500, "term_months": 6}

    async def predicted(services: Services) -> Prediction:
        await services.registry.load_all()
        [made] = await predict_batch(services, None, TASK, [far])
        return made
    made = run_with(settings, predicted)
    ood = [r for r in made.reasons if r["code"] == "OUT_OF_DISTRIBUTION"]
    assert ood and "loan_amount=500" in ood[0]["detail"], ood
    erased = run_with(settings, lambda s: erase_input(s.sessions, made.id, "cli:test"))
    kept = [r for r in erased.reasons if r["code"] == "OUT_OF_DISTRIBUTION"]
    assert [r["detail"] for r in kept] == [ERASED_DETAIL] * len(ood)
    assert [(r["value"], r["threshold"]) for r in kept] == [
        (r["value"], r["threshold"]) for r in ood]
    assert "loan_amount=" not in json.dumps(erased.reasons)
    restored: Any = json.dumps(made.reasons).replace("'", "''")
    said = _tampered(settings, f"UPDATE predictions SET reasons = '{restored}' "
                     f"WHERE id = '{made.id}'")
    assert f"predictions/{made.id} was changed behind the log's back" in said, said


def test_rows_changed_behind_the_back_are_named_in_id_order(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    """Verify reads a table in its own order, not sorted: changed last-id-first (which moves
    them to the end of the table on PostgreSQL), the rows are still named in id order."""
    h = history(settings, example_tasks[TASK])
    changed = sorted(e.subject_id for e in h["events"] if e.kind == "prediction.made")[:3]
    said = _tampered(settings, *[f"UPDATE predictions SET label = 'default', confidence = 0.5 "
                                 f"WHERE id = '{pid}'" for pid in reversed(changed)])
    named = [said.index(f"predictions/{pid} was changed behind the log's back")
             for pid in changed]
    assert named == sorted(named), said


def test_erasure_drops_a_member_failure_quoting_the_input() -> None:
    """A member's error may quote the value it choked on: erased like an OOD detail; the
    reasons about the model keep their words."""
    reasons = [
        {"code": "MEMBER_FAILURE", "detail": "member boosted failed: could not convert "
         "string to float: 'Jane Doe, 12 Elm St'", "value": "boosted", "threshold": None},
        {"code": "LOW_CONFIDENCE", "detail": "confidence 0.51 below 0.80", "value": 0.51,
         "threshold": 0.8},
    ]
    erased = reasons_without_values(reasons)
    assert erased == [{**reasons[0], "detail": ERASED_DETAIL}, reasons[1]]
