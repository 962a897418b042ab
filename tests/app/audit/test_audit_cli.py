"""`arbiter audit` and `arbiter keys` as a user runs them: real processes on real databases."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from sqlmodel import col, select

from app.db.tables import AuditEvent
from app.main import build_services
from app.ml.task import TaskSpec
from app.predictions.path import predict_batch
from app.settings import Settings
from tests.support.inputs import example_inputs
from tests.support.processes import ARBITER
from tests.support.server import make_key
from tests.support.tampering import rewrite_route, tamper


def arbiter(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ARBITER_DATA_DIR": str(settings.data_dir),
           "ARBITER_DATABASE_URL": settings.resolved_database_url}
    return subprocess.run([ARBITER, *args], env=env, capture_output=True, text=True, timeout=600)


def events(settings: Settings) -> list[AuditEvent]:
    async def work() -> list[AuditEvent]:
        services, engine = build_services(settings)
        try:
            async with services.sessions() as session:
                return list((await session.exec(
                    select(AuditEvent).order_by(col(AuditEvent.id)))).all())
        finally:
            await engine.dispose()
    return asyncio.run(work())


def predict_some(settings: Settings, task: TaskSpec) -> None:
    async def work() -> None:
        services, engine = build_services(settings)
        try:
            await services.registry.load_all()
            await predict_batch(services, None, task.name, example_inputs(task, 40, seed=2))
        finally:
            await engine.dispose()
    asyncio.run(work())


def said(done: subprocess.CompletedProcess[str]) -> str:
    """stdout and stderr with rich's line wrapping undone."""
    return " ".join((done.stdout + done.stderr).split())


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_export_a_time_range_and_verify_it(settings: Settings, tmp_path: Path,
                                           example_tasks: dict[str, TaskSpec]) -> None:
    predict_some(settings, example_tasks["loan_default"])
    make_key(settings, "auditor", "audrey")  # after the predictions: ends the range
    stored = events(settings)
    made = [e for e in stored if e.kind == "prediction.made"]
    since, until = made[0].at, next(e.at for e in stored if e.kind == "key.created")
    assert since < until
    expected = [e.id for e in stored if since <= e.at < until]
    assert expected == [e.id for e in made]

    out = tmp_path / "audit.jsonl"
    done = arbiter(settings, "audit", "export", "--since", since.isoformat(),
                   "--until", until.isoformat(), "--output", str(out))
    assert done.returncode == 0, done.stderr
    exported = lines(out.read_text())
    assert [e["id"] for e in exported] == expected
    assert not list(tmp_path.glob("*.partial"))
    assert {e["attached"]["input"]["income"] for e in exported} == {"[redacted]"}
    assert exported[0]["hash"] == made[0].hash and exported[0]["prev_hash"] == made[0].prev_hash
    ok = arbiter(settings, "audit", "verify", "--file", str(out))
    assert ok.returncode == 0 and f"{len(expected)} events" in said(ok), ok.stderr

    full = arbiter(settings, "audit", "export", "--include-pii")  # stdout, everything
    assert full.returncode == 0, full.stderr
    everything = lines(full.stdout)
    assert [e["id"] for e in everything] == [e.id for e in stored]
    for e in everything:
        if e["kind"] == "prediction.made":  # the event commits to the very input it shows
            sent = json.dumps(e["attached"]["input"], sort_keys=True).encode()
            assert hashlib.sha256(sent).hexdigest() == e["payload"]["inputHash"]
            assert isinstance(e["attached"]["input"]["income"], float)

    edited = out.read_text().replace('"route":"REVIEW"', '"route":"AUTO"', 1)
    out.write_text(edited)
    caught = arbiter(settings, "audit", "verify", "--file", str(out))
    assert caught.returncode == 1 and "broken at event" in said(caught)

    bad = arbiter(settings, "audit", "export", "--since", "yesterday")
    assert bad.returncode == 2
    assert "--since 'yesterday' is not an ISO 8601 date or datetime" in said(bad)
    backwards = arbiter(settings, "audit", "export", "--since", "2026-12-01",
                        "--until", "2026-11-01")
    assert backwards.returncode == 2 and "must be before until" in said(backwards)


def test_verify_names_the_tampered_event_and_keys_are_revoked(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    make_key(settings, "predictor", "app")
    listed = arbiter(settings, "keys", "list")
    assert listed.returncode == 0 and "app" in listed.stdout and "predictor" in listed.stdout
    revoked = arbiter(settings, "keys", "revoke", "1")
    assert revoked.returncode == 0, revoked.stderr
    again = arbiter(settings, "keys", "revoke", "1")
    assert again.returncode == 2 and "already revoked" in said(again)
    last = events(settings)[-1]
    assert last.kind == "key.revoked" and last.actor.startswith("cli:")

    predict_some(settings, example_tasks["loan_default"])
    ok = arbiter(settings, "audit", "verify")
    assert ok.returncode == 0 and "audit chain ok" in said(ok), ok.stderr
    target = [e for e in events(settings) if e.kind == "prediction.made"
              and json.loads(e.payload)["route"] == "REVIEW"][-1].id
    tamper(settings.resolved_database_url, rewrite_route(target))
    broken = arbiter(settings, "audit", "verify")
    assert broken.returncode == 1
    assert f"broken at event {target}:" in said(broken) and "does not match" in said(broken)
    good = next(e for e in events(settings) if e.id == target - 1)
    assert f"last good event {target - 1}, head hash {good.hash}" in said(broken)
    tamper(settings.resolved_database_url, "DELETE FROM audit_events WHERE id = 2")
    gone = arbiter(settings, "audit", "verify")
    assert gone.returncode == 1 and "broken at event 2:" in said(gone)
    assert "missing" in said(gone)
