"""`arbiter predict-file` as a user runs it, on SQLite and PostgreSQL: every row of a file
explained, routed, stored and audited a chunk per transaction, answers written in order,
a bad row stopping the run with its row number and a resume that stores nothing twice."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import func, select

from app.audit import log as audit
from app.db.engine import make_engine, make_sessionmaker
from app.db.tables import AuditEvent, Prediction
from app.examples.loan import generate
from app.main import build_services
from app.ml.task import TaskSpec
from app.predictions import files as batch_files
from app.predictions.path import predict_batch
from app.settings import Settings
from tests.support.processes import arbiter
from tests.support.tampering import sequenced_and_verified

TASK = "loan_default"


def loan_rows(task: TaskSpec, n: int) -> list[dict[str, Any]]:
    names = [f.name for f in task.features]
    return [{k: r[k] for k in names if r[k] == r[k]}  # NaN = left out
            for r in generate(rows=n, seed=77).to_dict("records")]


def write_csv(path: Path, task: TaskSpec, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[f.name for f in task.features])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("true" if v is True else "false" if v is False else v)
                             for k, v in row.items()})


def answers(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def stored(settings: Settings) -> tuple[dict[str, Prediction], int, bool]:
    """Predictions by id, audit events of predictions, and whether the chain verifies."""
    async def read() -> tuple[dict[str, Prediction], int, bool]:
        engine = make_engine(settings.resolved_database_url)
        try:
            sessions = make_sessionmaker(engine)
            async with sessions() as session:
                rows = (await session.exec(select(Prediction))).all()
                events = (await session.exec(select(func.count()).select_from(AuditEvent).where(
                    AuditEvent.kind == audit.Kind.PREDICTION_MADE.value))).one()
            verification = await sequenced_and_verified(sessions, settings)
            return {p.id: p for p in rows}, events, verification.ok
        finally:
            await engine.dispose()
    return asyncio.run(read())


def test_a_csv_file_is_predicted_in_chunks_and_listed_in_order(
    settings: Settings, env: dict[str, str], example_tasks: dict[str, TaskSpec],
    tmp_path: Path,
) -> None:
    task = example_tasks[TASK]
    rows = loan_rows(task, 1_100)
    source = tmp_path / "loans.csv"
    write_csv(source, task, rows)

    done = arbiter(env, "predict-file", TASK, str(source), "--chunk-rows", "400")
    assert done.returncode == 0, done.stderr
    listed = answers(tmp_path / "loans.predictions.jsonl")
    assert [a["row"] for a in listed] == list(range(1, 1_101))

    by_id, events, chain_ok = stored(settings)
    assert set(by_id) == {a["id"] for a in listed} and len(by_id) == 1_100
    assert events == 1_100 and chain_ok
    for a in listed[:50] + listed[-50:]:
        p = by_id[a["id"]]
        assert (p.label, p.route, p.status) == (a["label"], a["route"], a["status"])
        # The stored input is the row as the contract reads it (CSV text typed).
        assert p.input == rows[a["row"] - 1]
    assert "1100 predictions stored" in done.stdout


def test_a_bad_row_stops_the_run_and_resume_stores_nothing_twice(
    settings: Settings, env: dict[str, str], example_tasks: dict[str, TaskSpec],
    tmp_path: Path,
) -> None:
    task = example_tasks[TASK]
    rows = loan_rows(task, 700)
    source = tmp_path / "loans.jsonl"
    bad = [dict(r) for r in rows]
    bad[449]["loan_amount"] = "lots"  # row 450 of the file, in the second chunk of 300
    source.write_text("".join(json.dumps(r) + "\n" for r in bad))
    output = tmp_path / "answers.jsonl"

    failed = arbiter(env, "predict-file", TASK, str(source), "--output", str(output),
                     "--chunk-rows", "300")
    assert failed.returncode == 2
    assert "row 450" in failed.stderr and "loan_amount" in failed.stderr, failed.stderr
    assert len(answers(output)) == 300  # the first chunk committed and is listed
    assert len(stored(settings)[0]) == 300

    again = arbiter(env, "predict-file", TASK, str(source), "--output", str(output))
    assert again.returncode == 2 and "--resume" in again.stderr  # never over an old output
    assert len(stored(settings)[0]) == 300

    source.write_text("".join(json.dumps(r) + "\n" for r in rows))  # the row fixed
    with output.open("a") as f:
        f.write('{"row": 301, "id": "cut sho')  # a line a crash cut short
    resumed = arbiter(env, "predict-file", TASK, str(source), "--output", str(output),
                      "--chunk-rows", "300", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    listed = answers(output)
    assert [a["row"] for a in listed] == list(range(1, 701))
    by_id, events, chain_ok = stored(settings)
    assert set(by_id) == {a["id"] for a in listed} and events == 700 and chain_ok


def test_unknown_formats_and_missing_files_are_named(
    settings: Settings, env: dict[str, str], tmp_path: Path,
) -> None:
    odd = tmp_path / "loans.xlsx"
    odd.write_text("not a table")
    refused = arbiter(env, "predict-file", TASK, str(odd))
    assert refused.returncode == 2 and "unknown format '.xlsx'" in refused.stderr
    missing = arbiter(env, "predict-file", TASK, str(tmp_path / "nope.csv"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    assert stored(settings)[0] == {}


class DiesBeforeWriting:
    """The output file of a process that dies (raises) before the answers of chunk
    ``dies_at`` reach it, after that chunk's transaction committed."""

    def __init__(self, path: Path, dies_at: int) -> None:
        self.file, self.chunks, self.dies_at = path.open("a", encoding="utf-8"), 0, dies_at

    def writelines(self, lines: Any) -> None:
        self.chunks += 1
        if self.chunks == self.dies_at:
            raise KeyboardInterrupt("killed between the commit and the write")
        self.file.writelines(lines)

    def flush(self) -> None:
        self.file.flush()

    def fileno(self) -> int:
        return self.file.fileno()


