"""Throughput and p99 of ``predict`` while Redis is hung (SIGSTOP) or dead (SIGKILL), against
the same load just before, on the scaled-out deployment: 2 ``arbiter serve`` + 1
``arbiter worker`` on PostgreSQL and a private ``redis-server``.

For each fault: ``--before`` seconds of load, then the fault for ``--fault`` seconds (load
continues), then Redis back and ``--after`` seconds of recovery. Also sampled during the
fault: ``/readyz`` of both servers every second, and the time from the fault until a
websocket subscriber of predictions is told ``EVENTS_MISSED``. Targets (issue 21):
throughput >= 0.8x, p99 <= 2x, /readyz 200 (degraded), EVENTS_MISSED within 2 s.

Run from the repository root:  uv run python bench/faults.py --fault 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import websockets
from clients import Answer, Row, arbiter_target  # bench/ is sys.path[0] when run as a script
from inputs import check_task, input_rows
from postgres import admin_dsn, postgres_database
from rich.table import Table
from servers import (
    HOST,
    Server,
    arbiter_env,
    arbiter_exe,
    free_port,
    log,
    prepare,
    start_server,
    stop_on_signals,
    stop_server,
    task_ready,
    wait_ready,
)
from tables import machine_line, print_wide

SUBSCRIBE = 'subscription { predictions(task: "loan_default") { id } }'


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8, help="clients (default 8)")
    parser.add_argument("--before", type=float, default=30.0, help="seconds measured before")
    parser.add_argument("--fault", type=float, default=60.0, help="seconds Redis is away")
    parser.add_argument("--after", type=float, default=15.0, help="seconds of recovery")
    parser.add_argument("--database-url", default="postgresql",
                        help="'postgresql' (local) or an admin DSN postgresql://...")
    args = parser.parse_args(argv)
    args.admin_dsn = admin_dsn(parser, args.database_url)
    return args


@dataclass
class Sample:
    """Requests answered (sent at, latency s, ok) while the load ran."""

    answers: list[tuple[float, float, bool]] = field(default_factory=list)

    def window(self, start: float, end: float) -> tuple[float, float, int]:
        """pred/s, p99 ms and failures of the requests sent in [start, end)."""
        inside = [(lat, ok) for at, lat, ok in self.answers if start <= at < end]
        good = [lat for lat, ok in inside if ok]
        p99 = float(np.percentile(good, 99)) * 1000 if good else float("nan")
        return len(good) / (end - start), p99, len(inside) - len(good)


class RedisProcess:
    """A private redis-server the benchmark stops (SIGSTOP), kills and starts again."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed")
        self.binary, self.port = binary, free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", HOST,
                                      "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait(timeout=10)


