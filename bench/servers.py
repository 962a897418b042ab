"""The processes a benchmark drives: the ``arbiter`` CLI, ``arbiter serve`` and the baseline.

Every server starts in its own session (so Ctrl-C reaches only the benchmark, which stops
them) with the caller's ``ARBITER_*`` settings dropped: a run measures what it sets up.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx
from baseline_app import find_live_member  # bench/ is sys.path[0] when run as a script
from rich.console import Console

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
HOST = "127.0.0.1"

log = Console(stderr=True)


# A throughput benchmark measures serving, not the per-key limits, which would cap it: 300
# requests/s, and a budget of 150,000 per request that a predictBatch of 10,000 rows with
# explanations (280,000) exceeds (docs/limits.md). They are lifted.
UNLIMITED = json.dumps({"rate_limit": "1000000/second", "query_cost_budget": 10**9})


def arbiter_env(data_dir: Path, omp_threads: str | None,
                database_url: str | None = None, limited: bool = False) -> dict[str, str]:
    """The environment without any ARBITER_* setting but the data dir (and the database URL
    when given: else SQLite), never Redis unless the caller adds it; per-key limits lifted
    unless ``limited`` (the benchmark of the limits themselves)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARBITER_")}
    env["ARBITER_DATA_DIR"] = str(data_dir.resolve())
    if not limited:
        env["ARBITER_REQUEST_LIMITS"] = UNLIMITED
    if database_url:
        env["ARBITER_DATABASE_URL"] = database_url
    if omp_threads:
        env["OMP_NUM_THREADS"] = omp_threads
    return env


def arbiter_exe() -> str:
    """The ``arbiter`` script of the environment the benchmark runs in."""
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
    """A new predictor key's secret."""
    return run_cli(["keys", "create", "--role", "predictor", "--name", "bench"], env).split()[-1]


def prepare(data_dir: Path, env: dict[str, str], tasks: Sequence[str]) -> str:
    """Train ``tasks`` into the environment's data dir and database; a predictor key."""
    for name in tasks:
        log.log(f"training {name} ({env.get('ARBITER_DATABASE_URL', 'SQLite')}) ...")
        run_cli(["train", name], env)
    return create_key(env)


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A started server process, where it answers and where it logs."""

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


def start_baseline(data_dir: Path, task: str, member: str, env: dict[str, str]) -> Server:
    """Start ``baseline_app.py`` serving ``member`` of the task's LIVE release (not waited
    for)."""
    port = free_port()
    cmd = [sys.executable, str(BENCH_DIR / "baseline_app.py"), "--data-dir", str(data_dir),
           "--task", task, "--member", member, "--host", HOST, "--port", str(port)]
    return start_server("baseline", cmd, port, env, data_dir / "bench-baseline.log")


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
    """The last lines of a server's log, for an error message."""
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def task_ready(task: str) -> Callable[[httpx.Response], bool]:
    """Arbiter's ``/readyz`` answers 200 once *one* task is served; we need the database
    and the benchmarked task to be."""

    def ready(response: httpx.Response) -> bool:
        body = response.json()
        return bool(body.get("database") == "ok" and body.get("tasks", {}).get(task) == "serving")

    return ready


def status_ok(response: httpx.Response) -> bool:
    """Ready means HTTP 200."""
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


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def stop_on_signals() -> None:
    """SIGTERM and Ctrl-C unwind the benchmark, so its servers are stopped on the way out."""
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
