"""``arbiter audit``: verify the hash chain, export events as JSON Lines."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from app.access.pii import redact
from app.audit import log as audit
from app.cli.context import console, err, prepare, run
from app.db.time_range import check_time_range
from app.errors import ArbiterError
from app.ml.task import load_tasks

audit_cli = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)


@audit_cli.command("verify")
def audit_verify(
    file: Annotated[Path | None, typer.Option(
        "--file", help="Verify an export (JSON Lines) instead of the database.")] = None,
) -> None:
    """Recompute the audit chain; exit 1 naming the first broken event when it is broken."""
    if file is not None:
        try:
            lines = [line for line in file.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise ArbiterError(f"cannot read {file}: {exc.strerror}") from None
        check = audit.verify_lines(lines)
    else:
        check = run(prepare(), audit.verify_chain)
    if not check.ok:
        good = (f"; last good event {check.first_broken_event_id - 1}, head hash "
                f"{check.head_hash}" if check.head_hash and check.first_broken_event_id else "")
        err.print(f"[red]audit chain broken at event {check.first_broken_event_id}:[/] "
                  f"{check.reason} ({check.checked} events verified before it{good})")
        raise SystemExit(1)
    console.print(f"audit chain ok: {check.checked} events, head hash {check.head_hash}")


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
    hashed: the event commits to it by ``inputHash``), redacted unless ``include_pii``."""
    from app.db.tables import Prediction

    count = 0
    async for e in audit.iter_events(sessions, since, until):
        extra = None
        if e.kind == audit.Kind.PREDICTION_MADE:
            async with sessions() as session:
                p = await session.get(Prediction, e.subject_id)
            if p is not None:
                extra = {"input": p.input if include_pii else redact(tasks.get(p.task), p.input)}
        out.write(audit.export_line(e, extra) + "\n")
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
