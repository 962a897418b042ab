"""``arbiter audit``: verify the Merkle log against its signed checkpoints and the state,
export events and checkpoints, prove a prediction's event, check a proof."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.markup import escape

from app.access.pii import redact
from app.audit import events as audit_events
from app.audit import log as audit
from app.audit import tree
from app.audit.checkpoints import (
    SigningKey,
    as_json,
    load_signing_key,
    public_key_of,
    raw_public,
    read_witness_file,
)
from app.audit.erasure import erase_input
from app.audit.proofs import prediction_proof, proof_problem
from app.audit.sequencer import CheckpointPolicy, Sequencer
from app.audit.verify import Verification, verify_log
from app.cli.context import cli_actor, console, err, prepare, run
from app.db.roles import app_role_sql
from app.db.time_range import check_time_range
from app.errors import ArbiterError, NotFoundError
from app.ml.task import load_tasks
from app.settings import Settings

audit_cli = typer.Typer(help="The audit log (a Merkle tree with signed checkpoints).",
                        no_args_is_help=True)
PublicKeyOption = Annotated[str | None, typer.Option(
    "--public-key", help="The log's public key (hex, from `arbiter audit public-key`); "
    "default: the one of ARBITER_AUDIT_SIGNING_KEY.")]


def signing_key(settings: Settings) -> SigningKey:
    return load_signing_key(settings.audit_signing_key, settings.data_dir, settings.production)


def sequencer(settings: Settings, sessions: Any) -> Sequencer:
    return Sequencer(sessions, signing_key(settings),
                     CheckpointPolicy(settings.audit_checkpoint_seconds,
                                      settings.audit_checkpoint_events))


def _public(settings: Settings, given: str | None) -> Ed25519PublicKey:
    return public_key_of(given) if given is not None else signing_key(settings).public


def _read_lines(file: Path) -> list[str]:
    try:
        return [line for line in file.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise ArbiterError(f"cannot read {file}: {exc.strerror}") from None


@audit_cli.command("verify")
def audit_verify(
    file: Annotated[Path | None, typer.Option(
        "--file", help="Verify an export (JSON Lines) instead of the database.")] = None,
    checkpoints: Annotated[Path | None, typer.Option(
        "--checkpoints", help="Checkpoints a witness kept (`arbiter audit checkpoints`): "
        "the log must still extend each of them.")] = None,
    public_key: PublicKeyOption = None,
) -> None:
    """Recompute the log: every event against its leaf, the tree against every signed
    checkpoint, the state tables against the events' commitments. Exit 1 naming each
    event, checkpoint or row that does not hold."""
    if file is not None:
        check = audit_events.verify_lines(_read_lines(file))
        if not check.ok:
            err.print(f"[red]export broken at event {check.broken_event_id}:[/] "
                      f"{escape(str(check.reason))}")
            raise SystemExit(1)
        console.print(f"export ok: {check.checked} events match their hashes")
        return
    settings = prepare()
    witness = read_witness_file(checkpoints) if checkpoints is not None else []
    key = _public(settings, public_key)

    async def work(sessions: Any) -> Verification:
        await sequencer(settings, sessions).drain()
        return await verify_log(sessions, key, witness)

    report(run(settings, work))


def report(v: Verification) -> None:
    if not v.ok:
        err.print(f"[red]audit log broken:[/] {v.problem_count} problem(s)")
        for problem in v.problems:
            err.print(f"  - {escape(problem)}")
        raise SystemExit(1)
    console.print(f"audit log ok: {v.leaves} events in the tree, root {v.root_hash}; "
                  f"{v.checkpoints} signed checkpoints consistent with it; {v.rows} rows "
                  f"match their commitments ({v.legacy_rows} older than the commitments, pinned); "
                  f"{v.pending} events waiting for a leaf")


@audit_cli.command("checkpoints")
def audit_checkpoints(
    output: Annotated[Path | None, typer.Option(help="File to write (default: stdout).")] = None,
) -> None:
    """Export the signed checkpoints as JSON Lines, for witnesses to keep (and give back
    to `arbiter audit verify --checkpoints`)."""
    settings = prepare()

    async def work(sessions: Any) -> list[str]:
        await sequencer(settings, sessions).drain(force_checkpoint=True)
        async with sessions() as session:
            conn = await session.connection()
            kept = await conn.run_sync(tree.checkpoints)
        return [audit.canonical(as_json(c)) for c in kept]

    lines = run(settings, work)
    text = "".join(line + "\n" for line in lines)
    if output is None:
        sys.stdout.write(text)
        return
    output.write_text(text)
    err.print(f"wrote {len(lines)} checkpoints to {output}")


@audit_cli.command("prove")
def audit_prove(prediction_id: str) -> None:
    """Print (JSON) the proof that a prediction's event is in the tree a signed checkpoint
    covers: check it with `arbiter audit verify-proof` or the script in docs/audit.md."""
    settings = prepare()

    async def work(sessions: Any) -> dict[str, Any]:
        await sequencer(settings, sessions).drain(force_checkpoint=True)
        async with sessions() as session:
            proof = await prediction_proof(session, prediction_id)
        if proof is None:
            raise NotFoundError(f"prediction {prediction_id!r} has no proof yet")
        return proof.as_json()

    sys.stdout.write(json.dumps(run(settings, work), indent=2) + "\n")


@audit_cli.command("verify-proof")
def audit_verify_proof(file: Path, public_key: PublicKeyOption = None) -> None:
    """Check a proof from `arbiter audit prove`: entry -> leaf hash -> audit path -> the
    root a checkpoint signed with the log's key. Exit 1 saying why it fails."""
    try:
        proof = json.loads(file.read_text())
    except OSError as exc:
        raise ArbiterError(f"cannot read {file}: {exc.strerror}") from None
    except ValueError as exc:
        raise ArbiterError(f"{file} is not JSON: {exc}") from None
    problem = proof_problem(proof, _public(Settings(), public_key)) if isinstance(
        proof, dict) else "not a JSON object"
    if problem is not None:
        err.print(f"[red]proof does not hold:[/] {escape(problem)}")
        raise SystemExit(1)
    console.print(f"proof ok: leaf {proof['leafIndex']} is in the tree of "
                  f"{proof['treeSize']} leaves signed at {proof['checkpoint']['at']}")


