"""Review claims under contention: N reviewers on two server processes sharing PostgreSQL.

Trains loan_default into a throwaway PostgreSQL database, sets the LIVE release's
``audit_rate`` to 1 (every prediction is routed, so the queue fills fast), fills the queue
with ``--items`` predictions, starts two ``arbiter serve`` processes and lets ``--reviewers``
reviewers (half on each server, each its own key) claim and submit in a loop for
``--claims`` claims each, after one reviewer alone did as many (the baseline of the same
run). It reports claim latency p50/p95/p99 and max (p50 and p95 also as a ratio to the
lone reviewer's), claims/s, false empties (``claimReview`` answering null while the queue,
by construction, still holds more items than there are reviewers) and double leases (an
item leased to two reviewers).

Run from the repository root:  uv run python bench/claims.py --reviewers 50 --claims 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from inputs import check_task, input_rows  # bench/ is sys.path[0] when run as a script
from postgres import admin_dsn, admin_sql, postgres_database
from rich.console import Console
from rich.table import Table
from servers import (
    arbiter_env,
    arbiter_exe,
    free_port,
    run_cli,
    start_server,
    stop_server,
    task_ready,
    wait_ready,
)
from tables import machine_line, print_wide

log = Console(stderr=True)
TASK = "loan_default"
CLAIM = ('mutation { claimReview(task: "loan_default") { leaseToken item { id } } }')
SUBMIT = ('mutation($t: String!) { submitReview(leaseToken: $t, label: "late") '
          '{ status } }')
BATCH = 'mutation($i: [JSON!]!) { predictBatch(task: "loan_default", inputs: $i) { route } }'
PENDING = '{ reviewItems(task: "loan_default", status: PENDING) { totalCount } }'
ROUTING = ('mutation($v: Int!) { setReleaseRouting(task: "loan_default", version: $v, '
           'policy: {audit_rate: 1.0}) { version } }')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviewers", type=int, default=50)
    parser.add_argument("--claims", type=int, default=20, help="claims per reviewer")
    parser.add_argument("--items", type=int, default=3000, help="items queued first")
    parser.add_argument("--database-url", default="postgresql",
                        help="'postgresql' (the local server) or an admin DSN")
    parser.add_argument("--think", type=float, default=0.0,
                        help="mean seconds a reviewer looks at an item before labelling it "
                        "(each look uniform in 0 to twice that)")
    parser.add_argument("--trained", type=Path, default=None,
                        help="a data dir kept between runs: trained once (its PostgreSQL "
                        "database arbiter_claims_<dir name> is kept too), then each run "
                        "works on a copy of that database")
    parser.add_argument("--omp-threads", default="1")
    parser.add_argument("--startup-timeout", type=float, default=120)
    args = parser.parse_args()
    args.admin_dsn = admin_dsn(parser, args.database_url)
    if args.items < (args.reviewers + 1) * (args.claims + 1):
        parser.error("--items must exceed (reviewers + 1) x (claims + 1): a null is then "
                     "false (the lone reviewer of the baseline claims first)")
    return args


async def graphql(client: aiohttp.ClientSession, url: str, key: str, query: str,
                  **variables: Any) -> dict[str, Any]:
    async with client.post(f"{url}/graphql", json={"query": query, "variables": variables},
                           headers={"Authorization": f"Bearer {key}"}) as response:
        body: dict[str, Any] = await response.json()
    if body.get("errors"):
        raise RuntimeError(f"{query[:40]}...: {body['errors']}")
    return body["data"]


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    leased: Counter[str] = field(default_factory=Counter)
    empties: int = 0


async def reviewer(client: aiohttp.ClientSession, url: str, key: str, claims: int,
                   think: float, tally: Tally) -> None:
    # Reviewers arrive over one mean look, not all at the same instant (with think > 0).
    await asyncio.sleep(random.uniform(0, think))
    for _ in range(claims):
        start = time.perf_counter()
        lease = (await graphql(client, url, key, CLAIM))["claimReview"]
        tally.latencies.append(time.perf_counter() - start)
        if lease is None:
            tally.empties += 1
            continue
        tally.leased[lease["item"]["id"]] += 1
        # Uniform around the mean, so reviewers do not stay in the lockstep of their start.
        await asyncio.sleep(random.uniform(0, 2 * think))
        await graphql(client, url, key, SUBMIT, t=lease["leaseToken"])


async def fill(url: str, key: str, version: int, items: int) -> None:
    rows = input_rows(check_task(TASK, "boosted"), rows=500)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as client:
        await graphql(client, url, key, ROUTING, v=version)
        await asyncio.sleep(3)  # servers re-read releases every 2 s
        for start in range(0, items, len(rows)):
            n = min(len(rows), items - start)
            await graphql(client, url, key, BATCH, i=rows[:n])
            log.log(f"predicted {start + n} rows")
        waiting = await graphql(client, url, key, PENDING)
    queued = waiting["reviewItems"]["totalCount"]
    if queued < items:
        raise SystemExit(f"only {queued} of {items} predictions were routed to review")


@dataclass
class Run:
    reviewers: int
    tally: Tally
    wall: float


async def run(urls: list[str], keys: list[str], args: argparse.Namespace) -> Run:
    """``len(keys)`` reviewers, alternating between the servers, ``args.claims`` each."""
    tally = Tally()
    # Idle connections are dropped before uvicorn drops them (5 s), so a reviewer back from
    # thinking never reuses one the server is closing.
    connector = aiohttp.TCPConnector(limit=len(keys), keepalive_timeout=4)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=600)) as client:
        start = time.perf_counter()
        await asyncio.gather(*(reviewer(client, urls[i % 2], key, args.claims, args.think,
                                        tally)
                               for i, key in enumerate(keys)))
    return Run(len(keys), tally, time.perf_counter() - start)


def render(runs: list[Run], args: argparse.Namespace) -> None:
    """One row per run; latencies also as a ratio to the lone reviewer's (the first run)."""
    table = Table(title=f"claimReview on 2 servers (PostgreSQL), think {args.think} s",
                  caption=machine_line())
    for name in ("reviewers", "claims", "claims/s", "p50 ms", "p95 ms", "p99 ms", "max ms",
                 "p50 x 1", "p95 x 1", "false empties", "double leases"):
        table.add_column(name, justify="right")
    alone = np.asarray(runs[0].tally.latencies) * 1000
    for r in runs:
        ms = np.asarray(r.tally.latencies) * 1000
        doubled = sum(1 for n in r.tally.leased.values() if n > 1)
        table.add_row(str(r.reviewers), str(len(ms)), f"{len(ms) / r.wall:.1f}",
                      *(f"{np.percentile(ms, q):.0f}" for q in (50, 95, 99)),
                      f"{ms.max():.0f}",
                      *(f"{np.percentile(ms, q) / np.percentile(alone, q):.1f}"
                        for q in (50, 95)),
                      str(r.tally.empties), str(doubled))
    print_wide(table, 120)


