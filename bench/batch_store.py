"""Where a ``predictBatch`` spends its time, in process: the whole call against the compute
floor, its store stage alone, and (``--profile``) a cProfile of the call.

Trains the task into a fresh data dir (SQLite, and a fresh PostgreSQL database with
``--database-url``), builds the app's services in this process (no HTTP, no JSON), and runs
``--rounds`` batches of ``--rows`` rows per database, each stored under idempotency keys,
then sequences and verifies the audit log (``arbiter audit verify``'s check). Storage runs
through ``app.db.bulk``; ``--compare`` also runs each round through the generic
SQLAlchemy ``INSERT`` of every table (the row-by-row path before bulk storage), interleaved,
and prints the store stage's before/after ratio.

    OMP_NUM_THREADS=1 uv run python bench/batch_store.py --database-url postgresql --compare
    OMP_NUM_THREADS=1 uv run python bench/batch_store.py --rows 10000 --profile /tmp/batch.prof
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from floor import compute_floor, live_members  # bench/ is sys.path[0] when run as a script
from inputs import input_rows
from postgres import admin_dsn, postgres_database
from rich.console import Console
from rich.table import Table
from servers import arbiter_env, log, prepare
from tables import machine_line

from app.db import bulk
from app.main import build_services
from app.ml.contract import to_matrix
from app.ml.task import load_tasks
from app.predictions import path, store
from app.predictions.path import predict_batch
from app.predictions.services import Services
from app.settings import EXAMPLE_TASKS_DIR, Settings
from tests.support.tampering import sequenced_and_verified


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="loan_default")
    parser.add_argument("--rows", type=int, default=10_000, help="rows per predictBatch")
    parser.add_argument("--rounds", type=int, default=3, help="batches per database and mode")
    parser.add_argument("--database-url", default=None,
                        help="'postgresql' (or an admin DSN) to also run on a fresh database")
    parser.add_argument("--compare", action="store_true",
                        help="also store through the generic INSERTs (before), interleaved")
    parser.add_argument("--profile", type=Path, default=None,
                        help="cProfile of the last bulk round of each database, here (a suffix "
                        "per database after the first: FILE.PostgreSQL)")
    args = parser.parse_args()
    args.database_url = admin_dsn(parser, args.database_url)
    return args


class StageClock:
    """Seconds spent in an async function of the path (its calls summed), e.g.
    ``commit_group`` (the store stage: one transaction)."""

    def __init__(self, original: Callable[..., Awaitable[Any]]) -> None:
        self.seconds = 0.0
        self.original = original

    async def timed(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await self.original(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started


STAGES = ("lookup", "models", "store")  # the stages timed apart, besides the whole call
Runs = dict[str, list[dict[str, float]]]  # mode -> per round: call, floor, each stage (s)


@contextlib.contextmanager
def stage_clocks(services: Services) -> Iterator[dict[str, StageClock]]:
    """Clocks on the path's idempotency lookup, its model stage and its store stage."""
    clocks = {"lookup": StageClock(path.stored_answers), "models": StageClock(path.infer),
              "store": StageClock(store.commit_group)}
    run = services.commits.run
    path.stored_answers = clocks["lookup"].timed  # type: ignore[assignment]
    path.infer = clocks["models"].timed  # type: ignore[assignment]
    services.commits.run = functools.partial(clocks["store"].timed, *run.args)  # type: ignore[attr-defined]
    try:
        yield clocks
    finally:
        path.stored_answers, path.infer = clocks["lookup"].original, clocks["models"].original  # type: ignore[assignment]
        services.commits.run = run


