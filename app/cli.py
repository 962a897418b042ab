"""The ``arbiter`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column, Table

from app import metrics
from app.access.keys import create_key, list_keys, revoke_key
from app.access.pii import redact
from app.access.roles import Role
from app.audit import log as audit
from app.db.engine import make_engine, make_sessionmaker
from app.db.migrate import upgrade
from app.db.tables import Release
from app.db.time_range import check_time_range
from app.errors import ArbiterError, InputValidationError
from app.events.bus import build_bus
from app.logs import configure_logging
from app.ml.task import load_tasks
from app.releases import stages
from app.releases.store import Stage, list_releases, live_release
from app.settings import Settings

T = TypeVar("T")
cli = typer.Typer(
    help="Arbiter: explained, reviewed ensemble predictions over GraphQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
keys_cli = typer.Typer(help="API keys.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")
audit_cli = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
cli.add_typer(audit_cli, name="audit")
# Wide enough for the release table when piped (rich assumes 80 columns off a terminal).
console = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True)

FOLLOW_SECONDS = 1.0  # how often `arbiter train` reads a job another process runs
# uvicorn's supervisor kills a worker that does not answer its ping within this; the default
# (5 s) killed workers still importing the ML stack on a loaded 2-core machine, over and over.
WORKER_HEALTHCHECK_SECONDS = 60
Host = Annotated[str, typer.Option(help="Interface to listen on.")]
Port = Annotated[int, typer.Option(help="TCP port.")]


def _run(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run an async job with a session factory, disposing of the engine afterwards."""

    async def main() -> T:
        engine = make_engine(settings.resolved_database_url)
        try:
            return await work(make_sessionmaker(engine))
        finally:
            await engine.dispose()

    return asyncio.run(main())


def cli_actor() -> str:
    """Who acts from the command line, for stage histories and the audit log."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name (e.g. a container without a passwd entry)
        return f"cli:uid-{os.getuid()}"


def _prepare() -> Settings:
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    return settings


@cli.command()
def migrate() -> None:
    """Apply the database migrations (Alembic) to ARBITER_DATABASE_URL."""
    settings = _prepare()
    console.print(f"database at head: {settings.resolved_database_url}")


def _train(settings: Settings, name: str, actor: str) -> None:
    """Request a retraining and run it here with a progress bar; if a worker already runs
    the task's training, follow that one instead."""
    from app.training import jobs as retraining  # training pulls in SHAP: slow import

    tasks = load_tasks(settings.tasks_dir)
    if name not in tasks:
        raise ArbiterError(f"unknown task {name!r}; known: {', '.join(sorted(tasks))}")

    with Progress(
        SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
        TaskProgressColumn(), TimeElapsedColumn(), TextColumn("{task.fields[message]}"),
        console=console, transient=False,
    ) as bar:
        shown = bar.add_task(f"training {name}", total=1.0, message="requesting")

        async def show(job: Any) -> None:
            bar.update(shown, completed=job.progress, message=job.message)

        async def work(sessions: Any) -> Any:
            job, created = await retraining.request_retrain(
                sessions, tasks[name], retraining.Trigger.CLI, actor)
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

        job, release = _run(settings, work)
    if job.status == retraining.JobStatus.FAILED or release is None:
        raise ArbiterError(f"training {name} failed: {job.error}")
    m, g = release.metrics, release.gate
    console.print(
        f"[bold]{name}[/] release {release.version} → {release.stage}: "
        f"accuracy {m['accuracy']:.3f}, log loss {m['log_loss']:.3f}, "
        f"conformal coverage {m['conformal_coverage']:.3f} at {m['confidence_level']:.0%}, "
        f"mean set size {m['conformal_mean_set_size']:.2f}"
    )
    console.print(f"gate: {g.get('decision', 'none')}: " + "; ".join(g.get("reasons", [])))


@cli.command()
def train(task: Annotated[str, typer.Argument(help="Task name.")]) -> None:
    """Retrain TASK on its source data and every settled review label, with a progress bar;
    the evaluation gate compares it with the LIVE release (the first release goes LIVE)."""
    _train(_prepare(), task, cli_actor())


