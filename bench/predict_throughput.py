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
import itertools
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import httpx
import numpy as np
import orjson
import pandas as pd
from baseline_app import find_live_member  # bench/ is sys.path[0] when run as a script
from rich.console import Console
from rich.table import Table

from app.ml.data import load_frame
from app.ml.task import Feature, FeatureType, TaskSpec, load_tasks
from app.settings import EXAMPLE_TASKS_DIR

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
HOST = "127.0.0.1"
INPUT_ROWS = 500
INPUT_SEED = 123
PREDICT_QUERY = (
    "mutation($input: JSON!) {{ predict(task: {task}, input: $input) "
    "{{ id label confidence route explanation {{ baseValue outputValue }} }} }}"
)

Row = dict[str, Any]
log = Console(stderr=True)


# --- arguments -------------------------------------------------------------------------------


def parse_levels(text: str) -> list[int]:
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


# --- inputs ----------------------------------------------------------------------------------


def source_frame(task: TaskSpec, rows: int, seed: int) -> pd.DataFrame:
    """Realistic raw inputs: fresh generated loans, else a sample of the training data."""
    if task.name == "loan_default":
        from app.examples.loan import generate

        return generate(rows=rows, seed=seed)
    frame = load_frame(task)
    return frame.sample(n=min(rows, len(frame)), random_state=seed)


def plain_value(feature: Feature, value: Any) -> Any:
    """A pandas/numpy cell as the JSON type the contract wants."""
    if feature.type is FeatureType.BOOLEAN:
        return bool(value)
    if feature.type is FeatureType.CATEGORICAL:
        return str(value)
    number = float(value)
    return int(number) if number.is_integer() else number


def input_rows(task: TaskSpec, rows: int = INPUT_ROWS, seed: int = INPUT_SEED) -> list[Row]:
    """Input objects for ``predict``; missing (NaN) optional values are left out."""
    frame = source_frame(task, rows, seed)
    records = frame.to_dict(orient="records")
    return [
        {f.name: plain_value(f, r[f.name]) for f in task.features if not pd.isna(r[f.name])}
        for r in records
    ]


# --- data dir, CLI and server processes ------------------------------------------------------


def arbiter_env(data_dir: Path, omp_threads: str | None) -> dict[str, str]:
    """The environment without any ARBITER_* setting but the data dir (SQLite, no Redis)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARBITER_")}
    env["ARBITER_DATA_DIR"] = str(data_dir.resolve())
    if omp_threads:
        env["OMP_NUM_THREADS"] = omp_threads
    return env


def arbiter_exe() -> str:
    exe = Path(sys.executable).parent / "arbiter"
    if not exe.exists():
        raise SystemExit(f"{exe} not found: run with `uv run` from {ROOT}")
    return str(exe)


def run_cli(args: list[str], env: dict[str, str]) -> str:
    """Run ``arbiter <args>``; its stdout, or exit with its output on failure."""
    done = subprocess.run([arbiter_exe(), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"arbiter {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def ensure_release(data_dir: Path, task: str, member: str, env: dict[str, str]) -> int:
    """Version of the LIVE release (training one first if there is none)."""
    live = find_live_member(data_dir, task, member)
    if live is None:
        log.log(f"training {task} in {data_dir} ...")
        run_cli(["train", task], env)
        live = find_live_member(data_dir, task, member)
    if live is None:
        raise SystemExit(f"the LIVE release of {task} has no member {member!r}")
    return live.version


def create_key(env: dict[str, str]) -> str:
    return run_cli(["keys", "create", "--role", "predictor", "--name", "bench"], env).split()[-1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path


def start_server(name: str, cmd: list[str], port: int, env: dict[str, str],
                 log_path: Path) -> Server:
    """Start a server in its own session (so Ctrl-C reaches only us; we stop it)."""
    with log_path.open("wb") as out:
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Server(name, process, f"http://{HOST}:{port}", log_path)


def stop_server(server: Server) -> None:
    """SIGTERM the server's process group, SIGKILL after 10 s."""
    if server.process.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, sig)
        try:
            server.process.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def log_tail(path: Path, lines: int = 30) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def task_ready(task: str) -> Callable[[httpx.Response], bool]:
    """Arbiter's ``/readyz`` answers 503 while *any* task lacks a LIVE release; we only need
    the database and the benchmarked task to be ready."""

    def ready(response: httpx.Response) -> bool:
        body = response.json()
        return bool(body.get("database") == "ok" and body.get("tasks", {}).get(task) == "ready")

    return ready


