"""Arbiter against the model server a user would pick instead: MLServer, on the same member.

For each task: trains it in a fresh data dir (SQLite), exports the LIVE release's ``--member``
pipeline with joblib, and serves it four ways, one process each, driven by the same aiohttp
client at the same concurrency, rounds interleaved (each round runs every server once, in a
rotated order, so a noisy neighbour hits them all alike):

- Arbiter: ``arbiter serve``, the ``predict`` mutation (every member, exact SHAP, conformal
  and OOD routing, a stored row);
- MLServer with adaptive batching (``max_batch_size``/``max_batch_time``), inference inline
  (``parallel_workers`` as given, 0 by default: one process, as Arbiter);
- MLServer without batching;
- the bare endpoint (``bench/baseline_app.py``: the member's ``predict_proba`` in Starlette).

MLServer runs in its own throw-away environment (``uv run --isolated``) with the project's
scikit-learn, numpy and pandas versions, so the exported pipeline loads there; nothing of it
enters the project's lock file. Clients of MLServer send the model matrix (V2 protocol, one
FP64 tensor), computed before the run: feature derivation is theirs to do, and is not timed.

Run from the repository root:  uv run python bench/peers.py --requests 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
import sklearn
from baseline_app import find_live_member
from clients import (  # bench/ is sys.path[0] when run as a script
    JSON_HEADERS,
    Answer,
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
    log_tail,
    start_baseline,
    start_server,
    status_ok,
    stop_on_signals,
    stop_server,
    task_ready,
    wait_ready,
)
from tables import machine_line, omp_setting, print_wide

from app.ml.artifacts import load_pipeline
from app.ml.contract import to_matrix
from app.ml.task import TaskSpec

MODEL = "member"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="breast_cancer,loan_default")
    parser.add_argument("--member", default="boosted")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=2000, help="measured, per round")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--omp-threads", default="1")
    parser.add_argument("--mlserver", default="1.7.1", help="MLServer version")
    parser.add_argument("--mlserver-workers", type=int, default=0,
                        help="MLServer parallel_workers (0: inference inline, one process)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-batch-time", type=float, default=0.005)
    parser.add_argument("--startup-timeout", type=float, default=600.0,
                        help="seconds; the first MLServer start installs its environment")
    return parser.parse_args(argv)


# --- MLServer --------------------------------------------------------------------------------


def model_dir(root: Path, pipeline: Any, args: argparse.Namespace, batching: bool,
              ports: tuple[int, int, int]) -> Path:
    """A model repository for ``mlserver start``: settings, model settings, the joblib file."""
    folder = root / ("mlserver-batching" if batching else "mlserver-plain")
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipeline, folder / "model.joblib")
    http, grpc, metrics = ports
    settings = {"host": HOST, "http_port": http, "grpc_port": grpc, "metrics_port": metrics,
                "parallel_workers": args.mlserver_workers, "debug": False}
    model: dict[str, Any] = {"name": MODEL, "implementation": "mlserver_sklearn.SKLearnModel",
                             "parameters": {"uri": "./model.joblib", "version": "v1"}}
    if batching:
        model |= {"max_batch_size": args.max_batch_size, "max_batch_time": args.max_batch_time}
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    (folder / "model-settings.json").write_text(json.dumps(model, indent=2))
    return folder


def mlserver_cmd(folder: Path, args: argparse.Namespace) -> list[str]:
    """``mlserver start`` in an isolated environment pinned beside the project's versions."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    pins = [f"mlserver=={args.mlserver}", f"mlserver-sklearn=={args.mlserver}",
            "uvloop==0.21.0",  # MLServer 1.7.1's parallel workers crash on uvloop 0.23 (#2286)
            f"scikit-learn=={sklearn.__version__}", f"numpy=={np.__version__}",
            f"pandas=={pd.__version__}", f"joblib=={joblib.__version__}"]
    withs = [part for pin in pins for part in ("--with", pin)]
    return ["uv", "run", "--isolated", "--no-project", "--python", python, *withs,
            "mlserver", "start", str(folder)]


def start_mlserver(root: Path, pipeline: Any, args: argparse.Namespace, batching: bool,
                   env: dict[str, str]) -> Server:
    ports = (free_port(), free_port(), free_port())
    folder = model_dir(root, pipeline, args, batching, ports)
    name = "MLServer batching" if batching else "MLServer plain"
    return start_server(name, mlserver_cmd(folder, args), ports[0], env,
                        root / f"bench-{folder.name}.log")


def wait_model_ready(server: Server, timeout: float) -> None:
    """Poll MLServer's V2 model readiness until 200; fail early if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SystemExit(f"{server.name} exited:\n{log_tail(server.log_path)}")
        with contextlib.suppress(httpx.HTTPError):
            url = f"{server.base_url}/v2/models/{MODEL}/ready"
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.5)
    raise SystemExit(f"{server.name} not ready after {timeout:.0f}s:\n{log_tail(server.log_path)}")


def v2_body(matrix_row: np.ndarray) -> dict[str, Any]:
    """One row as the V2 inference protocol's request, asking for probabilities."""
    return {"inputs": [{"name": "input-0", "shape": [1, len(matrix_row)], "datatype": "FP64",
                        "data": [float(v) for v in matrix_row]}],
            "outputs": [{"name": "predict_proba"}]}