def _count_rows(source: Path) -> int:
    """Rows of a CSV (lines after the header) or JSON Lines file (non-blank lines), for the
    progress bar: a quick pass over the bytes, no parsing."""
    with source.open("rb") as raw:
        lines = sum(1 for line in raw if line.strip())
    return max(lines - 1, 0) if source.suffix.lower() == ".csv" else lines


@cli.command("predict-file")
def predict_file(
    task: Annotated[str, typer.Argument(help="Task name.")],
    source: Annotated[Path, typer.Argument(
        help="Inputs: .csv (header row of feature names) or .jsonl (one object per line).")],
    output: Annotated[Path | None, typer.Option(
        help="Answers, JSON Lines (default: SOURCE with .predictions.jsonl).")] = None,
    chunk_rows: Annotated[int, typer.Option(help="Rows per transaction.")] = 5_000,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue after the rows OUTPUT already lists.")] = False,
) -> None:
    """Explain, route and store every row of SOURCE as predictBatch does, CHUNK_ROWS per
    transaction, and write one answer per row (row, id, label, confidence, route, status)."""
    from app.main import build_services
    from app.predictions import files as batch_files  # the whole prediction path: slow import

    settings = _prepare()
    if not source.is_file():
        raise ArbiterError(f"no such file: {source}")
    output = output or source.with_suffix(".predictions.jsonl")
    if output.exists() and output.stat().st_size and not resume:
        raise ArbiterError(f"{output} already lists answers; pass --resume to go on after "
                           f"them, or choose another --output")
    skip = batch_files.listed_rows(output)
    run = batch_files.run_key(source, output)

    async def work(bar: Progress, shown: Any, out: Any) -> batch_files.FileResult:
        services, engine = build_services(settings)
        try:
            spec = services.registry.task(task)
            await services.registry.load_all()
            return await batch_files.predict_file(
                services, task, batch_files.read_rows(spec, source), out, actor=cli_actor(),
                chunk_rows=chunk_rows, run=run, skip=skip,
                progress=lambda n: bar.advance(shown, n))
        finally:
            await services.shadows.drain()
            services.close()
            await engine.dispose()

    try:
        with Progress(
            SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
            TaskProgressColumn(), TimeElapsedColumn(), console=err, transient=False,
        ) as bar, output.open("a", encoding="utf-8") as out:
            shown = bar.add_task(f"predicting {task}", total=_count_rows(source),
                                 completed=skip)
            result = asyncio.run(work(bar, shown, out))
    except InputValidationError as exc:
        problems = "; ".join(f"row {p.index}: {p.message}" for p in exc.problems[:10])
        raise ArbiterError(
            f"{exc}: {problems}. The {batch_files.listed_rows(output)} rows before that chunk "
            f"are stored and listed in {output}; fix the file and run again with --resume"
        ) from None
    console.print(f"{result.predicted} predictions stored ({result.routed} routed to review), "
                  f"{skip + result.predicted} answers in {output}")


@cli.command()
def releases(task: Annotated[str, typer.Argument(help="Task name.")]) -> None:
    """List TASK's releases with stage and metrics."""
    settings = _prepare()

    async def work(sessions: Any) -> list[Any]:
        async with sessions() as session:
            return await list_releases(session, task)

    rows = _run(settings, work)
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
            f"{m['conformal_coverage']:.3f}",
            f"{m['conformal_mean_set_size']:.2f}",
            r.gate.get("decision", "-"),
            (r.snapshot_id or "-")[:12],
        )
    console.print(table if rows else f"{task} has no releases; run `arbiter train {task}`")


def _change_stage(settings: Settings, work: Callable[[Any], Awaitable[list[Any]]]) -> None:
    """Run one stage change in a transaction, announce it after commit, print what moved."""

    async def transact(sessions: Any) -> list[stages.StageNotice]:
        async with sessions() as session, session.begin():
            changes = await work(session)
        return await stages.announce(sessions, changes)

    for n in _run(settings, transact):
        percent = f" ({n.traffic_percent:g} %)" if n.to_stage == Stage.CANARY else ""
        console.print(f"[bold]{n.task}[/] release {n.version}: {n.from_stage} → {n.to_stage}"
                      f"{percent}")


