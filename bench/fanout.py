"""Subscription fan-out: N subscribers on two server processes, predictions through one.

Trains the task in a fresh data dir, starts two ``arbiter serve`` processes sharing one
database and one Redis (a unique namespace), opens N graphql-transport-ws subscribers
(``predictions(task)``, half on each server), then sends predictions through the first
server and measures, per delivered event, the delay from the prediction's ``createdAt`` (set
just before it is stored) to its arrival at the subscriber, plus events/s delivered and the
prediction throughput compared with the same run without subscribers.

Run from the repository root:  uv run python bench/fanout.py --subscribers 100,1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import websockets
from inputs import check_task, input_rows  # bench/ is sys.path[0] when run as a script
from predict_throughput import parse_levels
from rich.console import Console
from rich.table import Table
from servers import (
    arbiter_env,
    arbiter_exe,
    create_key,
    ensure_release,
    free_port,
    run_cli,
    start_server,
    stop_server,
    task_ready,
    wait_ready,
)
from tables import machine_line
from websockets.typing import Subprotocol

log = Console(stderr=True)
PREDICT = ("mutation($input: JSON!) {{ predict(task: {task}, input: $input) "
           "{{ id }} }}")
SUBSCRIBE = "subscription {{ predictions(task: {task}) {{ id createdAt }} }}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="loan_default")
    parser.add_argument("--subscribers", type=parse_levels, default=[100, 1000],
                        help="comma-separated subscriber counts (default 100,1000)")
    parser.add_argument("--predictions", type=int, default=200, help="per level")
    parser.add_argument("--concurrency", type=int, default=4, help="prediction requests")
    parser.add_argument("--redis-url", default=os.environ.get(
        "ARBITER_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--omp-threads", default="1")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    return parser.parse_args()


class Subscriber:
    """One websocket, one subscription; records (prediction id, arrival time)."""

    def __init__(self, url: str, key: str, task: str) -> None:
        self.url, self.key, self.task = url, key, task
        self.arrivals: list[tuple[str, float, str]] = []
        self.task_handle: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self.ws = await websockets.connect(
            self.url, subprotocols=[Subprotocol("graphql-transport-ws")], max_size=2**22,
            ping_interval=None)
        await self.ws.send(json.dumps({"type": "connection_init",
                                       "payload": {"Authorization": f"Bearer {self.key}"}}))
        ack = json.loads(await self.ws.recv())
        if ack.get("type") != "connection_ack":
            raise SystemExit(f"subscriber refused: {ack}")
        await self.ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {
            "query": SUBSCRIBE.format(task=json.dumps(self.task))}}))
        self.task_handle = asyncio.create_task(self.read())

    async def read(self) -> None:
        async for raw in self.ws:
            arrived = time.time()
            message = json.loads(raw)
            if message["type"] == "ping":
                await self.ws.send('{"type": "pong"}')
            elif message["type"] == "next":
                if "errors" in message["payload"]:
                    raise SystemExit(f"subscription error: {message['payload']['errors']}")
                p = message["payload"]["data"]["predictions"]
                self.arrivals.append((p["id"], arrived, p["createdAt"]))

    async def close(self) -> None:
        if self.task_handle is not None:
            self.task_handle.cancel()
        await self.ws.close()


async def predict_many(url: str, key: str, task: str, rows: list[dict[str, Any]], n: int,
                       concurrency: int) -> tuple[list[str], float]:
    """``n`` predictions through ``url``; their ids and the wall time taken."""
    ids: list[str] = []
    query = PREDICT.format(task=json.dumps(task))
    headers = {"Authorization": f"Bearer {key}"}
    counter = iter(range(n))

    async def worker(client: aiohttp.ClientSession) -> None:
        for i in counter:
            async with client.post(f"{url}/graphql", headers=headers, json={
                    "query": query, "variables": {"input": rows[i % len(rows)]}}) as r:
                status, body = r.status, await r.json()
            if status != 200 or body.get("errors"):
                raise SystemExit(f"prediction failed: {status} {body}")
            ids.append(body["data"]["predict"]["id"])

    started = time.perf_counter()
    # aiohttp, as perf_report's client: httpx's own CPU per request took a core here.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                     timeout=aiohttp.ClientTimeout(total=120)) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return ids, time.perf_counter() - started


async def until_all_receive(subs: list[Subscriber], probe: Any) -> None:
    """Subscriptions start asynchronously: predict probes until every subscriber has one."""
    for _ in range(600):
        await probe()
        await asyncio.sleep(0.5)
        if all(s.arrivals for s in subs):
            return
    raise SystemExit("not every subscriber received the probe predictions")


async def level(n: int, urls: list[str], keys: dict[str, str], args: argparse.Namespace,
                rows: list[dict[str, Any]]) -> dict[str, float]:
    ws_urls = [u.replace("http://", "ws://") + "/graphql" for u in urls]
    subs = [Subscriber(ws_urls[i % 2], keys["admin"], args.task) for i in range(n)]
    for start in range(0, n, 50):  # connect in waves: 1000 handshakes at once time out
        await asyncio.gather(*(s.open() for s in subs[start:start + 50]))
    log.log(f"{n} subscribers connected")
    if subs:
        await until_all_receive(subs, lambda: predict_many(
            urls[0], keys["predictor"], args.task, rows, 1, 1))
    for s in subs:
        s.arrivals.clear()
    ids, seconds = await predict_many(urls[0], keys["predictor"], args.task, rows,
                                      args.predictions, args.concurrency)
    wanted = set(ids)
    deadline = time.monotonic() + 120
    while subs and any(len({a[0] for a in s.arrivals} & wanted) < len(wanted) for s in subs):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    delays = [(arrived - datetime.fromisoformat(created).timestamp()) * 1000
              for s in subs for (pid, arrived, created) in s.arrivals if pid in wanted]
    expected = len(wanted) * n
    first = min((a[1] for s in subs for a in s.arrivals), default=0.0)
    last = max((a[1] for s in subs for a in s.arrivals), default=0.0)
    for s in subs:
        await s.close()
    return {"subscribers": n, "pred_s": len(ids) / seconds, "delivered": len(delays),
            "expected": expected,
            "p50": float(np.percentile(delays, 50)) if delays else float("nan"),
            "p99": float(np.percentile(delays, 99)) if delays else float("nan"),
            "events_s": len(delays) / (last - first) if last > first else float("nan")}


def render(results: list[dict[str, float]], args: argparse.Namespace) -> None:
    base = results[0]["pred_s"]
    table = Table(title=f"Subscription fan-out, {args.task}: {args.predictions} predictions "
                  f"through server A at concurrency {args.concurrency}; subscribers split "
                  f"over servers A and B (Redis)")
    for col in ("subscribers", "pred/s", "vs 0 subs", "delivered", "p50 ms", "p99 ms",
                "events/s"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in results:
        table.add_row(f"{r['subscribers']:.0f}", f"{r['pred_s']:.1f}",
                      f"{r['pred_s'] / base:.2f}x", f"{r['delivered']:.0f}/{r['expected']:.0f}",
                      f"{r['p50']:.1f}", f"{r['p99']:.1f}", f"{r['events_s']:.0f}")
    Console().print(table)
    Console().print(machine_line())


async def run_levels(urls: list[str], keys: dict[str, str], args: argparse.Namespace,
                     rows: list[dict[str, Any]]) -> list[dict[str, float]]:
    results = []
    for n in [0, *args.subscribers]:
        log.log(f"level: {n} subscribers")
        results.append(await level(n, urls, keys, args, rows))
    return results


def main() -> int:
    args = parse_args()
    task = check_task(args.task, "boosted")
    data_dir = Path(tempfile.mkdtemp(prefix="arbiter-fanout-"))
    env = arbiter_env(data_dir, args.omp_threads)
    env |= {"ARBITER_REDIS_URL": args.redis_url,
            "ARBITER_REDIS_NAMESPACE": f"arbiter-bench-{uuid.uuid4().hex[:8]}",
            "ARBITER_SUBSCRIPTION_BUFFER": "4096", "ARBITER_WS_MAX_SUBSCRIPTIONS": "4",
            # every subscriber uses the one admin key: 1,000 starts in seconds are not abuse
            "ARBITER_ROLE_LIMITS": json.dumps({"admin": {"rate_limit": "100000/second"}})}
    run_cli(["migrate"], env)
    ensure_release(data_dir, args.task, "boosted", env)
    keys = {"predictor": create_key(env),
            "admin": run_cli(["keys", "create", "--role", "admin", "--name", "bench"],
                             env).split()[-1]}
    rows = input_rows(task)
    servers = []
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, data_dir, ignore_errors=True)
        for name in ("a", "b"):
            port = free_port()
            server = start_server(name, [arbiter_exe(), "serve", "--port", str(port)], port,
                                  env, data_dir / f"bench-{name}.log")
            stack.callback(stop_server, server)
            servers.append(server)
        worker = start_server("worker", [arbiter_exe(), "worker"], 0, env,
                              data_dir / "bench-worker.log")
        stack.callback(stop_server, worker)
        for server in servers:
            wait_ready(server, task_ready(args.task), args.startup_timeout)
        results = asyncio.run(run_levels([s.base_url for s in servers], keys, args, rows))
    render(results, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