def status_ok(response: httpx.Response) -> bool:
    return response.status_code == 200


def wait_ready(server: Server, ready: Callable[[httpx.Response], bool], timeout: float,
               poll: float = 0.25) -> None:
    """Poll ``/readyz`` every ``poll`` seconds until ``ready``; fail early if the process
    dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SystemExit(f"{server.name} exited:\n{log_tail(server.log_path)}")
        with contextlib.suppress(httpx.HTTPError, ValueError):
            if ready(httpx.get(f"{server.base_url}/readyz", timeout=2.0)):
                return
        time.sleep(poll)
    raise SystemExit(f"{server.name} not ready after {timeout:.0f}s:\n{log_tail(server.log_path)}")


# --- load generation -------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What a load request got back."""

    status: int
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass(frozen=True)
class Target:
    """One endpoint to drive: how to build a request body and how to judge a response."""

    name: str
    url: str
    headers: dict[str, str]
    body: Callable[[Row], dict[str, Any]]
    ok: Callable[[Answer], bool]


def graphql_ok(answer: Answer) -> bool:
    if answer.status != 200:
        return False
    try:
        payload = answer.json()
    except ValueError:
        return False
    return not payload.get("errors") and (payload.get("data") or {}).get("predict") is not None


def baseline_ok(answer: Answer) -> bool:
    return answer.status == 200 and "label" in answer.json()


JSON_HEADERS = {"Content-Type": "application/json"}


def arbiter_target(base_url: str, key: str, task: str) -> Target:
    query = PREDICT_QUERY.format(task=json.dumps(task))
    return Target("Arbiter", f"{base_url}/graphql",
                  {**JSON_HEADERS, "Authorization": f"Bearer {key}"},
                  lambda row: {"query": query, "variables": {"input": row}}, graphql_ok)


def baseline_target(base_url: str) -> Target:
    return Target("Baseline", f"{base_url}/predict", JSON_HEADERS, lambda row: row, baseline_ok)


@dataclass
class LevelResult:
    concurrency: int
    latencies: list[float]  # seconds, successful requests only
    failures: int
    elapsed: float
    first_error: str | None
    client_cpu: float = 0.0  # seconds of this process's CPU while it drove the requests

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")

    @property
    def client_ms(self) -> float:
        """The load generator's own CPU per request, in ms."""
        done = len(self.latencies) + self.failures
        return self.client_cpu / done * 1000 if done else float("nan")

    def combined(self, more: LevelResult) -> LevelResult:
        """This round and another of the same level, as one: requests, failures, wall and
        client CPU time add up, latencies are pooled."""
        return LevelResult(self.concurrency, self.latencies + more.latencies,
                           self.failures + more.failures, self.elapsed + more.elapsed,
                           self.first_error or more.first_error,
                           self.client_cpu + more.client_cpu)


def client_caption(cells: Sequence[str]) -> str:
    """The caption line that shows whether the load generator itself was busy."""
    return "load generator: aiohttp in one process, its CPU ms per request: " + "; ".join(cells)


@dataclass
class Tally:
    latencies: list[float]
    failures: int = 0
    first_error: str | None = None


async def one_request(client: aiohttp.ClientSession, target: Target, row: Row,
                      tally: Tally) -> None:
    start = time.perf_counter()
    error: str | None = None
    try:
        async with client.post(target.url, data=orjson.dumps(target.body(row)),
                               headers=target.headers) as response:
            answer = Answer(response.status, await response.read())
        if not target.ok(answer):
            error = f"HTTP {answer.status}: {answer.body[:300]!r}"
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    if error is None:
        tally.latencies.append(time.perf_counter() - start)
    else:
        tally.failures += 1
        tally.first_error = tally.first_error or error


