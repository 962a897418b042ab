"""Issue 9 in one run: Arbiter vs naive baseline vs compute floor, printed as one table.

Measures, on this machine and in one run: online predictions/s and p99 at ``--concurrency``
(default 32) through ``POST /graphql`` on SQLite and (with ``--database-url``) PostgreSQL
against the bare-Starlette baseline serving the LIVE release's heaviest member;
``predictBatch`` of ``--batch-rows`` rows against the in-process floor (members'
``predict_proba`` + SHAP in one NumPy batch); server RSS with both example tasks loaded
against a bare import of the server's dependencies, and before/after ``--rss-predictions``
predictions; start time of ``arbiter serve`` to ``/readyz`` 200 against the bare import time.

Run from the repository root:  uv run python bench/perf_report.py --database-url postgresql
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clients import (  # bench/ is sys.path[0] when run as a script
    STAGES,
    LevelResult,
    Row,
    Target,
    arbiter_target,
    baseline_target,
    batch_seconds,
    client_caption,
    measure,
    stage_means,
)
from floor import Member, compute_floor, live_members, time_single_rows
from footprint import bare_import, tree_rss_mib
from inputs import input_rows
from postgres import admin_dsn, postgres_database
from rich.table import Table
from servers import (
    BENCH_DIR,
    HOST,
    Server,
    arbiter_env,
    arbiter_exe,
    free_port,
    log,
    prepare,
    start_baseline,
    start_server,
    status_ok,
    stop_on_signals,
    stop_server,
    wait_ready,
)
from tables import machine_line, omp_setting, print_wide

from app.ml.contract import to_matrix
from app.ml.task import TaskSpec, load_tasks
from app.settings import EXAMPLE_TASKS_DIR


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="loan_default", help="task to predict")
    parser.add_argument("--concurrency", type=int, default=32, help="online clients")
    parser.add_argument("--requests", type=int, default=1000,
                        help="measured online requests per server")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured requests first")
    parser.add_argument("--rounds", type=int, default=3,
                        help="online rounds per server, Arbiter and baseline alternating")
    parser.add_argument("--batch-rows", type=int, default=10_000, help="predictBatch rows")
    parser.add_argument("--rss-predictions", type=int, default=2_000,
                        help="predictions between the two RSS readings (issue: 100,000)")
    parser.add_argument("--database-url", default=None,
                        help="'postgresql' (or an admin DSN postgresql://user@host:port/db) "
                             "to also run on a fresh PostgreSQL database, dropped after")
    parser.add_argument("--omp-threads", default=None, help="OMP_NUM_THREADS for all servers")
    parser.add_argument("--profile", type=Path, default=None,
                        help="run the SQLite server under cProfile (bench/profiled_serve.py) "
                             "and write its stats here")
    parser.add_argument("--startup-timeout", type=float, default=240.0)
    args = parser.parse_args(argv)
    args.database_url = admin_dsn(parser, args.database_url)
    for name in ("concurrency", "requests", "batch_rows", "rss_predictions"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


# --- the run ---------------------------------------------------------------------------------


def start_arbiter(name: str, data_dir: Path, env: dict[str, str], profile: Path | None,
                  timeout: float) -> tuple[Server, float]:
    """Start ``arbiter serve``; the server and seconds from spawn to ``/readyz`` 200."""
    port = free_port()
    cmd = [arbiter_exe(), "serve", "--host", HOST, "--port", str(port)]
    if profile is not None:
        env = {**env, "ARBITER_BENCH_PROFILE": str(profile)}
        cmd = [sys.executable, str(BENCH_DIR / "profiled_serve.py"), *cmd[1:]]
    started = time.perf_counter()
    server = start_server(name, cmd, port, env, data_dir / f"bench-{name}.log")
    try:
        wait_ready(server, status_ok, timeout, poll=0.05)
    except BaseException:
        stop_server(server)
        raise
    return server, time.perf_counter() - started


@dataclass
class Report:
    """Everything the table shows."""

    online: dict[str, LevelResult] = field(default_factory=dict)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    batch: dict[str, float] = field(default_factory=dict)
    floor: float = 0.0
    members: list[Member] = field(default_factory=list)
    heaviest: str = ""
    bare_seconds: float = 0.0
    bare_rss: float = 0.0
    bare_modules: int = 0
    start_seconds: float = 0.0
    rss_loaded: float = 0.0
    rss_after: float = 0.0


def online(report: Report, label: str, target: Target, rows: list[Row],
           args: argparse.Namespace) -> None:
    """One round of load; the rounds of a label add up (requests, failures, time)."""
    log.log(f"{label}: {args.requests} requests at {args.concurrency} clients ...")
    result = asyncio.run(measure(target, rows, args.concurrency, args.requests, args.warmup))
    if result.first_error:
        log.log(f"[yellow]{label}: {result.failures} failures; first: {result.first_error}")
    before = report.online.get(label)
    if before is not None:
        result = before.combined(result)
    report.online[label] = result


@dataclass
class Inputs:
    """What every part of the run shares: the task, its rows, a key, where its data lives."""

    task: TaskSpec
    rows: list[Row]
    batch_rows: list[Row]
    data_dir: Path
    env: dict[str, str]
    key: str


def run(args: argparse.Namespace, stack: contextlib.ExitStack) -> Report:
    """Every measure of the table, in the order the module docstring gives."""
    tasks = load_tasks(EXAMPLE_TASKS_DIR)
    if args.task not in tasks:
        raise SystemExit(f"unknown task {args.task!r}; choose one of {sorted(tasks)}")
    task = tasks[args.task]
    report = Report()
    data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="arbiter-perf-")))
    env = arbiter_env(data_dir, args.omp_threads)
    key = prepare(data_dir, env, sorted(tasks))
    inputs = Inputs(task, input_rows(task), input_rows(task, rows=args.batch_rows, seed=7),
                    data_dir, env, key)
    measure_floor(report, inputs)
    run_sqlite(report, inputs, args, stack)
    if args.database_url:
        run_postgres(report, inputs, args, stack, sorted(tasks))
    return report


def measure_floor(report: Report, inputs: Inputs) -> None:
    """The bare import, each member's single-row times and the batch floor."""
    log.log("bare import of the server's dependencies ...")
    report.bare_seconds, report.bare_rss, report.bare_modules = bare_import(inputs.data_dir)

    log.log("single-row member timings and the batch floor (in this process) ...")
    report.members = live_members(inputs.data_dir, inputs.task)
    time_single_rows(report.members, to_matrix(inputs.task, inputs.rows))
    report.heaviest = max(report.members, key=lambda m: m.proba_ms).name
    report.floor = compute_floor(report.members, to_matrix(inputs.task, inputs.batch_rows))


