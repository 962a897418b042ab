"""``arbiter outcomes import``: ground truth that arrived after the predictions, from a file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli.context import cli_actor, console, known_tasks, prepare, run
from app.errors import ArbiterError

outcomes_cli = typer.Typer(help="Outcomes: the truth about predictions, known later.",
                           no_args_is_help=True)
MAX_FILE_OUTCOMES = 1_000_000  # one transaction holds the whole file


@outcomes_cli.command("import")
def outcomes_import(
    task: Annotated[str, typer.Argument(help="Task name.")],
    source: Annotated[Path, typer.Argument(
        help="Outcomes: .csv (header row) or .jsonl, with predictionId or entityKey, label, "
        "and optionally observedAt (ISO 8601).")],
) -> None:
    """Record every outcome of SOURCE in one transaction: a bad line refuses the whole
    file (each bad line named) and stores nothing; importing a file again changes nothing."""
    from app.quality.outcome_files import read_outcomes
    from app.quality.outcomes import record_outcomes

    settings = prepare()
    spec = known_tasks(settings, task)[task]
    if not source.is_file():
        raise ArbiterError(f"no such file: {source}")
    items, unread = read_outcomes(source)

    async def work(sessions: Any) -> Any:
        return await record_outcomes(sessions, spec, items, cli_actor(), MAX_FILE_OUTCOMES,
                                     unread)

    done = run(settings, work)
    console.print(f"{done.recorded} outcomes recorded, {done.unchanged} already recorded "
                  f"(unchanged), for {task}")
