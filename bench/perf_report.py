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
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np
import sqlalchemy as sa
from predict_throughput import (  # bench/ is sys.path[0] when run as a script
    BENCH_DIR,
    HOST,
    ROOT,
    LevelResult,
    Server,
    arbiter_exe,
    arbiter_target,
    baseline_target,
    client_caption,
    create_key,
    free_port,
    input_rows,
    log,
    machine_line,
    measure,
    run_cli,
    start_server,
    status_ok,
    stop_server,
    wait_ready,
)
from rich.console import Console
from rich.table import Table

from app.ml.algorithms import ALGORITHMS
from app.ml.artifacts import load_pipeline
from app.ml.contract import to_matrix
from app.ml.explain import MemberExplainer
from app.ml.pipeline import fold_matrix
from app.ml.task import TaskSpec, load_tasks
from app.settings import EXAMPLE_TASKS_DIR

PROJECT_PACKAGES = {"app", "graphql_schema", "review", "workers", "web", "bench",
                    "predict_throughput", "baseline_app", "perf_report"}
MEMBERS_SQL = sa.text(
    "SELECT m.name, m.algorithm, m.artifact_path, m.sha256, m.background_mean "
    "FROM releases r JOIN release_members m ON m.release_id = r.id "
    "WHERE r.task = :task AND r.stage = 'LIVE' ORDER BY m.name"
)
STAGES = ["validate", "infer", "explain", "route", "store"]
BATCH_QUERY = (
    "mutation($inputs: [JSON!]!) {{ predictBatch(task: {task}, inputs: $inputs) "
    "{{ id label confidence route explanation {{ baseValue outputValue }} }} }}"
)
# Imports everything listed in argv[1] (a JSON list), then prints its RSS in KiB.
BARE_IMPORT = (
    "import importlib, json, sys\n"
    "for name in json.load(open(sys.argv[1])):\n"
    "    try:\n"
    "        importlib.import_module(name)\n"
    "    except Exception:\n"
    "        pass\n"
    "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS')))\n"
)
# Lists the non-project, non-stdlib modules a server process holds once the app module is
# imported and the LIVE members of every task are unpickled (which imports their estimators).
LIST_DEPENDENCIES = (
    "import json, sys\n"
    "import app.main, app.cli\n"
    "import sqlalchemy as sa\n"
    "from pathlib import Path\n"
    "from app.ml.artifacts import load_pipeline\n"
    "data = Path(sys.argv[1])\n"
    "engine = sa.create_engine(f'sqlite:///{data / \"arbiter.db\"}')\n"
    "with engine.connect() as c:\n"
    "    for path, sha in c.execute(sa.text(\"SELECT m.artifact_path, m.sha256 FROM releases r"
    " JOIN release_members m ON m.release_id = r.id WHERE r.stage = 'LIVE'\")):\n"
    "        load_pipeline(data / 'artifacts' / path, sha)\n"
    "skip = set(sys.stdlib_module_names) | set(json.loads(sys.argv[2]))\n"
    "print(json.dumps(sorted(n for n in sys.modules if n.split('.')[0] not in skip\n"
    "                        and not n.startswith('_'))))\n"
)


def admin_dsn(parser: argparse.ArgumentParser, value: str | None) -> str | None:
    """``--database-url``: 'postgresql' (the local server) or an admin DSN."""
    if value == "postgresql":
        return "postgresql://postgres@127.0.0.1:5432/postgres"
    if value and not value.startswith("postgresql://"):
        parser.error("--database-url must be 'postgresql' or postgresql://user@host:port/db")
    return value


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


# --- processes -------------------------------------------------------------------------------


