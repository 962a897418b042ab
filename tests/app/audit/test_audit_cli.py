"""`arbiter audit` and `arbiter keys` as a user runs them: real processes on real databases."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import col, select

from app.db.tables import AuditEvent, Prediction
from app.main import build_services
from app.ml.task import TaskSpec
from app.predictions.path import predict_batch
from app.settings import Settings
from tests.support.inputs import example_inputs
from tests.support.processes import ARBITER
from tests.support.server import make_key
from tests.support.tampering import rebuild_tree, rewrite_route, tamper

ROOT = Path(__file__).resolve().parents[3]


def arbiter(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ARBITER_DATA_DIR": str(settings.data_dir),
           "ARBITER_DATABASE_URL": settings.resolved_database_url}
    return subprocess.run([ARBITER, *args], env=env, capture_output=True, text=True, timeout=600)


NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])")


def numbers_in(payload: Any) -> set[float]:
    """Every number a payload says: its numeric values and the numbers written in its text
    (a digit run inside a hex digest is not a number)."""
    if isinstance(payload, dict):
        return set().union(*map(numbers_in, payload.values())) if payload else set()
    if isinstance(payload, list):
        return set().union(*map(numbers_in, payload)) if payload else set()
    if isinstance(payload, bool) or payload is None:
        return set()
    if isinstance(payload, (int, float)):
        return {float(payload)}
    return {float(n) for n in NUMBER.findall(str(payload))}


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
    assert exported[0]["hash"] == made[0].hash and exported[0]["prev_hash"] is None
    ok = arbiter(settings, "audit", "verify", "--file", str(out))
    assert ok.returncode == 0 and f"{len(expected)} events" in said(ok), ok.stderr

    full = arbiter(settings, "audit", "export", "--include-pii")  # stdout, everything
    assert full.returncode == 0, full.stderr
    everything = lines(full.stdout)
    assert [e["id"] for e in everything] == [e.id for e in stored]
    for e in everything:
        if e["kind"] == "prediction.made":  # the event commits to the very input it shows
            sent = json.dumps(e["attached"]["input"], sort_keys=True, separators=(",", ":"),
                              ensure_ascii=False).encode()
            salted = bytes.fromhex(e["attached"]["inputSalt"]) + sent
            assert hashlib.sha256(salted).hexdigest() == e["payload"]["inputCommitment"]
            assert isinstance(e["attached"]["input"]["income"], float)

    edited = out.read_text().replace('"route":"REVIEW"', '"route":"AUTO"', 1)
    out.write_text(edited)
    caught = arbiter(settings, "audit", "verify", "--file", str(out))
    assert caught.returncode == 1 and "export broken at event" in said(caught)

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
    assert ok.returncode == 0 and "audit log ok" in said(ok), ok.stderr
    assert "0 events waiting for a leaf" in said(ok)
    target = [e for e in events(settings) if e.kind == "prediction.made"
              and json.loads(e.payload)["route"] == "REVIEW"][-1].id
    tamper(settings.resolved_database_url, rewrite_route(target))
    broken = arbiter(settings, "audit", "verify")
    assert broken.returncode == 1
    assert f"event {target} (leaf" in said(broken) and "does not match" in said(broken)
    tamper(settings.resolved_database_url, "DELETE FROM audit_events WHERE id = 2")
    gone = arbiter(settings, "audit", "verify")
    assert gone.returncode == 1 and "event 2 (leaf 1) is missing" in said(gone)


def standalone_script() -> str:
    """The proof checker docs/audit.md gives third parties (the block after "check_proof")."""
    text = (ROOT / "docs" / "audit.md").read_text()
    start = text.index('```python\n"""Check an Arbiter audit proof')
    return text[start + len("```python\n"):text.index("```", start + 10)]


