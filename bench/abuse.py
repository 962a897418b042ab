"""Another key's ``{ me { role } }`` while one predictor key abuses the server, against the
same probe alone, interleaved in rounds on one ``arbiter serve``.

The abuse (issue 21): ``--abusers`` concurrent loops of one predictor key, alternating the
refused query (30 aliases of ``predictions(first: 500)`` with explanations: cost 960,030,
over the default budget of 150,000, so nothing of it runs) and a near-limit query that is
allowed (``--allowed-aliases`` such aliases: 4 cost 128,004). The probe: one client of a
reviewer key sending ``{ me { role } }`` every ``--interval`` seconds. Each round measures
the probe alone for ``--seconds``, then under abuse for ``--seconds``; the table gives
p50/p99 of the probe in each state and the ratio of abuse to alone. Target: p99 under
abuse <= 100 ms.

Run from the repository root:  uv run python bench/abuse.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from inputs import check_task, input_rows  # bench/ is sys.path[0] when run as a script
from postgres import admin_dsn, postgres_database
from rich.table import Table
from servers import (
    arbiter_env,
    arbiter_exe,
    create_key,
    free_port,
    log,
    run_cli,
    start_server,
    stop_on_signals,
    stop_server,
    task_ready,
    wait_ready,
)
from tables import machine_line, omp_setting, print_wide

TASK = "loan_default"
PROBE = "{ me { role } }"
PAGE = ("p{i}: predictions(first: 500) {{ edges {{ node {{ id explanation {{ baseValue "
        "contributions {{ feature value shap }} }} }} }} }}")
BATCH = 'mutation($i: [JSON!]!) { predictBatch(task: "loan_default", inputs: $i) { id } }'


def aliased(n: int) -> str:
    return "{ " + " ".join(PAGE.format(i=i) for i in range(n)) + " }"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alone/abuse pairs")
    parser.add_argument("--seconds", type=float, default=10.0, help="of each state per round")
    parser.add_argument("--interval", type=float, default=0.02,
                        help="seconds between probes (default 0.02: 50/s)")
    parser.add_argument("--abusers", type=int, default=4, help="concurrent abusive loops")
    parser.add_argument("--refused-aliases", type=int, default=30)
    parser.add_argument("--allowed-aliases", type=int, default=4)
    parser.add_argument("--stored", type=int, default=2000, help="predictions stored first")
    parser.add_argument("--database-url", default=None,
                        help="unset: SQLite; 'postgresql' (the local server) or an admin DSN")
    parser.add_argument("--omp-threads", default="1")
    parser.add_argument("--startup-timeout", type=float, default=120)
    args = parser.parse_args()
    args.admin_dsn = admin_dsn(parser, args.database_url)
    return args


async def post(client: aiohttp.ClientSession, url: str, key: str, query: str,
               **variables: Any) -> dict[str, Any]:
    async with client.post(f"{url}/graphql", json={"query": query, "variables": variables},
                           headers={"Authorization": f"Bearer {key}"}) as response:
        body: dict[str, Any] = await response.json(content_type=None)
    return body


def error_code(body: dict[str, Any]) -> str | None:
    errors = body.get("errors") or []
    return errors[0].get("extensions", {}).get("code", "ERROR") if errors else None


@dataclass
class Tally:
    probe: dict[str, list[float]] = field(default_factory=lambda: {"alone": [], "abuse": []})
    refused: int = 0  # QUERY_TOO_COSTLY
    refused_ms: list[float] = field(default_factory=list)
    allowed_ms: list[float] = field(default_factory=list)
    allowed_bytes: int = 0
    other: dict[str, int] = field(default_factory=dict)  # any other answer, by code


async def probe(client: aiohttp.ClientSession, url: str, key: str, until: float,
                interval: float, into: list[float]) -> None:
    """One probe every ``interval`` seconds (or as soon as the last one answered), so the
    probe's own key stays far below its rate limit (300/s by default)."""
    while (now := time.monotonic()) < until:
        start = time.perf_counter()
        body = await post(client, url, key, PROBE)
        into.append(time.perf_counter() - start)
        if (body.get("data") or {}).get("me") is None:
            raise SystemExit(f"the probe failed: {body}")
        await asyncio.sleep(max(0.0, now + interval - time.monotonic()))


async def abuse(client: aiohttp.ClientSession, url: str, key: str, until: float,
                refused: str, allowed: str, tally: Tally) -> None:
    while True:
        for text in (refused, allowed):
            if time.monotonic() >= until:
                return
            start = time.perf_counter()
            async with client.post(f"{url}/graphql", json={"query": text},
                                   headers={"Authorization": f"Bearer {key}"}) as response:
                raw = await response.read()
            took = time.perf_counter() - start
            code = error_code(json.loads(raw))
            if text is refused and code == "QUERY_TOO_COSTLY":
                tally.refused += 1
                tally.refused_ms.append(took)
            elif text is allowed and code is None:
                tally.allowed_ms.append(took)
                tally.allowed_bytes += len(raw)
            else:
                label = code or "unexpected success of the refused query"
                tally.other[label] = tally.other.get(label, 0) + 1