def run_sqlite(report: Report, inputs: Inputs, args: argparse.Namespace,
               stack: contextlib.ExitStack) -> None:
    """Start, online against the baseline, RSS and the batch, on SQLite."""
    task, rows, key, data_dir = inputs.task, inputs.rows, inputs.key, inputs.data_dir
    log.log("starting arbiter serve (SQLite) ...")
    arbiter, report.start_seconds = start_arbiter("arbiter", data_dir, inputs.env, args.profile,
                                                  args.startup_timeout)
    stack.callback(stop_server, arbiter)
    baseline = start_baseline(data_dir, task.name, report.heaviest, inputs.env)
    stack.callback(stop_server, baseline)
    wait_ready(baseline, status_ok, args.startup_timeout)

    # Rounds alternate the two servers, so that a change in what else the machine is doing
    # falls on both sides.
    for _ in range(args.rounds):
        online(report, "Arbiter SQLite", arbiter_target(arbiter.base_url, key, task.name), rows,
               args)
        online(report, "Baseline", baseline_target(baseline.base_url), rows, args)
    report.stages["SQLite"] = stage_means(arbiter.base_url, task.name)
    stop_server(baseline)

    report.rss_loaded = tree_rss_mib(arbiter.process.pid)
    log.log(f"{args.rss_predictions} predictions for the RSS check ...")
    asyncio.run(measure(arbiter_target(arbiter.base_url, key, task.name), rows,
                        args.concurrency, args.rss_predictions, 0))
    report.rss_after = tree_rss_mib(arbiter.process.pid)

    log.log(f"predictBatch of {args.batch_rows} rows (SQLite) ...")
    report.batch["SQLite"] = batch_seconds(arbiter.base_url, key, task.name, inputs.batch_rows)
    stop_server(arbiter)


def run_postgres(report: Report, inputs: Inputs, args: argparse.Namespace,
                 stack: contextlib.ExitStack, tasks: list[str]) -> None:
    """Online and the batch on a fresh PostgreSQL database (against SQLite's baseline)."""
    task = inputs.task
    pg_url = stack.enter_context(postgres_database(args.database_url))
    pg_dir = inputs.data_dir / "pg"
    pg_env = arbiter_env(pg_dir, args.omp_threads, pg_url)
    pg_key = prepare(pg_dir, pg_env, tasks)
    log.log("starting arbiter serve (PostgreSQL) ...")
    pg, _ = start_arbiter("arbiter-pg", pg_dir, pg_env, None, args.startup_timeout)
    stack.callback(stop_server, pg)
    for _ in range(args.rounds):
        online(report, "Arbiter PostgreSQL", arbiter_target(pg.base_url, pg_key, task.name),
               inputs.rows, args)
    report.stages["PostgreSQL"] = stage_means(pg.base_url, task.name)
    log.log(f"predictBatch of {args.batch_rows} rows (PostgreSQL) ...")
    report.batch["PostgreSQL"] = batch_seconds(pg.base_url, pg_key, task.name,
                                               inputs.batch_rows)
    stop_server(pg)


# --- the table -------------------------------------------------------------------------------


