"""Predictions/s and latency of Arbiter's ``predict`` mutation against a naive baseline.

Trains the task in a fresh data dir (or reuses ``--data-dir``), creates a predictor key,
starts ``arbiter serve`` and ``bench/baseline_app.py`` as separate processes, drives both
with the same asyncio aiohttp client at each concurrency, and prints one table.

Run from the repository root:  uv run python bench/predict_throughput.py --requests 400
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from clients import (  # bench/ is sys.path[0] when run as a script
    LevelResult,
    Row,
    Target,
    arbiter_target,
    baseline_target,
    client_caption,
    measure,
)
from inputs import check_task, input_rows
from rich.table import Table
from servers import (
    HOST,
    Server,
    arbiter_env,
    arbiter_exe,
    create_key,
    ensure_release,
    free_port,
    log,
    start_baseline,
    start_server,
    status_ok,
    stop_on_signals,
    stop_server,
    task_ready,
    wait_ready,
)
from tables import machine_line, omp_setting, print_wide

# --- arguments -------------------------------------------------------------------------------


def parse_levels(text: str) -> list[int]:
    """``--concurrency``: comma-separated positive integers."""
    levels = [int(part) for part in text.split(",") if part.strip()]
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("concurrency must be positive integers, e.g. 1,8,32")
    return levels


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="loan_default", help="task to train and predict")
    parser.add_argument("--member", default="boosted", help="member the baseline serves")
    parser.add_argument("--concurrency", type=parse_levels, default=[1, 8, 32],
                        help="comma-separated concurrency levels (default 1,8,32)")
    parser.add_argument("--requests", type=int, default=400, help="measured requests per level")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured requests per level")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="data dir to use (kept; trained only if it has no LIVE release); "
                             "default: a fresh temporary dir")
    parser.add_argument("--omp-threads", default=None,
                        help="OMP_NUM_THREADS for both servers (default: inherited/unset)")
    parser.add_argument("--startup-timeout", type=float, default=180.0,
                        help="seconds to wait for each server's /readyz")
    return parser.parse_args(argv)


# --- load ------------------------------------------------------------------------------------


async def measure_all(targets: Sequence[Target], rows: Sequence[Row], levels: Sequence[int],
                      requests: int, warmup: int) -> dict[str, list[LevelResult]]:
    """Every target at every level, level by level."""
    results: dict[str, list[LevelResult]] = {t.name: [] for t in targets}
    for level in levels:
        for target in targets:
            log.log(f"{target.name}: concurrency {level}, {requests} requests ...")
            result = await measure(target, rows, level, requests, warmup)
            if result.first_error:
                log.log(f"[yellow]{target.name}: {result.failures} failures; first: "
                        f"{result.first_error}")
            results[target.name].append(result)
    return results


# --- report ----------------------------------------------------------------------------------


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 and np.isfinite(a) and np.isfinite(b) else "-"


def level_cells(result: LevelResult) -> list[str]:
    fails = f"[red]{result.failures}" if result.failures else "0"
    return [f"{result.throughput:.1f}", f"{result.percentile_ms(50):.1f}",
            f"{result.percentile_ms(99):.1f}", fails]


def render(results: dict[str, list[LevelResult]], task: str, release: int,
           args: argparse.Namespace) -> Table:
    """One row per concurrency level: both servers and their ratios."""
    table = Table(
        title=(f"predict throughput: task {task}, LIVE release {release}: Arbiter POST /graphql "
               f"vs naive baseline ({args.member}.predict_proba)"),
        caption=(f"{machine_line()}; OMP_NUM_THREADS={omp_setting(args.omp_threads)}\n"
                 f"{args.requests} measured "
                 f"requests per level after {args.warmup} warm-up; latencies of successful "
                 "requests; A/B = Arbiter / baseline\n" + client_caption(
                     [f"{name} " + " / ".join(f"{r.client_ms:.2f}" for r in levels)
                      for name, levels in results.items()])),
    )
    table.add_column("conc.", justify="right")
    for name in ("Arbiter", "Baseline"):
        for metric in ("pred/s", "p50 ms", "p99 ms", "fails"):
            table.add_column(f"{name}\n{metric}", justify="right", no_wrap=True)
    table.add_column("pred/s\nA/B", justify="right", no_wrap=True)
    table.add_column("p99\nA/B", justify="right", no_wrap=True)
    for arb, base in zip(results["Arbiter"], results["Baseline"], strict=True):
        table.add_row(str(arb.concurrency), *level_cells(arb), *level_cells(base),
                      ratio(arb.throughput, base.throughput),
                      ratio(arb.percentile_ms(99), base.percentile_ms(99)))
    return table


# --- main ------------------------------------------------------------------------------------


def start_servers(stack: contextlib.ExitStack, data_dir: Path, args: argparse.Namespace,
                  env: dict[str, str]) -> tuple[Server, Server]:
    """Start both servers (stopped when ``stack`` closes) and wait until they are ready."""
    arbiter_port = free_port()
    arbiter = start_server("arbiter serve", [arbiter_exe(), "serve", "--host", HOST, "--port",
                                             str(arbiter_port)],
                           arbiter_port, env, data_dir / "bench-arbiter.log")
    stack.callback(stop_server, arbiter)
    baseline = start_baseline(data_dir, args.task, args.member, env)
    stack.callback(stop_server, baseline)
    for server, ready in ((arbiter, task_ready(args.task)), (baseline, status_ok)):
        log.log(f"waiting for {server.name} at {server.base_url} ...")
        wait_ready(server, ready, args.startup_timeout)
    return arbiter, baseline


def run(args: argparse.Namespace) -> None:
    task = check_task(args.task, args.member)
    rows = input_rows(task)
    with contextlib.ExitStack() as stack:
        if args.data_dir is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="arbiter-bench-"))
            data_dir = Path(tmp)
        else:
            data_dir = args.data_dir.resolve()
            data_dir.mkdir(parents=True, exist_ok=True)
        env = arbiter_env(data_dir, args.omp_threads)
        release = ensure_release(data_dir, task.name, args.member, env)
        key = create_key(env)
        arbiter, baseline = start_servers(stack, data_dir, args, env)
        targets = [arbiter_target(arbiter.base_url, key, task.name),
                   baseline_target(baseline.base_url)]
        results = asyncio.run(measure_all(targets, rows, args.concurrency, args.requests,
                                          args.warmup))
    print_wide(render(results, task.name, release, args), 120)


def main() -> int:
    args = parse_args()
    stop_on_signals()
    try:
        run(args)
    except KeyboardInterrupt:
        log.log("interrupted; servers stopped")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