async def measure(url: str, predictor: str, reviewer: str, args: argparse.Namespace) -> Tally:
    tally = Tally()
    refused, allowed = aliased(args.refused_aliases), aliased(args.allowed_aliases)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as client:
        await post(client, url, reviewer, PROBE)  # warm the key cache and the connection
        for n in range(args.rounds):
            log.log(f"round {n + 1}/{args.rounds}: alone, then under abuse")
            await probe(client, url, reviewer, time.monotonic() + args.seconds,
                        args.interval, tally.probe["alone"])
            until = time.monotonic() + args.seconds
            abusers = [abuse(client, url, predictor, until, refused, allowed, tally)
                       for _ in range(args.abusers)]
            await asyncio.gather(probe(client, url, reviewer, until, args.interval,
                                       tally.probe["abuse"]), *abusers)
            await asyncio.sleep(1)  # the last abusive answers drain before the next "alone"
    return tally


async def fill(url: str, key: str, stored: int) -> None:
    rows = input_rows(check_task(TASK, "boosted"), rows=500)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as client:
        for start in range(0, stored, len(rows)):
            n = min(len(rows), stored - start)
            body = await post(client, url, key, BATCH, i=rows[:n])
            if body.get("errors"):
                raise SystemExit(f"predictBatch failed: {body['errors']}")
    log.log(f"stored {stored} predictions")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q)) if values else float("nan")


def render(tally: Tally, args: argparse.Namespace, backend: str) -> None:
    table = Table(title=f"{PROBE} of another key, alone vs under abuse ({args.abusers} loops "
                  f"of one predictor key), 1 server, {backend}",
                  caption=f"{machine_line()}; OMP_NUM_THREADS={omp_setting(args.omp_threads)}")
    for name in ("state", "probes", "p50 ms", "p99 ms", "max ms", "p50 x alone",
                 "p99 x alone", "p99 <= 100 ms"):
        table.add_column(name, justify="right")
    alone = tally.probe["alone"]
    for state, values in tally.probe.items():
        p99 = pct(values, 99)
        table.add_row(state, str(len(values)), f"{pct(values, 50):.1f}", f"{p99:.1f}",
                      f"{max(values) * 1000:.1f}",
                      f"{pct(values, 50) / pct(alone, 50):.2f}", f"{p99 / pct(alone, 99):.2f}",
                      "yes" if p99 <= 100 else "NO")
    print_wide(table, 110)
    abuse_table = Table(title="the abusive key's answers")
    for name in ("query", "cost", "answers", "p50 ms", "p99 ms", "MB answered"):
        abuse_table.add_column(name, justify="right")
    abuse_table.add_row(f"{args.refused_aliases} aliases (refused)",
                        f"{args.refused_aliases * 32_001:,}",
                        str(tally.refused), f"{pct(tally.refused_ms, 50):.1f}",
                        f"{pct(tally.refused_ms, 99):.1f}", "-")
    abuse_table.add_row(f"{args.allowed_aliases} aliases (allowed)",
                        f"{args.allowed_aliases * 32_001:,}", str(len(tally.allowed_ms)),
                        f"{pct(tally.allowed_ms, 50):.1f}", f"{pct(tally.allowed_ms, 99):.1f}",
                        f"{tally.allowed_bytes / 1e6:.1f}")
    print_wide(abuse_table, 110)
    if tally.other:
        log.log(f"other answers to the abusive key: {tally.other}")


def main() -> int:
    args = parse_args()
    stop_on_signals()
    data_dir = Path(tempfile.mkdtemp(prefix="arbiter-abuse-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, data_dir, ignore_errors=True)
        url = (stack.enter_context(postgres_database(args.admin_dsn)) if args.admin_dsn
               else None)
        env = arbiter_env(data_dir, args.omp_threads, url, limited=True)
        run_cli(["migrate"], env)
        log.log(f"training {TASK} ...")
        run_cli(["train", TASK], env)
        predictor = create_key(env)
        reviewer = run_cli(["keys", "create", "--role", "reviewer", "--name", "probe"],
                           env).split()[-1]
        port = free_port()
        server = start_server("a", [arbiter_exe(), "serve", "--port", str(port)], port, env,
                              data_dir / "bench-a.log")
        stack.callback(stop_server, server)
        wait_ready(server, task_ready(TASK), args.startup_timeout)
        asyncio.run(fill(server.base_url, predictor, args.stored))
        tally = asyncio.run(measure(server.base_url, predictor, reviewer, args))
    render(tally, args, "PostgreSQL" if url else "SQLite")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