def v2_ok(answer: Answer) -> bool:
    return answer.status == 200 and bool(answer.json().get("outputs"))


def mlserver_target(name: str, server: Server) -> Target:
    return Target(name, f"{server.base_url}/v2/models/{MODEL}/infer", JSON_HEADERS,
                  lambda body: body, v2_ok)


# --- one task --------------------------------------------------------------------------------


async def interleaved(targets: Sequence[tuple[Target, Sequence[Row]]],
                      args: argparse.Namespace) -> dict[str, LevelResult]:
    """Every target once per round, the order rotated each round; rounds pooled."""
    pooled: dict[str, LevelResult] = {}
    for round_no in range(args.rounds):
        shift = round_no % len(targets)
        for target, rows in [*targets[shift:], *targets[:shift]]:
            log.log(f"round {round_no + 1}/{args.rounds}: {target.name} ...")
            result = await measure(target, rows, args.concurrency, args.requests, args.warmup)
            if result.first_error:
                log.log(f"[yellow]{target.name}: {result.failures} failures; first: "
                        f"{result.first_error}")
            pooled[target.name] = (pooled[target.name].combined(result)
                                   if target.name in pooled else result)
    return pooled


def run_task(task: TaskSpec, args: argparse.Namespace) -> dict[str, LevelResult]:
    rows = input_rows(task)
    bodies = [v2_body(r) for r in to_matrix(task, rows)]
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="arbiter-peers-")))
        env = arbiter_env(root, args.omp_threads)
        ensure_release(root, task.name, args.member, env)
        key = create_key(env)
        live = find_live_member(root, task.name, args.member)
        assert live is not None  # ensure_release made it
        pipeline = load_pipeline(live.path, live.sha256)
        port = free_port()
        arbiter = start_server("Arbiter", [arbiter_exe(), "serve", "--host", HOST, "--port",
                                           str(port)], port, env, root / "bench-arbiter.log")
        servers = [arbiter, start_mlserver(root, pipeline, args, True, env),
                   start_mlserver(root, pipeline, args, False, env),
                   start_baseline(root, task.name, args.member, env)]
        for server in servers:
            stack.callback(stop_server, server)
        wait_ready(servers[0], task_ready(task.name), args.startup_timeout)
        for server in servers[1:3]:
            wait_model_ready(server, args.startup_timeout)
        wait_ready(servers[3], status_ok, args.startup_timeout)
        targets = [(arbiter_target(arbiter.base_url, key, task.name), rows),
                   (mlserver_target("MLServer batching", servers[1]), bodies),
                   (mlserver_target("MLServer plain", servers[2]), bodies),
                   (baseline_target(servers[3].base_url), rows)]
        return asyncio.run(interleaved(targets, args))


# --- report ----------------------------------------------------------------------------------


def render(results: dict[str, dict[str, LevelResult]], args: argparse.Namespace) -> Table:
    table = Table(
        title=(f"Arbiter vs MLServer {args.mlserver} on the same {args.member!r} member, "
               f"{args.concurrency} connections, one process each"),
        caption=(f"{machine_line()}; OMP_NUM_THREADS={omp_setting(args.omp_threads)}; "
                 f"{args.rounds} interleaved rounds of {args.requests} requests (after "
                 f"{args.warmup} warm-up); MLServer parallel_workers={args.mlserver_workers}, "
                 f"batching {args.max_batch_size} rows / {args.max_batch_time * 1000:g} ms\n"
                 "x MLServer: throughput ratio to MLServer with batching (higher is better), "
                 "p99 ratio (lower is better)\n" + client_caption(
                     [f"{t}/{n} {r.client_ms:.2f}" for t, per in results.items()
                      for n, r in per.items()])))
    for column in ("task", "server", "pred/s", "p50 ms", "p99 ms", "fails",
                   "pred/s x MLServer", "p99 x MLServer"):
        table.add_column(column, justify="left" if column in ("task", "server") else "right")
    for task, per in results.items():
        peer = per["MLServer batching"]
        for name, r in per.items():
            table.add_row(task, name, f"{r.throughput:.0f}", f"{r.percentile_ms(50):.1f}",
                          f"{r.percentile_ms(99):.1f}", str(r.failures),
                          f"{r.throughput / peer.throughput:.2f}x",
                          f"{r.percentile_ms(99) / peer.percentile_ms(99):.2f}x")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_signals()
    results = {}
    try:
        for name in args.tasks.split(","):
            results[name] = run_task(check_task(name, args.member), args)
    except KeyboardInterrupt:
        log.log("interrupted; servers stopped")
        return 130
    print_wide(render(results, args), 140)
    return 0


if __name__ == "__main__":
    sys.exit(main())