async def drive(client: aiohttp.ClientSession, target: Target, rows: Sequence[Row],
                concurrency: int, total: int, offset: int) -> Tally:
    """``total`` requests from ``concurrency`` workers; rows cycled from ``offset``."""
    tally = Tally([])
    counter = itertools.count()

    async def worker() -> None:
        while (i := next(counter)) < total:
            await one_request(client, target, rows[(offset + i) % len(rows)], tally)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally


async def measure(target: Target, rows: Sequence[Row], concurrency: int, requests: int,
                  warmup: int) -> LevelResult:
    """The load generator is aiohttp: at 32 clients httpx's own CPU per request was about
    as large as the server's work and its scheduling added most of the p99 (see README)."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        await drive(client, target, rows, concurrency, warmup, 0)
        start, cpu = time.perf_counter(), time.process_time()
        tally = await drive(client, target, rows, concurrency, requests, warmup)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return LevelResult(concurrency, tally.latencies, tally.failures, elapsed, tally.first_error,
                       cpu)


async def measure_all(targets: Sequence[Target], rows: Sequence[Row], levels: Sequence[int],
                      requests: int, warmup: int) -> dict[str, list[LevelResult]]:
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


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_line() -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"machine: {os.cpu_count()} CPUs ({usable} usable, {cpu_model()}), "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}")


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 and np.isfinite(a) and np.isfinite(b) else "-"


def level_cells(result: LevelResult) -> list[str]:
    fails = f"[red]{result.failures}" if result.failures else "0"
    return [f"{result.throughput:.1f}", f"{result.percentile_ms(50):.1f}",
            f"{result.percentile_ms(99):.1f}", fails]


def render(results: dict[str, list[LevelResult]], task: str, release: int,
           args: argparse.Namespace) -> Table:
    omp = args.omp_threads or os.environ.get("OMP_NUM_THREADS") or "unset"
    table = Table(
        title=(f"predict throughput: task {task}, LIVE release {release}: Arbiter POST /graphql "
               f"vs naive baseline ({args.member}.predict_proba)"),
        caption=(f"{machine_line()}; OMP_NUM_THREADS={omp}\n{args.requests} measured "
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


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def check_task(name: str, member: str) -> TaskSpec:
    tasks = load_tasks(EXAMPLE_TASKS_DIR)
    if name not in tasks:
        raise SystemExit(f"unknown task {name!r}; choose one of {sorted(tasks)}")
    task = tasks[name]
    if member not in {m.name for m in task.members}:
        raise SystemExit(f"{name} has no member {member!r}")
    return task


def start_servers(stack: contextlib.ExitStack, data_dir: Path, args: argparse.Namespace,
                  env: dict[str, str]) -> tuple[Server, Server]:
    """Start both servers (stopped when ``stack`` closes) and wait until they are ready."""
    arbiter_port, baseline_port = free_port(), free_port()
    arbiter = start_server("arbiter serve", [arbiter_exe(), "serve", "--host", HOST, "--port",
                                             str(arbiter_port)],
                           arbiter_port, env, data_dir / "bench-arbiter.log")
    stack.callback(stop_server, arbiter)
    baseline_cmd = [sys.executable, str(BENCH_DIR / "baseline_app.py"), "--data-dir",
                    str(data_dir), "--task", args.task, "--member", args.member,
                    "--host", HOST, "--port", str(baseline_port)]
    baseline = start_server("baseline", baseline_cmd, baseline_port, env,
                            data_dir / "bench-baseline.log")
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
    console = Console()
    if not console.is_terminal:  # a file or pipe: don't squeeze the table into 80 columns
        console = Console(width=max(console.width, 120))
    console.print(render(results, task.name, release, args))


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    try:
        run(args)
    except KeyboardInterrupt:
        log.log("interrupted; servers stopped")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