@cli.command()
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
    _change_stage(_prepare(), lambda s: stages.promote(s, task, version, stage, traffic, actor,
                                                       why))


@cli.command()
def rollback(
    task: Annotated[str, typer.Argument(help="Task name.")],
    reason: Annotated[str, typer.Option(help="Why; kept in the stage history.")] = "",
) -> None:
    """Make TASK's previous LIVE release LIVE again (the current one is retired)."""
    why = reason or "rolled back from the command line"
    actor = cli_actor()
    _change_stage(_prepare(), lambda s: stages.rollback(s, task, actor, why))


@keys_cli.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help="predictor, reviewer, auditor or admin")],
    name: Annotated[str, typer.Option(help="Who or what holds the key.")],
) -> None:
    """Create an API key; the key is printed once, alone on the last line."""
    settings = _prepare()

    async def work(sessions: Any) -> tuple[Any, str]:
        async with sessions() as session, session.begin():
            return await create_key(session, role, name, cli_actor())

    row, plaintext = _run(settings, work)
    err.print(f"created {row.role} key {row.id} for {row.name!r}; it is shown only once:")
    print(plaintext)


@keys_cli.command("list")
def keys_list() -> None:
    """List every key (never the secret): id, name, role, prefix, created, revoked."""
    settings = _prepare()

    async def work(sessions: Any) -> list[Any]:
        async with sessions() as session:
            return await list_keys(session)

    table = Table("id", "name", "role", "prefix", "created", "revoked", title="API keys")
    for k in _run(settings, work):
        table.add_row(str(k.id), k.name, k.role, k.prefix,
                      k.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                      k.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if k.revoked_at else "-")
    console.print(table)


@keys_cli.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(help="The key's id (keys list).")]) -> None:
    """Revoke a key; servers refuse it within ARBITER_KEY_CACHE_SECONDS."""
    settings = _prepare()

    async def work(sessions: Any) -> Any:
        async with sessions() as session, session.begin():
            return await revoke_key(session, key_id, cli_actor())

    row = _run(settings, work)
    console.print(f"revoked {row.role} key {row.id} ({row.name!r}, {row.prefix}…)")


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
        check = _run(_prepare(), audit.verify_chain)
    if not check.ok:
        err.print(f"[red]audit chain broken at event {check.first_broken_event_id}:[/] "
                  f"{check.reason} ({check.checked} events verified before it)")
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
    settings = _prepare()
    tasks = load_tasks(settings.tasks_dir)
    if output is None:
        _run(settings, lambda s: _export(s, tasks, start, end, include_pii, sys.stdout))
        return
    partial = output.with_name(output.name + ".partial")  # never a half-written export
    try:
        with partial.open("w", encoding="utf-8") as out:
            n = _run(settings, lambda s: _export(s, tasks, start, end, include_pii, out))
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    err.print(f"wrote {n} events to {output}")


