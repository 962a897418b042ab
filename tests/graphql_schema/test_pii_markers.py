"""Personal values stay where they belong: unique marker incomes (income is pii in
loan_default) sent through valid, out-of-range, out-of-distribution, inline-literal, batch
and review paths appear in no log line (tracebacks included), no audit payload, and no
answer to a role that sees the field redacted (predictors and reviewers)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlmodel import select

from app import logs
from app.db.engine import make_engine, make_sessionmaker
from app.db.tables import AuditEvent
from app.ml.task import TaskSpec
from app.settings import Settings
from tests.support.inputs import example_inputs
from tests.support.server import Api, LiveServer, make_key, run

FIELDS = ("id route reasons { code detail value } input "
          "explanation { contributions { feature value } }")
PREDICT = ("mutation($i: JSON!) { predict(task: \"loan_default\", input: $i) { "
           + FIELDS + " } }")
BATCH = ("mutation($i: [JSON!]!) { predictBatch(task: \"loan_default\", inputs: $i) { "
         + FIELDS + " } }")
CLAIM = ("mutation { claimReview(task: \"loan_default\") { leaseToken item { id prediction { "
         + FIELDS + " } } } }")
# Unusual numbers, each written as it was sent and as the OOD detail would print it.
VALID, FAR, BATCHED = 7_654_321.5, 9_876_543.25, 6_543_210.75
OUT_OF_RANGE, INLINE = 12_345_678.25, 13_579_246.5
MARKERS = (VALID, FAR, BATCHED, OUT_OF_RANGE, INLINE)


def spellings(value: float) -> list[str]:
    return [repr(value), f"{value:.6g}", str(int(value))]


def leaks(text: str) -> list[str]:
    return [s for value in MARKERS for s in spellings(value) if s in text]


def with_income(row: dict[str, Any], income: float) -> dict[str, Any]:
    return {**row, "income": income}


def audit_payloads(settings: Settings) -> str:
    async def work() -> str:
        engine = make_engine(settings.resolved_database_url)
        try:
            async with make_sessionmaker(engine)() as session:
                rows = (await session.exec(select(AuditEvent))).all()
        finally:
            await engine.dispose()
        return json.dumps([r.payload for r in rows])

    return str(run(work()))


@pytest.fixture
def server_log() -> Iterator[io.StringIO]:
    """The process's logging as the server configures it (JSON lines, at DEBUG)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    logs.configure_logging("json", "DEBUG", stream)
    yield stream
    root.handlers[:] = handlers
    root.setLevel(level)


def test_marker_incomes_leak_into_no_log_audit_payload_or_redacted_answer(
        settings: Settings, example_tasks: dict[str, TaskSpec], server_log: io.StringIO) -> None:
    rows = example_inputs(example_tasks["loan_default"], 4, seed=11)
    answers: list[str] = []
    with LiveServer(settings, {"audit_rate": 1.0}) as server, \
            httpx.Client(base_url=server.url, timeout=120) as client:
        predictor = Api(client, make_key(settings, "predictor", "app"))
        reviewer = Api(client, make_key(settings, "reviewer", "rita"))

        def send(api: Api, query: str, **variables: Any) -> dict[str, Any]:
            response = api.post(query, **variables)
            answers.append(response.text)
            return dict(response.json())

        valid = send(predictor, PREDICT, i=with_income(rows[0], VALID))["data"]["predict"]
        far = send(predictor, PREDICT, i={**with_income(rows[1], FAR), "loan_amount": 500,
                                          "term_months": 6})["data"]["predict"]
        assert valid["route"] == "REVIEW" and far["route"] == "REVIEW"
        ood = [r for r in far["reasons"] if r["code"] == "OUT_OF_DISTRIBUTION"]
        assert ood and "income=[redacted]" in ood[0]["detail"], far["reasons"]
        refused = send(predictor, PREDICT, i=with_income(rows[2], OUT_OF_RANGE))
        assert refused["errors"][0]["extensions"]["code"] == "INPUT_INVALID"
        assert "income: [redacted] is above the maximum" in refused["errors"][0]["message"]
        literal = ", ".join(f"{k}: {json.dumps(v)}" for k, v in
                            with_income(rows[2], INLINE).items())
        inline = send(predictor, "mutation { predict(task: \"loan_default\", input: {"
                      + literal + "}) { id } }")
        assert inline["errors"][0]["extensions"]["code"] == "INPUT_INVALID"
        batch = send(predictor, BATCH, i=[with_income(rows[3], BATCHED)])
        assert len(batch["data"]["predictBatch"]) == 1
        while (lease := send(reviewer, CLAIM)["data"]["claimReview"]) is not None:
            assert lease["item"]["prediction"]["input"]["income"] == "[redacted]"

    assert leaks("\n".join(answers)) == []
    logged = server_log.getvalue().splitlines()
    assert len(logged) > 10  # it did capture the server's lines
    assert [line[:400] for line in logged if leaks(line)] == []
    assert leaks(audit_payloads(settings)) == []