async def drive(url_cycle: itertools.cycle[str], body: dict[str, object],
                headers: dict[str, str], ok: Callable[[Answer], bool], sample: Sample,
                rows: Sequence[Row], stop: asyncio.Event) -> None:
    """One client: predict, one request after the other, until ``stop``."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        for row in itertools.cycle(rows):
            if stop.is_set():
                return
            sent = time.monotonic()
            try:
                async with http.post(f"{next(url_cycle)}/graphql", headers=headers,
                                     json={**body, "variables": {"input": row}}) as response:
                    good = ok(Answer(response.status, await response.read()))
            except (aiohttp.ClientError, TimeoutError):
                good = False
            sample.answers.append((sent, time.monotonic() - sent, good))


async def events_missed_after(url: str, key: str, fault_at: list[float]) -> float | None:
    """Seconds from the fault (``fault_at[0]`` once set) until the subscription is told."""
    ws_url = url.replace("http://", "ws://") + "/graphql"
    async with websockets.connect(ws_url, subprotocols=["graphql-transport-ws"]) as ws:
        await ws.send(json.dumps({"type": "connection_init",
                                  "payload": {"Authorization": f"Bearer {key}"}}))
        await ws.recv()
        await ws.send(json.dumps({"id": "1", "type": "subscribe",
                                  "payload": {"query": SUBSCRIBE}}))
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == "ping":
                await ws.send(json.dumps({"type": "pong"}))
            errors = (message.get("payload") or {}).get("errors") if message["type"] == "next" \
                else None
            if errors or message["type"] in ("error", "complete"):
                return time.monotonic() - fault_at[0] if fault_at else None


async def readiness(urls: Sequence[str], stop: asyncio.Event) -> Counter[str]:
    """``/readyz`` of every server once a second: "<code> <status>" counts."""
    seen: Counter[str] = Counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        while not stop.is_set():
            for url in urls:
                try:
                    async with http.get(f"{url}/readyz") as response:
                        seen[f"{response.status} {(await response.json())['status']}"] += 1
                except (aiohttp.ClientError, TimeoutError):
                    seen["no answer"] += 1
            await asyncio.sleep(1.0)
    return seen


@dataclass
class Outcome:
    fault: str
    before: tuple[float, float, int]
    during: tuple[float, float, int]
    after: tuple[float, float, int]
    ready: Counter[str]
    missed_s: float | None


async def run_fault(name: str, sig: int, redis: RedisProcess, urls: list[str], key: str,
                    admin: str, rows: Sequence[Row], args: argparse.Namespace) -> Outcome:
    target = arbiter_target(urls[0], key, "loan_default")
    body = target.body(rows[0])
    body.pop("variables")
    sample, stop, ready_stop = Sample(), asyncio.Event(), asyncio.Event()
    cycle = itertools.cycle(urls)
    clients = [asyncio.create_task(drive(cycle, body, target.headers, target.ok, sample, rows,
                                         stop)) for _ in range(args.concurrency)]
    fault_at: list[float] = []
    start = time.monotonic()
    await asyncio.sleep(args.before)
    told = asyncio.create_task(events_missed_after(urls[1], admin, fault_at))
    await asyncio.sleep(2)  # the subscription is open
    log.log(f"{name}: Redis {signal.Signals(sig).name} for {args.fault:.0f} s ...")
    fault_at.append(time.monotonic())
    redis.signal(sig)
    watching = asyncio.create_task(readiness(urls, ready_stop))
    await asyncio.sleep(args.fault)
    ready_stop.set()
    end_fault = time.monotonic()
    if sig == signal.SIGSTOP:
        redis.signal(signal.SIGCONT)
    else:
        redis.start()
    await asyncio.sleep(args.after)
    stop.set()
    await asyncio.gather(*clients)
    missed = None
    with contextlib.suppress(TimeoutError):
        missed = await asyncio.wait_for(told, 1)
    return Outcome(name, sample.window(start + 2, fault_at[0]),
                   sample.window(fault_at[0], end_fault),
                   sample.window(end_fault, end_fault + args.after), await watching, missed)


def render(outcomes: list[Outcome], args: argparse.Namespace) -> Table:
    table = Table(title="predict under a Redis fault: 2 servers + 1 worker, PostgreSQL + Redis",
                  caption=f"{machine_line()}; {args.concurrency} clients; before {args.before:.0f}"
                          f" s, fault {args.fault:.0f} s, after {args.after:.0f} s")
    for column in ("fault", "pred/s before", "pred/s during", "ratio", "p99 ms before",
                   "p99 ms during", "p99 ratio", "fails during", "pred/s after",
                   "/readyz during", "EVENTS_MISSED after s"):
        table.add_column(column, justify="right")
    for o in outcomes:
        table.add_row(o.fault, f"{o.before[0]:.1f}", f"{o.during[0]:.1f}",
                      f"{o.during[0] / o.before[0]:.2f}x", f"{o.before[1]:.0f}",
                      f"{o.during[1]:.0f}", f"{o.during[1] / o.before[1]:.2f}x",
                      str(o.during[2]), f"{o.after[0]:.1f}",
                      ", ".join(f"{k}: {v}" for k, v in o.ready.items()),
                      "-" if o.missed_s is None else f"{o.missed_s:.2f}")
    return table


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    stop_on_signals()
    task = check_task("loan_default", "boosted")
    rows = input_rows(task)
    redis = RedisProcess()
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        url = stack.enter_context(postgres_database(args.admin_dsn))
        redis.start()
        stack.callback(lambda: redis.proc and (redis.proc.send_signal(signal.SIGCONT),
                                               redis.proc.kill()))
        env = {**arbiter_env(data_dir, None, url), "ARBITER_REDIS_URL": redis.url,
               "ARBITER_REDIS_NAMESPACE": "bench-faults"}
        key = prepare(data_dir, env, ["loan_default"])
        admin = subprocess.run([arbiter_exe(), "keys", "create", "--role", "admin", "--name",
                                "watch"], env=env, capture_output=True, text=True,
                               check=True).stdout.split()[-1]
        servers: list[Server] = []
        for n in range(2):
            port = free_port()
            servers.append(start_server(f"serve {n}", [arbiter_exe(), "serve", "--host", HOST,
                                                        "--port", str(port)], port, env,
                                        data_dir / f"serve-{n}.log"))
            stack.callback(stop_server, servers[-1])
        worker = start_server("worker", [arbiter_exe(), "worker"], 0, env,
                              data_dir / "worker.log")
        stack.callback(stop_server, worker)
        for server in servers:
            wait_ready(server, task_ready("loan_default"), 300)
        urls = [s.base_url for s in servers]
        outcomes = [asyncio.run(run_fault(name, sig, redis, urls, key, admin, rows, args))
                    for name, sig in (("SIGSTOP", signal.SIGSTOP), ("SIGKILL", signal.SIGKILL))]
        print_wide(render(outcomes, args), 200)


if __name__ == "__main__":
    main()
