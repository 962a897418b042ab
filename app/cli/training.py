"""``arbiter train``: a retraining run here, with a progress bar."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import TextColumn

from app.cli.context import cli_actor, console, known_tasks, prepare, progress_bar, run
from app.db.tables import Release
from app.errors import ArbiterError
from app.events.bus import build_bus
from app.releases.store import release_risk
from app.risk import report
from app.settings import Settings

FOLLOW_SECONDS = 1.0  # how often `arbiter train` reads a job another process runs


def train_task(settings: Settings, name: str, actor: str) -> None:
    """Request a retraining and run it here with a progress bar; if a worker already runs
    the task's training, follow that one instead."""
    from app.training import jobs as retraining  # training pulls in SHAP: slow import
    from app.training.triggers import Trigger

    tasks = known_tasks(settings, name)

    with progress_bar(console, TextColumn("{task.fields[message]}")) as bar:
        shown = bar.add_task(f"training {name}", total=1.0, message="requesting")

        async def show(job: Any) -> None:
            bar.update(shown, completed=job.progress, message=job.message)

        async def work(sessions: Any) -> Any:
            job, created = await retraining.request_retrain(
                sessions, tasks[name], Trigger.CLI, actor)
            if not created:
                bar.update(shown, message=f"joined running job {job.id[:8]}")
            ctx = retraining.JobContext(sessions, tasks, settings.artifacts_dir,
                                        build_bus(settings, listen=False), watch=show,
                                        stale_seconds=settings.training_stale_seconds)
            await retraining.run_job(ctx, job.id)
            while True:  # finished here, or follow the worker that runs it
                async with sessions() as session:
                    job = await retraining.get_job(session, job.id)
                    await show(job)
                    if job.status not in retraining.ACTIVE:
                        release = None if job.release_id is None else await session.get(
                            Release, job.release_id)
                        return job, release
                await asyncio.sleep(FOLLOW_SECONDS)

        job, release = run(settings, work)
    if job.status == retraining.JobStatus.FAILED or release is None:
        raise ArbiterError(f"training {name} failed: {job.error}")
    m, g = release.metrics, release.gate
    console.print(
        f"[bold]{name}[/] release {release.version} → {release.stage}: "
        f"accuracy {m['accuracy']:.3f}, log loss {m['log_loss']:.3f}, "
        f"conformal coverage {coverage(m)} at {m['confidence_level']:.0%}, "
        f"mean set size {m['conformal_mean_set_size']:.2f}"
    )
    console.print(f"gate: {g.get('decision', 'none')}: " + escape("; ".join(g.get("reasons", []))))
    risk = release_risk(tasks[name], release)
    for line in [] if risk is None else report.describe(risk):
        console.print(line, markup=False, highlight=False)


def coverage(metrics: dict[str, Any]) -> str:
    """The test split's conformal coverage with its 95 % interval (when stored)."""
    low_high = metrics.get("conformal_coverage_interval")
    interval = f" [{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else ""
    return f"{metrics['conformal_coverage']:.3f}{interval}"


def train(task: Annotated[str, typer.Argument(help="Task name.")]) -> None:
    """Retrain TASK on its source data and every settled review label, with a progress bar;
    the evaluation gate compares it with the LIVE release (the first release goes LIVE)."""
    train_task(prepare(), task, cli_actor())
