"""``arbiter releases``, ``promote`` and ``rollback``: a task's releases and their stages."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from app.cli.context import cli_actor, console, known_tasks, prepare, run
from app.cli.training import coverage
from app.releases import stages
from app.releases.store import Stage, list_releases, release_risk
from app.risk import report
from app.settings import Settings


def releases(task: Annotated[str, typer.Argument(help="Task name.")]) -> None:
    """List TASK's releases with stage and metrics."""
    settings = prepare()
    spec = known_tasks(settings, task)[task]

    async def work(sessions: Any) -> list[Any]:
        async with sessions() as session:
            return await list_releases(session, task)

    rows = run(settings, work)
    # Stage and gate are what people read this table for: never cut them short on a narrow
    # terminal (the other columns wrap instead).
    table = Table(
        "version",
        Column("stage", no_wrap=True, min_width=len("CANDIDATE")),
        "created",
        "by",
        "accuracy",
        "log loss",
        "roc auc",
        "coverage",
        "set size",
        Column("gate", no_wrap=True, min_width=len("NO_BASELINE")),
        "snapshot",
        title=f"releases of {task}",
    )
    for r in rows:
        m = r.metrics
        table.add_row(
            str(r.version),
            r.stage,
            r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            r.created_by,
            f"{m['accuracy']:.3f}",
            f"{m['log_loss']:.3f}",
            f"{m.get('roc_auc', float('nan')):.3f}",
            coverage(m),
            f"{m['conformal_mean_set_size']:.2f}",
            r.gate.get("decision", "-"),
            (r.snapshot_id or "-")[:12],
        )
    console.print(table if rows else f"{task} has no releases; run `arbiter train {task}`")
    # the certified AUTO thresholds, one line per release: too long for a table cell
    for r in rows if spec.review.max_auto_error is not None else []:
        console.print(f"release {r.version}: {report.brief(release_risk(spec, r))}",
                      markup=False, highlight=False)


def _change_stage(settings: Settings, task: str,
                  work: Callable[[Any], Awaitable[list[Any]]]) -> None:
    """Run one stage change of ``task`` in a transaction, announce it after commit, print
    what moved."""
    known_tasks(settings, task)

    async def transact(sessions: Any) -> list[stages.StageNotice]:
        async with sessions() as session, session.begin():
            changes = await work(session)
        return await stages.stage_notices(sessions, changes)

    for n in run(settings, transact):
        percent = f" ({n.traffic_percent:g} %)" if n.to_stage == Stage.CANARY else ""
        console.print(f"[bold]{n.task}[/] release {n.version}: {n.from_stage} → {n.to_stage}"
                      f"{percent}")


def promote(
    task: Annotated[str, typer.Argument(help="Task name.")],
    version: Annotated[int, typer.Argument(help="Release version.")],
    stage: Annotated[Stage, typer.Option(help="Target stage.", case_sensitive=False)],
    traffic: Annotated[float | None, typer.Option(help="Canary share of traffic, 0-100.")] = None,
    reason: Annotated[str, typer.Option(help="Why; kept in the stage history.")] = "",
) -> None:
    """Move release VERSION of TASK to a stage (LIVE, CANARY --traffic P, SHADOW, ...)."""
    why = reason or "promoted from the command line"
    actor = cli_actor()
    _change_stage(prepare(), task, lambda s: stages.promote(s, task, version, stage, traffic, actor,
                                                       why))


def rollback(
    task: Annotated[str, typer.Argument(help="Task name.")],
    reason: Annotated[str, typer.Option(help="Why; kept in the stage history.")] = "",
) -> None:
    """Make TASK's previous LIVE release LIVE again (the current one is retired)."""
    why = reason or "rolled back from the command line"
    actor = cli_actor()
    _change_stage(prepare(), task, lambda s: stages.rollback(s, task, actor, why))