def env_for(data_dir: Path, database_url: str | None, omp: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARBITER_")}
    env["ARBITER_DATA_DIR"] = str(data_dir)
    if database_url:
        env["ARBITER_DATABASE_URL"] = database_url
    if omp:
        env["OMP_NUM_THREADS"] = omp
    return env


def tree_rss_mib(pid: int) -> float:
    """RSS of every process in the server's session (it is started in its own)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            sid = int(stat.rsplit(")", 1)[1].split()[3])
            if sid == pid:
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("VmRSS"):
                        total += int(line.split()[1])
    return total / 1024


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


def bare_import(data_dir: Path, runs: int = 3) -> tuple[float, float, int]:
    """(median seconds, median RSS MiB, module count) of a fresh interpreter importing the
    modules the server holds from its dependencies."""
    listed = subprocess.run(
        [sys.executable, "-c", LIST_DEPENDENCIES, str(data_dir), json.dumps(sorted(
            PROJECT_PACKAGES))], cwd=ROOT, capture_output=True, text=True, check=True)
    modules = data_dir / "bench-dependencies.json"
    modules.write_text(listed.stdout)
    times, rss = [], []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", BARE_IMPORT, str(modules)], cwd="/",
                              capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - started)
        rss.append(int(done.stdout.strip()) / 1024)
    return statistics.median(times), statistics.median(rss), len(json.loads(listed.stdout))


# --- in-process member timings and the compute floor -----------------------------------------


@dataclass
class Member:
    name: str
    pipeline: Any
    explainer: MemberExplainer
    proba_ms: float = 0.0  # single row, median
    shap_ms: float = 0.0  # single row, median


def live_members(data_dir: Path, task: TaskSpec) -> list[Member]:
    engine = sa.create_engine(f"sqlite:///{data_dir / 'arbiter.db'}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(MEMBERS_SQL, {"task": task.name}).all()
    finally:
        engine.dispose()
    if not rows:
        raise SystemExit(f"no LIVE release of {task.name} in {data_dir}")
    fold = fold_matrix(task)
    members = []
    for name, algorithm, path, sha, background in rows:
        pipeline = load_pipeline(data_dir / "artifacts" / path, sha)
        algo = ALGORITHMS[algorithm]
        bg = json.loads(background) if isinstance(background, str) else background
        members.append(Member(name, pipeline, MemberExplainer(
            pipeline, algo.explainer, algo.space, fold, np.asarray(bg, dtype=float))))
    return members


def shap_values(m: Member, X: np.ndarray) -> Any:
    Xt = m.explainer.preprocess.transform(X)
    if m.explainer.explainer.__class__.__name__ == "TreeExplainer":
        return m.explainer.explainer.shap_values(Xt, check_additivity=False)
    return m.explainer.explainer.shap_values(Xt)


def time_single_rows(members: list[Member], X: np.ndarray, repeats: int = 60) -> None:
    """Median single-row ``predict_proba`` and SHAP time of each member."""
    for m in members:
        proba, shap = [], []
        for i in range(repeats):
            row = X[i % len(X)][None, :]
            t0 = time.perf_counter()
            m.pipeline.predict_proba(row)
            t1 = time.perf_counter()
            shap_values(m, row)
            t2 = time.perf_counter()
            proba.append(t1 - t0)
            shap.append(t2 - t1)
        m.proba_ms = statistics.median(proba[5:]) * 1000
        m.shap_ms = statistics.median(shap[5:]) * 1000


def compute_floor(members: list[Member], X: np.ndarray, runs: int = 2) -> float:
    """Best-of-``runs`` seconds for every member's ``predict_proba`` + SHAP on all of X."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        for m in members:
            m.pipeline.predict_proba(X)
            shap_values(m, X)
        best = min(best, time.perf_counter() - started)
    return best


# --- requests against a running server -------------------------------------------------------


def batch_seconds(base_url: str, key: str, task: str, rows: list[dict[str, Any]]) -> float:
    body = {"query": BATCH_QUERY.format(task=json.dumps(task)), "variables": {"inputs": rows}}
    started = time.perf_counter()
    response = httpx.post(f"{base_url}/graphql", json=body, timeout=600.0,
                          headers={"Authorization": f"Bearer {key}"})
    elapsed = time.perf_counter() - started
    payload = response.json()
    if response.status_code != 200 or payload.get("errors"):
        raise SystemExit(f"predictBatch failed: HTTP {response.status_code} "
                         f"{json.dumps(payload)[:500]}")
    if len(payload["data"]["predictBatch"]) != len(rows):
        raise SystemExit("predictBatch answered the wrong number of rows")
    return elapsed


def stage_means(base_url: str, task: str) -> dict[str, float]:
    """Mean ms per call of each prediction stage, from the server's own histogram."""
    text = httpx.get(f"{base_url}/metrics", timeout=10.0).text
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("arbiter_prediction_stage_duration_seconds_") \
                or f'task="{task}"' not in line:
            continue
        stage = line.split('stage="', 1)[1].split('"', 1)[0]
        value = float(line.rsplit(" ", 1)[1])
        if "_sum{" in line:
            sums[stage] = value
        elif "_count{" in line:
            counts[stage] = value
    return {s: sums[s] / counts[s] * 1000 for s in STAGES if counts.get(s)}


# --- PostgreSQL ------------------------------------------------------------------------------


async def _admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def postgres_database(admin_dsn: str) -> Iterator[str]:
    """A fresh database (its SQLAlchemy async URL), dropped on exit."""
    name = f"arbiter_bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(admin_dsn, f'CREATE DATABASE "{name}"'))
    try:
        base = admin_dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        yield f"{base}/{name}"
    finally:
        asyncio.run(_admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Report:
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


def prepare(data_dir: Path, env: dict[str, str], tasks: Sequence[str]) -> str:
    for name in tasks:
        log.log(f"training {name} ({env.get('ARBITER_DATABASE_URL', 'SQLite')}) ...")
        run_cli(["train", name], env)
    return create_key(env)


def online(report: Report, label: str, target: Any, rows: list[dict[str, Any]],
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


def run(args: argparse.Namespace, stack: contextlib.ExitStack) -> Report:
    tasks = load_tasks(EXAMPLE_TASKS_DIR)
    if args.task not in tasks:
        raise SystemExit(f"unknown task {args.task!r}; choose one of {sorted(tasks)}")
    task = tasks[args.task]
    report = Report()
    data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="arbiter-perf-")))
    env = env_for(data_dir, None, args.omp_threads)
    key = prepare(data_dir, env, sorted(tasks))
    rows = input_rows(task)
    batch_rows = input_rows(task, rows=args.batch_rows, seed=7)

    log.log("bare import of the server's dependencies ...")
    report.bare_seconds, report.bare_rss, report.bare_modules = bare_import(data_dir)

    log.log("single-row member timings and the batch floor (in this process) ...")
    report.members = live_members(data_dir, task)
    time_single_rows(report.members, to_matrix(task, rows))
    report.heaviest = max(report.members, key=lambda m: m.proba_ms).name
    report.floor = compute_floor(report.members, to_matrix(task, batch_rows))

    log.log("starting arbiter serve (SQLite) ...")
    arbiter, report.start_seconds = start_arbiter("arbiter", data_dir, env, args.profile,
                                                  args.startup_timeout)
    stack.callback(stop_server, arbiter)
    port = free_port()
    baseline = start_server("baseline", [
        sys.executable, str(BENCH_DIR / "baseline_app.py"), "--data-dir", str(data_dir),
        "--task", task.name, "--member", report.heaviest, "--host", HOST, "--port", str(port),
    ], port, env, data_dir / "bench-baseline.log")
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
    report.batch["SQLite"] = batch_seconds(arbiter.base_url, key, task.name, batch_rows)
    stop_server(arbiter)

    if args.database_url:
        pg_url = stack.enter_context(postgres_database(args.database_url))
        pg_dir = data_dir / "pg"
        pg_env = env_for(pg_dir, pg_url, args.omp_threads)
        pg_key = prepare(pg_dir, pg_env, sorted(tasks))
        log.log("starting arbiter serve (PostgreSQL) ...")
        pg, _ = start_arbiter("arbiter-pg", pg_dir, pg_env, None, args.startup_timeout)
        stack.callback(stop_server, pg)
        for _ in range(args.rounds):
            online(report, "Arbiter PostgreSQL", arbiter_target(pg.base_url, pg_key, task.name),
                   rows, args)
        report.stages["PostgreSQL"] = stage_means(pg.base_url, task.name)
        log.log(f"predictBatch of {args.batch_rows} rows (PostgreSQL) ...")
        report.batch["PostgreSQL"] = batch_seconds(pg.base_url, pg_key, task.name, batch_rows)
        stop_server(pg)
    return report