@contextlib.contextmanager
def _shared_metrics(processes: int) -> Iterator[None]:
    """Several server processes share their metrics through one directory: the one in
    PROMETHEUS_MULTIPROC_DIR if set (the operator's, kept), else a fresh one for this run,
    removed at exit. Set before uvicorn spawns the workers, which read it at import."""
    given = metrics.multiprocess_dir()
    if given is not None:
        os.makedirs(given, exist_ok=True)
        yield
        return
    if processes == 1:
        yield  # one process: its own registry is the whole view
        return
    path = tempfile.mkdtemp(prefix="arbiter-metrics-")
    os.environ[metrics.MULTIPROC_ENV] = path
    try:
        yield
    finally:
        os.environ.pop(metrics.MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def _serve(settings: Settings, host: str, port: int, workers: int = 1) -> None:
    with _shared_metrics(workers):
        # log_config=None: uvicorn keeps its hands off logging; each process's create_app
        # configures it (JSON or text, with the request context).
        uvicorn.run("app.main:create_app", factory=True, host=host, port=port,
                    workers=workers, log_config=None, log_level=settings.log_level.lower(),
                    timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS)


@cli.command()
def serve(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    workers: Annotated[int, typer.Option(help="Server processes.")] = 1,
) -> None:
    """Serve the GraphQL API (migrates first; does not train)."""
    _serve(_prepare(), host, port, workers)


@cli.command()
def worker(
    metrics_port: Annotated[int | None, typer.Option(
        help="Serve this process's Prometheus metrics on this port (GET /metrics).")] = None,
    metrics_host: Annotated[str, typer.Option(help="Interface of --metrics-port.")] = "127.0.0.1",
) -> None:
    """Run Dramatiq workers and an outbox relay against ARBITER_REDIS_URL."""
    settings = _prepare()
    if not settings.redis_url:
        raise ArbiterError("`arbiter worker` needs ARBITER_REDIS_URL; without Redis, "
                           "`arbiter serve` runs the worker inside the server")
    if metrics_port is not None:
        metrics.serve_metrics(metrics_port, metrics_host)
    try:
        asyncio.run(_work(settings))
    finally:
        metrics.process_exited()


async def _work(settings: Settings) -> None:
    from workers.runtime import JobRuntime  # the composition root of a worker process

    engine = make_engine(settings.resolved_database_url)
    jobs = JobRuntime(settings, make_sessionmaker(engine), consume=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await jobs.start()
    console.print(f"worker consuming {settings.redis_url} (namespace {settings.redis_namespace})")
    try:
        await stop.wait()
    finally:
        await jobs.stop()
        await engine.dispose()


@cli.command()
def demo(host: Host = "127.0.0.1", port: Port = 8000) -> None:
    """Migrate, train the tasks that have no release, create keys, and serve."""
    settings = _prepare()
    for name in load_tasks(settings.tasks_dir):

        async def has_live(sessions: Any, name: str = name) -> bool:
            async with sessions() as session:
                return await live_release(session, name) is not None

        if not _run(settings, has_live):
            _train(settings, name, "cli:demo")

    async def make_keys(sessions: Any) -> dict[str, str]:
        async with sessions() as session, session.begin():
            return {
                r.value: (await create_key(session, r.value, f"demo-{r.value}", "cli:demo"))[1]
                for r in Role
            }

    keys = _run(settings, make_keys)
    url = f"http://{host}:{port}/graphql"
    table = Table("role", "API key", title="demo keys (shown once)")
    for role, key in keys.items():
        table.add_row(role, key)
    console.print(table)
    example = {
        "query": 'mutation { predict(task: "loan_default", input: {income: 52000, '
        'loan_amount: 12000, term_months: 36, employment: "salaried", home_ownership: '
        '"rent", purpose: "car", has_cosigner: false, total_spend: 3400, orders: 41}) '
        "{ id label confidence predictionSet route reasons { code detail } "
        "explanation { space explainedClass baseValue outputValue "
        "contributions { feature value shap } } } }"
    }
    console.print(f"\nGraphiQL: {url}  (set the header Authorization: Bearer <key>)")
    site = f"http://{host}:{port}"
    console.print(f"Review page: {site}/review   (reviewer key)")
    console.print(f"Audit page:  {site}/audit    (auditor key)")
    console.print(f"Ops page:    {site}/ops      (admin key)\n")
    console.print("Try it:", style="bold")
    print(
        f"curl -s {url} -H 'Authorization: Bearer {keys['predictor']}' "
        f"-H 'Content-Type: application/json' -d '{json.dumps(example)}'\n"
    )
    _serve(settings, host, port)


def main() -> None:
    try:
        settings = Settings()
        configure_logging(settings.log_format, settings.log_level)
        cli()
    except ValidationError as exc:
        err.print(f"[red]error:[/] invalid settings (ARBITER_* variables): {exc}")
        raise SystemExit(2) from None
    except ArbiterError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise SystemExit(2) from None
