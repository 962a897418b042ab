"""``arbiter members import``: a member trained elsewhere, brought in from a skops file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from app.cli.context import cli_actor, console, known_tasks, prepare, run
from app.events.bus import build_bus

members_cli = typer.Typer(help="Members of a task's releases.", no_args_is_help=True)


@members_cli.command("import")
def members_import(
    task: Annotated[str, typer.Argument(help="Task name.")],
    name: Annotated[str, typer.Argument(help="Member to replace, or to add when new.")],
    file: Annotated[Path, typer.Argument(help="skops file of a fitted estimator or Pipeline.")],
    weight: Annotated[float | None, typer.Option(
        help="Its weight in the ensemble (default: the replaced member's, or 1).")] = None,
) -> None:
    """Make a release whose members are the LIVE release's with NAME replaced by (or added
    as) the estimator in FILE: checked against the feature contract, explained exactly,
    calibrated, then judged by the evaluation gate like a retrained release."""
    from app.training.imports import import_member  # SHAP is slow to import

    settings = prepare()
    spec = known_tasks(settings, task)[task]

    async def work(sessions: Any) -> Any:
        return await import_member(sessions, settings.artifacts_dir, spec, name, file, weight,
                                   cli_actor(), build_bus(settings, listen=False))

    release, decision = run(settings, work)
    m = release.metrics
    console.print(
        f"[bold]{task}[/] release {release.version} → {release.stage}: member {name} "
        f"imported from {file}; accuracy {m['accuracy']:.3f}, log loss {m['log_loss']:.3f}, "
        f"conformal coverage {m['conformal_coverage']:.3f} at {m['confidence_level']:.0%}")
    console.print(f"gate: {decision.decision}: " + escape("; ".join(decision.reasons)))