# --- the table -------------------------------------------------------------------------------


def x(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def verdict(ok: bool) -> str:
    return "[green]met" if ok else "[red]not met"


def render(report: Report, args: argparse.Namespace) -> Table:
    omp = args.omp_threads or os.environ.get("OMP_NUM_THREADS") or "unset"
    members = ", ".join(f"{m.name} {m.proba_ms:.2f}+{m.shap_ms:.2f} ms"
                        for m in report.members)
    table = Table(
        title=f"Issue 9: Arbiter vs baseline vs floor, task {args.task}",
        caption=(f"{machine_line()}; OMP_NUM_THREADS={omp}\n"
                 f"online: {args.rounds} x {args.requests} requests (each after {args.warmup} "
                 f"warm-up) at "
                 f"{args.concurrency} clients; baseline = bare Starlette + "
                 f"{report.heaviest}.predict_proba (heaviest single-row member; per member "
                 f"single-row predict_proba+SHAP: {members})\n"
                 + client_caption([f"{label} {result.client_ms:.2f}"
                                   for label, result in report.online.items()]) + "\n"
                 f"bare import: {report.bare_modules} dependency modules the server holds; "
                 f"RSS = the server's process tree; RSS flatness over {args.rss_predictions} "
                 "predictions (issue: 100,000)"),
    )
    for name in ("measure", "Arbiter", "baseline / floor", "ratio", "target", ""):
        table.add_column(name, justify="left" if name in ("measure", "target") else "right")
    base = report.online.get("Baseline")
    for label, result in report.online.items():
        if label == "Baseline" or base is None:
            continue
        db = label.removeprefix("Arbiter ")
        tp = result.throughput / base.throughput if base.throughput else 0.0
        p99 = result.percentile_ms(99) / base.percentile_ms(99)
        table.add_row(f"online {db}: pred/s ({result.failures} fails)",
                      f"{result.throughput:.1f}", f"{base.throughput:.1f}",
                      f"{tp:.2f}x", ">= 2x", verdict(tp >= 2 and not result.failures))
        table.add_row(f"online {db}: p99 ms", f"{result.percentile_ms(99):.1f}",
                      f"{base.percentile_ms(99):.1f}", f"{p99:.2f}x", "<= 1x", verdict(p99 <= 1))
        table.add_row(f"online {db}: p50 ms", f"{result.percentile_ms(50):.1f}",
                      f"{base.percentile_ms(50):.1f}",
                      x(result.percentile_ms(50), base.percentile_ms(50)), "", "")
    for db, seconds in report.batch.items():
        table.add_row(f"predictBatch {args.batch_rows} rows {db}: s", f"{seconds:.2f}",
                      f"{report.floor:.2f}", x(seconds, report.floor), "<= 1.5x",
                      verdict(seconds <= 1.5 * report.floor))
    table.add_row("RSS MiB: loaded vs bare import", f"{report.rss_loaded:.0f}",
                  f"{report.bare_rss:.0f}", x(report.rss_loaded, report.bare_rss), "<= 1.5x",
                  verdict(report.rss_loaded <= 1.5 * report.bare_rss))
    growth = report.rss_after / report.rss_loaded - 1 if report.rss_loaded else 0.0
    table.add_row(f"RSS MiB: after {args.rss_predictions} more predictions",
                  f"{report.rss_after:.0f}", f"{report.rss_loaded:.0f}", f"{growth:+.1%}",
                  "within ±10%", verdict(abs(growth) <= 0.10))
    table.add_row("start s: /readyz 200 vs bare import", f"{report.start_seconds:.2f}",
                  f"{report.bare_seconds:.2f}", x(report.start_seconds, report.bare_seconds),
                  "<= 2x", verdict(report.start_seconds <= 2 * report.bare_seconds))
    names = sorted({s for stages in report.stages.values() for s in stages}, key=STAGES.index)
    for stage in names:
        cells = [f"{stages.get(stage, float('nan')):.2f}" for stages in report.stages.values()]
        table.add_row(f"server stage {stage}: mean ms ({' / '.join(report.stages)})",
                      " / ".join(cells), "", "", "", "")
    return table


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with contextlib.ExitStack() as stack:
            report = run(args, stack)
    except KeyboardInterrupt:
        log.log("interrupted; servers stopped")
        return 130
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 140))
    console.print(render(report, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