async def score(settings: Settings, rows: list[dict[str, Any]], out: Any, run: str, skip: int
                ) -> batch_files.FileResult:
    """``rows`` predicted as ``arbiter predict-file`` does, 200 per chunk, into ``out``."""
    services, engine = build_services(settings)
    try:
        await services.registry.load_all()
        return await batch_files.predict_file(
            services, TASK, rows, out, actor="cli:test", chunk_rows=200, run=run, skip=skip)
    finally:
        await services.drain()
        services.close()
        await engine.dispose()


def dies_between_commit_and_write(settings: Settings, rows: list[dict[str, Any]],
                                  output: Path, run: str) -> int:
    """A run killed after its second chunk committed, before that chunk was listed; the
    rows it stored: 400, or 400 and the third chunk's, whose commit (once its batch was
    storing) finishes before the process ends."""
    dying = DiesBeforeWriting(output, dies_at=2)
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(score(settings, rows, dying, run, 0))
    dying.file.close()
    kept = len(stored(settings)[0])
    assert kept in (400, min(600, len(rows))), kept
    return kept


def test_the_resume_summary_tells_new_predictions_from_stored_answers(
    settings: Settings, env: dict[str, str], example_tasks: dict[str, TaskSpec],
    tmp_path: Path,
) -> None:
    """Issue 23: a resume after a crash between a commit and its write counted the rows it
    answered from storage as stored by it."""
    rows = loan_rows(example_tasks[TASK], 700)
    source, output = tmp_path / "loans.jsonl", tmp_path / "answers.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output.touch()
    kept = dies_between_commit_and_write(settings, rows, output,
                                         batch_files.run_key(source, output))

    resumed = arbiter(env, "predict-file", TASK, str(source), "--output", str(output),
                      "--chunk-rows", "300", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    summary = " ".join(resumed.stdout.split())
    assert f"{700 - kept} predictions stored" in summary, summary  # rows after the kept
    assert f"{kept - 200} already stored answered from storage" in summary, summary  # 201-
    assert "700 answers in" in summary, summary
    assert len(stored(settings)[0]) == 700


def test_a_chunk_committed_but_not_listed_is_answered_on_resume_not_stored_again(
    settings: Settings, example_tasks: dict[str, TaskSpec], tmp_path: Path,
) -> None:
    task = example_tasks[TASK]
    rows = loan_rows(task, 500)
    source, output = tmp_path / "loans.jsonl", tmp_path / "answers.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output.touch()
    run = batch_files.run_key(source, output)
    kept = dies_between_commit_and_write(settings, rows, output, run)
    assert len(answers(output)) == 200

    # The resume keeps the run's key and answers the rows stored after 200 from storage.
    assert batch_files.run_key(source, output) == run
    with output.open("a", encoding="utf-8") as resumed:
        result = asyncio.run(score(settings, rows, resumed, run, batch_files.listed_rows(output)))
    listed = answers(output)
    assert [a["row"] for a in listed] == list(range(1, 501))
    by_id, events, chain_ok = stored(settings)
    assert len(by_id) == 500 and set(by_id) == {a["id"] for a in listed}
    assert events == 500 and chain_ok
    assert (result.predicted, result.replayed) == (500 - kept, kept - 200)  # the rest new
    assert by_id[listed[250]["id"]].idempotency_key == f"{run}:251"

    # A new output, or another source, starts a new run.
    assert batch_files.run_key(source, tmp_path / "other.jsonl") != run
    other = tmp_path / "other-loans.jsonl"
    other.write_text(source.read_text())
    assert batch_files.run_key(other, output) != run


def test_two_runs_of_one_file_at_once_store_each_row_once(
    settings: Settings, example_tasks: dict[str, TaskSpec],
) -> None:
    """Two processes scoring the same rows under the same keys, without an API key (as
    `arbiter predict-file` does): both look the keys up before either commits, the second
    commit is refused by the keyless unique index, and its retry answers with the first's."""
    rows = loan_rows(example_tasks[TASK], 300)
    keys = [f"run-1:{i}" for i in range(1, 301)]

    async def both() -> list[list[Prediction]]:
        made = [build_services(settings) for _ in range(2)]
        try:
            for services, _ in made:
                await services.registry.load_all()
            return list(await asyncio.gather(*(
                predict_batch(services, None, TASK, rows, actor="cli:test", idempotency_keys=keys)
                for services, _ in made)))
        finally:
            for services, engine in made:
                await services.drain()
                services.close()
                await engine.dispose()

    first, second = asyncio.run(both())
    assert [p.id for p in first] == [p.id for p in second]
    by_id, events, chain_ok = stored(settings)
    assert len(by_id) == 300 and set(by_id) == {p.id for p in first}
    assert events == 300 and chain_ok
