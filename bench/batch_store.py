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
from app.predictions import store
from app.predictions.path import predict_batch
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
                        help="cProfile of the last bulk round of the first database, here")
    args = parser.parse_args()
    args.database_url = admin_dsn(parser, args.database_url)
    return args


class StoreClock:
    """Seconds spent in ``commit_group`` (the store stage: one transaction)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.original = store.commit_group

    async def timed(self, *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return await self.original(*args)
        finally:
            self.seconds += time.perf_counter() - started


Runs = dict[str, list[tuple[float, float]]]  # mode -> (call s, store s) of each round


async def rounds(settings: Settings, task: str, rows: list[dict[str, Any]],
                 args: argparse.Namespace, profile: Path | None) -> Runs:
    """Per mode, (seconds of the call, seconds of its store stage) of each round; the log
    verified after."""
    services, engine = build_services(settings)
    clock = StoreClock()
    services.commits.run = functools.partial(clock.timed, *services.commits.run.args)  # type: ignore[attr-defined]
    modes = ["bulk", "generic"] if args.compare else ["bulk"]
    found: Runs = {m: [] for m in modes}
    try:
        await services.registry.load_all()
        await predict_batch(services, None, task, rows[:200], actor="bench")  # warm
        for n in range(args.rounds):
            for mode in modes:
                bulk.GENERIC = mode == "generic"
                keys = [f"{uuid.uuid4().hex}:{i}" for i in range(len(rows))]
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
                found[mode].append((time.perf_counter() - started, clock.seconds))
                if len(answered) != len(rows):
                    raise SystemExit(f"answered {len(answered)} of {len(rows)} rows")
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
        profile = args.profile
        for name, settings in targets.items():
            log.log(f"{args.rounds} x predictBatch of {args.rows} rows ({name}) ...")
            results[name] = asyncio.run(rounds(settings, args.task, rows, args, profile))
            profile = None
        log.log("floor ...")
        floor = compute_floor(live_members(data_dir, task), to_matrix(task, rows))
    table = Table(title=f"predictBatch of {args.rows} rows in process, task {args.task}")
    for column in ("database", "storage", "call s", "store s", "call / floor", "target",
                   "store vs generic"):
        table.add_column(column, justify="right")
    for name, modes in results.items():
        generic = statistics.median(s for _, s in modes.get("generic", [(0.0, 0.0)]))
        for mode, runs in modes.items():
            call = statistics.median(c for c, _ in runs)
            stored = statistics.median(s for _, s in runs)
            ratio = call / floor
            table.add_row(name, mode, f"{call:.2f}", f"{stored:.2f}", f"{ratio:.2f}x",
                          "<= 2.0x " + ("met" if ratio <= 2.0 else "not met"),
                          f"{stored / generic:.2f}x" if generic else "-")
    console = Console()
    console.print(table)
    console.print(f"{machine_line()}; floor {floor:.2f} s (members' predict_proba + SHAP, "
                  f"best of 2); medians of {args.rounds} rounds; audit log verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