def keys_for(env: dict[str, str], role: str, n: int) -> list[str]:
    """``n`` new keys of ``role`` (their secrets), made in this process: one ``arbiter keys
    create`` per key costs a CLI start-up each."""
    from app.access.keys import create_key
    from app.db.engine import make_engine, make_sessionmaker

    async def make() -> list[str]:
        engine = make_engine(env["ARBITER_DATABASE_URL"])
        try:
            async with make_sessionmaker(engine)() as session, session.begin():
                return [(await create_key(session, role, f"{role}{i}"))[1] for i in range(n)]
        finally:
            await engine.dispose()

    return asyncio.run(make())


def database(stack: contextlib.ExitStack, args: argparse.Namespace,
             data_dir: Path) -> str:
    """The run's database URL: a fresh one, trained now, or a copy of the kept trained one."""
    if args.trained is None:
        url = stack.enter_context(postgres_database(args.admin_dsn))
        train(arbiter_env(data_dir, args.omp_threads, url))
        return url
    kept = f"arbiter_claims_{args.trained.name}"
    base = args.admin_dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    if not (args.trained / "artifacts").is_dir():
        asyncio.run(admin_sql(args.admin_dsn, f'CREATE DATABASE "{kept}"'))
        train(arbiter_env(args.trained, args.omp_threads, f"{base}/{kept}"))
    url = stack.enter_context(postgres_database(args.admin_dsn, template=kept))
    shutil.copytree(args.trained / "artifacts", data_dir / "artifacts")
    return url


def train(env: dict[str, str]) -> None:
    run_cli(["migrate"], env)
    log.log("training loan_default ...")
    run_cli(["train", TASK], env)


def main() -> int:
    args = parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="arbiter-claims-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, data_dir, ignore_errors=True)
        env = arbiter_env(data_dir, args.omp_threads, database(stack, args, data_dir))
        version = 1  # the first release of a fresh database
        [admin] = keys_for(env, "admin", 1)
        reviewers = keys_for(env, "reviewer", args.reviewers)
        servers = []
        for name in ("a", "b"):
            port = free_port()
            server = start_server(name, [arbiter_exe(), "serve", "--port", str(port)], port,
                                  env, data_dir / f"bench-{name}.log")
            stack.callback(stop_server, server)
            servers.append(server)
        for server in servers:
            wait_ready(server, task_ready(TASK), args.startup_timeout)
        urls = [s.base_url for s in servers]
        asyncio.run(fill(urls[0], admin, version, args.items))
        # The baseline first: one reviewer (the same servers, the same queue), then the crowd.
        runs = [asyncio.run(run(urls, reviewers[:1], args)),
                asyncio.run(run(urls, reviewers, args))]
    render(runs, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