def test_a_proof_checks_with_the_public_key_alone_and_witnesses_catch_a_rewrite(
        settings: Settings, tmp_path: Path, example_tasks: dict[str, TaskSpec]) -> None:
    predict_some(settings, example_tasks["loan_default"])
    target = [e for e in events(settings) if e.kind == "prediction.made"][7]
    proved = arbiter(settings, "audit", "prove", target.subject_id)
    assert proved.returncode == 0, proved.stderr
    proof = json.loads(proved.stdout)
    assert json.loads(proof["entry"])["id"] == target.id
    assert proof["leafHash"] == target.hash and proof["treeSize"] > proof["leafIndex"]
    key = arbiter(settings, "audit", "public-key").stdout.strip()
    assert len(bytes.fromhex(key)) == 32
    file = tmp_path / "proof.json"
    file.write_text(proved.stdout)

    script = tmp_path / "check_proof.py"
    script.write_text(standalone_script())
    # -I: isolated, no project code on the path; only hashlib and cryptography
    alone = subprocess.run([sys.executable, "-I", str(script), str(file), key],
                           capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert alone.returncode == 0 and "proof ok: prediction.made" in alone.stdout, alone.stderr
    assert arbiter(settings, "audit", "verify-proof", str(file)).returncode == 0

    forged = {**proof, "entry": proof["entry"].replace('"actor":"', '"actor":"x', 1)}
    forged_file = tmp_path / "forged.json"
    forged_file.write_text(json.dumps(forged))
    refused = subprocess.run([sys.executable, "-I", str(script), str(forged_file), key],
                             capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert refused.returncode != 0 and "leafHash" in refused.stderr
    bad = arbiter(settings, "audit", "verify-proof", str(forged_file))
    assert bad.returncode == 1 and "does not hash to leafHash" in said(bad)
    other_key = Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()
    wrong = subprocess.run([sys.executable, "-I", str(script), str(file), other_key],
                           capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert wrong.returncode != 0 and "InvalidSignature" in wrong.stderr

    kept = tmp_path / "witness.jsonl"
    exported = arbiter(settings, "audit", "checkpoints", "--output", str(kept))
    assert exported.returncode == 0 and lines(kept.read_text()), exported.stderr
    fine = arbiter(settings, "audit", "verify", "--checkpoints", str(kept))
    assert fine.returncode == 0, fine.stderr
    # The intruder cuts the log back and removes the checkpoints the database kept ...
    newest = events(settings)[-5].id
    tamper(settings.resolved_database_url, f"DELETE FROM audit_events WHERE id > {newest}")
    rebuild_tree(settings.resolved_database_url)
    tamper(settings.resolved_database_url, "DELETE FROM audit_checkpoints")
    # ... the witness's copy still names the truncation
    caught = arbiter(settings, "audit", "verify", "--checkpoints", str(kept))
    assert caught.returncode == 1 and "(truncated)" in said(caught), said(caught)


def test_erase_removes_an_input_and_the_log_still_verifies(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    predict_some(settings, example_tasks["loan_default"])
    made = [e for e in events(settings) if e.kind == "prediction.made"]
    stored = stored_predictions(settings)
    for e in made:  # no raw value of a personal feature in any payload (reasons: codes)
        income = stored[e.subject_id].input["income"]
        assert income not in numbers_in(json.loads(e.payload)), (income, e.payload)
    target = made[3].subject_id
    done = arbiter(settings, "erase", target)
    assert done.returncode == 0 and "erased the input" in said(done), done.stderr
    erased = stored_predictions(settings)[target]
    assert (erased.input, erased.input_salt, erased.input_hash) == ({}, None, "")
    assert {c["value"] for c in erased.explanation["contributions"]} == {None}
    assert erased.input_commitment == stored[target].input_commitment
    last = events(settings)[-1]
    assert (last.kind, last.subject_id) == ("prediction.input_erased", target)
    assert last.actor.startswith("cli:")
    ok = arbiter(settings, "audit", "verify")
    assert ok.returncode == 0 and "audit log ok" in said(ok), said(ok)
    again = arbiter(settings, "erase", target)
    assert again.returncode == 2 and "already erased" in said(again)


def stored_predictions(settings: Settings) -> dict[str, Prediction]:
    async def work() -> dict[str, Prediction]:
        services, engine = build_services(settings)
        try:
            async with services.sessions() as session:
                return {p.id: p for p in (await session.exec(select(Prediction))).all()}
        finally:
            await engine.dispose()
    return asyncio.run(work())