async def rounds(settings: Settings, task: str, rows: list[dict[str, Any]],
                 args: argparse.Namespace, profile: Path | None, floor: Callable[[], float]
                 ) -> Runs:
    """Per mode and round, the seconds of the call, of each stage, and of the compute floor
    measured right after it (interleaved: the machine is shared); the log verified after."""
    services, engine = build_services(settings)
    modes = ["bulk", "generic"] if args.compare else ["bulk"]
    found: Runs = {m: [] for m in modes}
    try:
        await services.registry.load_all()
        await predict_batch(services, None, task, rows[:200], actor="bench")  # warm
        with stage_clocks(services) as clocks:
            for n in range(args.rounds):
                for mode in modes:
                    bulk.GENERIC = mode == "generic"
                    keys = [f"{uuid.uuid4().hex}:{i}" for i in range(len(rows))]
                    for clock in clocks.values():
                        clock.seconds = 0.0
                    profiler = cProfile.Profile() if (profile and mode == "bulk"
                                                      and n == args.rounds - 1) else None
                    started = time.perf_counter()
                    if profiler:
                        profiler.enable()
                    answered = await predict_batch(services, None, task, rows, actor="bench",
                                                   idempotency_keys=keys)
                    if profiler:
                        profiler.disable()
                        profiler.dump_stats(str(profile))
                    call = time.perf_counter() - started
                    if len(answered) != len(rows):
                        raise SystemExit(f"answered {len(answered)} of {len(rows)} rows")
                    found[mode].append({"call": call, "floor": floor(),
                                        **{k: c.seconds for k, c in clocks.items()}})
        bulk.GENERIC = False
        log.log("sequencing and verifying the audit log ...")
        checked = await sequenced_and_verified(services.sessions, settings)
        if not checked.ok:
            raise SystemExit(f"audit verify failed: {checked}")
    finally:
        services.close()
        await engine.dispose()
    return found


def main() -> int:
    args = parse_args()
    task = load_tasks(EXAMPLE_TASKS_DIR)[args.task]
    rows = input_rows(task, rows=args.rows, seed=7)
    results: dict[str, Runs] = {}
    with tempfile.TemporaryDirectory(prefix="arbiter-batch-") as tmp, \
            contextlib.ExitStack() as stack:
        data_dir = Path(tmp) / "data"
        prepare(data_dir, arbiter_env(data_dir, None), [args.task])
        targets = {"SQLite": Settings(data_dir=data_dir)}
        if args.database_url:
            pg_url = stack.enter_context(postgres_database(args.database_url))
            pg_dir = Path(tmp) / "data-pg"
            prepare(pg_dir, arbiter_env(pg_dir, None, pg_url), [args.task])
            targets["PostgreSQL"] = Settings(data_dir=pg_dir, database_url=pg_url)
        members, X = live_members(data_dir, task), to_matrix(task, rows)
        for n, (name, settings) in enumerate(targets.items()):
            log.log(f"{args.rounds} x predictBatch of {args.rows} rows ({name}) ...")
            profile = args.profile and (args.profile if n == 0 else
                                        args.profile.with_name(f"{args.profile.name}.{name}"))
            results[name] = asyncio.run(rounds(settings, args.task, rows, args, profile,
                                               lambda: compute_floor(members, X, runs=1)))
    print_table(args, results)
    return 0


def print_table(args: argparse.Namespace, results: dict[str, Runs]) -> None:
    table = Table(title=f"predictBatch of {args.rows} rows in process, task {args.task}")
    for column in ("database", "storage", "call s", *(f"{s} s" for s in STAGES), "floor s",
                   "call / floor", "target", "store vs generic"):
        table.add_column(column, justify="right")
    for name, modes in results.items():
        generic = statistics.median(r["store"] for r in modes.get("generic", [{"store": 0.0}]))
        for mode, runs in modes.items():
            def median(key: str, runs: list[dict[str, float]] = runs) -> float:
                return statistics.median(r[key] for r in runs)
            ratio = statistics.median(r["call"] / r["floor"] for r in runs)
            table.add_row(name, mode, f"{median('call'):.2f}",
                          *(f"{median(s):.2f}" for s in STAGES), f"{median('floor'):.2f}",
                          f"{ratio:.2f}x", "<= 2.0x " + ("met" if ratio <= 2.0 else "not met"),
                          f"{median('store') / generic:.2f}x" if generic else "-")
    console = Console(width=150)
    console.print(table)
    console.print(f"{machine_line()}; floor: members' predict_proba + SHAP, measured after "
                  f"each round; call / floor: median of the rounds' ratios; medians of "
                  f"{args.rounds} rounds; audit log verified")


if __name__ == "__main__":
    sys.exit(main())