@audit_cli.command("public-key")
def audit_public_key() -> None:
    """Print the log's Ed25519 public key (hex): give it to auditors and witnesses."""
    key = signing_key(Settings()).public
    console.print(raw_public(key).hex())


def erase(prediction_id: str) -> None:
    """Erase a prediction's stored input (a person's data), audited; the log still
    verifies: it commits to the input only by a salted hash."""
    settings = prepare()
    p = run(settings, lambda s: erase_input(s, prediction_id, cli_actor()))
    console.print(f"erased the input of prediction {p.id}; its commitment "
                  f"{p.input_commitment} stays in the log")


def app_role(role: str) -> None:
    """Print the SQL (for the database's owner, after each migration) making ROLE the
    PostgreSQL role the application runs as: no ownership, the audit log append-only."""
    try:
        statements = app_role_sql(role)
    except ValueError as exc:
        raise ArbiterError(str(exc)) from None
    sys.stdout.write("".join(s + ";\n" for s in statements))


def parse_time(value: str | None, option: str) -> datetime | None:
    """An ISO 8601 date or datetime; one without a time zone is taken as UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ArbiterError(f"{option} {value!r} is not an ISO 8601 date or datetime, e.g. "
                           "2026-11-30 or 2026-11-30T14:00:00+00:00") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


async def _export(sessions: Any, tasks: dict[str, Any], since: datetime | None,
                  until: datetime | None, include_pii: bool, out: Any) -> int:
    """Write the events as JSON Lines; a prediction's event gets its input attached (not
    hashed: the event commits to it by ``inputCommitment``), redacted unless
    ``include_pii``."""
    from app.db.tables import Prediction

    count = 0
    async for e in audit_events.iter_events(sessions, since, until):
        extra = None
        if e.kind == audit.Kind.PREDICTION_MADE:
            async with sessions() as session:
                p = await session.get(Prediction, e.subject_id)
            if p is not None:
                extra = {"input": p.input if include_pii else redact(tasks.get(p.task), p.input)}
                if include_pii:
                    extra["inputSalt"] = p.input_salt
        out.write(audit_events.export_line(e, extra) + "\n")
        count += 1
    return count


@audit_cli.command("export")
def audit_export(
    since: Annotated[str | None, typer.Option(help="From this time (inclusive), ISO 8601; "
                                              "no zone = UTC.")] = None,
    until: Annotated[str | None, typer.Option(help="Up to this time (exclusive).")] = None,
    output: Annotated[Path | None, typer.Option(help="File to write (default: stdout).")] = None,
    include_pii: Annotated[bool, typer.Option(
        "--include-pii", help="Attach inputs with their personal (pii) features as sent.")] = False,
) -> None:
    """Export audit events in [since, until) as JSON Lines, hashes included (re-verify an
    export with `arbiter audit verify --file`)."""
    start, end = parse_time(since, "--since"), parse_time(until, "--until")
    check_time_range(start, end)
    settings = prepare()
    tasks = load_tasks(settings.tasks_dir)
    if output is None:
        run(settings, lambda s: _export(s, tasks, start, end, include_pii, sys.stdout))
        return
    partial = output.with_name(output.name + ".partial")  # never a half-written export
    try:
        with partial.open("w", encoding="utf-8") as out:
            n = run(settings, lambda s: _export(s, tasks, start, end, include_pii, out))
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    err.print(f"wrote {n} events to {output}")