def x(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def verdict(ok: bool) -> str:
    return "[green]met" if ok else "[red]not met"


Cells = tuple[str, str, str, str, str, str]


def caption(report: Report, args: argparse.Namespace) -> str:
    """The machine, the sizes, the baseline's member and the load generator's own cost."""
    members = ", ".join(f"{m.name} {m.proba_ms:.2f}+{m.shap_ms:.2f} ms"
                        for m in report.members)
    return (f"{machine_line()}; OMP_NUM_THREADS={omp_setting(args.omp_threads)}\n"
            f"online: {args.rounds} x {args.requests} requests (each after {args.warmup} "
            f"warm-up) at "
            f"{args.concurrency} clients; baseline = bare Starlette + "
            f"{report.heaviest}.predict_proba (heaviest single-row member; per member "
            f"single-row predict_proba+SHAP: {members})\n"
            + client_caption([f"{label} {result.client_ms:.2f}"
                              for label, result in report.online.items()]) + "\n"
            f"bare import: {report.bare_modules} dependency modules the server holds; "
            f"RSS = the server's process tree; RSS flatness over {args.rss_predictions} "
            "predictions (issue: 100,000)")


def online_rows(report: Report) -> list[Cells]:
    """Throughput, p99 and p50 of each database against the baseline."""
    base = report.online.get("Baseline")
    rows: list[Cells] = []
    for label, result in report.online.items():
        if label == "Baseline" or base is None:
            continue
        db = label.removeprefix("Arbiter ")
        tp = result.throughput / base.throughput if base.throughput else 0.0
        p99 = result.percentile_ms(99) / base.percentile_ms(99)
        rows += [(f"online {db}: pred/s ({result.failures} fails)",
                  f"{result.throughput:.1f}", f"{base.throughput:.1f}",
                  f"{tp:.2f}x", ">= 2x", verdict(tp >= 2 and not result.failures)),
                 (f"online {db}: p99 ms", f"{result.percentile_ms(99):.1f}",
                  f"{base.percentile_ms(99):.1f}", f"{p99:.2f}x", "<= 1x", verdict(p99 <= 1)),
                 (f"online {db}: p50 ms", f"{result.percentile_ms(50):.1f}",
                  f"{base.percentile_ms(50):.1f}",
                  x(result.percentile_ms(50), base.percentile_ms(50)), "", "")]
    return rows


def batch_rows(report: Report, args: argparse.Namespace) -> list[Cells]:
    """Each database's ``predictBatch`` against the floor (issue 20's target: 2.0x)."""
    return [(f"predictBatch {args.batch_rows} rows {db}: s", f"{seconds:.2f}",
             f"{report.floor:.2f}", x(seconds, report.floor), "<= 2.0x",
             verdict(seconds <= 2.0 * report.floor))
            for db, seconds in report.batch.items()]


def footprint_rows(report: Report, args: argparse.Namespace) -> list[Cells]:
    """Memory against the bare import, its growth, and the start time."""
    growth = report.rss_after / report.rss_loaded - 1 if report.rss_loaded else 0.0
    return [("RSS MiB: loaded vs bare import", f"{report.rss_loaded:.0f}",
             f"{report.bare_rss:.0f}", x(report.rss_loaded, report.bare_rss), "<= 1.5x",
             verdict(report.rss_loaded <= 1.5 * report.bare_rss)),
            (f"RSS MiB: after {args.rss_predictions} more predictions",
             f"{report.rss_after:.0f}", f"{report.rss_loaded:.0f}", f"{growth:+.1%}",
             "within ±10%", verdict(abs(growth) <= 0.10)),
            ("start s: /readyz 200 vs bare import", f"{report.start_seconds:.2f}",
             f"{report.bare_seconds:.2f}", x(report.start_seconds, report.bare_seconds),
             "<= 2x", verdict(report.start_seconds <= 2 * report.bare_seconds))]


def stage_rows(report: Report) -> list[Cells]:
    """The server's mean time per prediction stage, one cell per database."""
    names = sorted({s for stages in report.stages.values() for s in stages}, key=STAGES.index)
    return [(f"server stage {stage}: mean ms ({' / '.join(report.stages)})",
             " / ".join(f"{stages.get(stage, float('nan')):.2f}"
                        for stages in report.stages.values()), "", "", "", "")
            for stage in names]


def render(report: Report, args: argparse.Namespace) -> Table:
    """The one table: every measure, its ratio and its target."""
    table = Table(title=f"Issue 9: Arbiter vs baseline vs floor, task {args.task}",
                  caption=caption(report, args))
    for name in ("measure", "Arbiter", "baseline / floor", "ratio", "target", ""):
        table.add_column(name, justify="left" if name in ("measure", "target") else "right")
    for row in (*online_rows(report), *batch_rows(report, args),
                *footprint_rows(report, args), *stage_rows(report)):
        table.add_row(*row)
    return table


def main() -> int:
    args = parse_args()
    stop_on_signals()
    try:
        with contextlib.ExitStack() as stack:
            report = run(args, stack)
    except KeyboardInterrupt:
        log.log("interrupted; servers stopped")
        return 130
    print_wide(render(report, args), 140)
    return 0


if __name__ == "__main__":
    sys.exit(main())
