"""Issue 9's batch target for a file: ``arbiter predict-file`` against the compute floor.

Writes ``--rows`` generated inputs as JSON Lines, runs ``arbiter predict-file`` on them in
a fresh data dir (SQLite, or a fresh PostgreSQL database with ``--database-url``), timed
from process start to exit, and the floor in this process before and after it (the machine
is shared: the ratio is against their mean): every LIVE member's ``predict_proba`` + SHAP
on the same rows as NumPy matrices (``--floor-chunk`` rows at a time, so that a million
rows' SHAP values fit in memory), nothing else. Prints one table.

    uv run python bench/file_report.py                          # 1,000,000 rows, SQLite
    uv run python bench/file_report.py --rows 100000 --database-url postgresql
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from floor import compute_floor, live_members  # bench/ is sys.path[0] when run as a script
from inputs import input_rows
from postgres import admin_dsn, postgres_database
from rich.console import Console
from rich.table import Table
from servers import arbiter_env, arbiter_exe, log, prepare
from tables import machine_line

from app.ml.contract import to_matrix
from app.ml.task import TaskSpec, load_tasks
from app.settings import EXAMPLE_TASKS_DIR


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="loan_default")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the file")
    parser.add_argument("--chunk-rows", type=int, default=5_000, help="predict-file chunk")
    parser.add_argument("--floor-chunk", type=int, default=50_000,
                        help="rows per NumPy batch of the floor")
    parser.add_argument("--database-url", default=None,
                        help="'postgresql' (or an admin DSN) to run on a fresh database")
    args = parser.parse_args()
    args.database_url = admin_dsn(parser, args.database_url)
    return args


def write_inputs(path: Path, rows: list[dict[str, object]]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")


def measure_floor(data_dir: Path, task: TaskSpec, rows: list[dict[str, object]],
                  chunk: int) -> float:
    """Seconds of the LIVE members' ``predict_proba`` + SHAP on every row, ``chunk`` rows
    at a time (one run)."""
    log.log("floor ...")
    members = live_members(data_dir, task)
    floor = 0.0
    for start in range(0, len(rows), chunk):
        floor += compute_floor(members, to_matrix(task, rows[start:start + chunk]), runs=1)
    return floor


def main() -> int:
    args = parse_args()
    task = load_tasks(EXAMPLE_TASKS_DIR)[args.task]
    with tempfile.TemporaryDirectory(prefix="arbiter-file-") as tmp, \
            contextlib.ExitStack() as stack:
        data_dir = Path(tmp) / "data"
        sqlite_env = arbiter_env(data_dir, None)
        prepare(data_dir, sqlite_env, [args.task])  # the floor's members come from here
        env = sqlite_env
        if args.database_url:
            pg_url = stack.enter_context(postgres_database(args.database_url))
            env = arbiter_env(Path(tmp) / "data-pg", None, pg_url)
            prepare(Path(tmp) / "data-pg", env, [args.task])
        log.log(f"writing {args.rows} inputs ...")
        rows = input_rows(task, args.rows, seed=2024)
        source = Path(tmp) / "inputs.jsonl"
        write_inputs(source, rows)
        output = Path(tmp) / "answers.jsonl"
        floor_before = measure_floor(data_dir, task, rows, args.floor_chunk)
        log.log("arbiter predict-file ...")
        started = time.perf_counter()
        subprocess.run([arbiter_exe(), "predict-file", args.task, str(source), "--output",
                        str(output), "--chunk-rows", str(args.chunk_rows)], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        with output.open("rb") as answers:
            answered = sum(1 for _ in answers)
        if answered != args.rows:
            raise SystemExit(f"predict-file answered {answered} rows of {args.rows}")
        floor_after = measure_floor(data_dir, task, rows, args.floor_chunk)
        floor = (floor_before + floor_after) / 2
        table = Table(title=f"predict-file vs floor, {args.rows} rows of {args.task}")
        for column in ("backend", "Arbiter s", "floor s", "ratio", "target", "rows/s"):
            table.add_column(column, justify="right")
        ratio = seconds / floor
        table.add_row("PostgreSQL" if args.database_url else "SQLite", f"{seconds:.1f}",
                      f"{floor:.1f}", f"{ratio:.2f}x",
                      "<= 1.5x " + ("met" if ratio <= 1.5 else "not met"),
                      f"{args.rows / seconds:.0f}")
        console = Console()
        console.print(table)
        console.print(machine_line() + f"; chunks of {args.chunk_rows}; Arbiter = process "
                      "start to exit (loading the models included); floor in chunks of "
                      f"{args.floor_chunk} rows: the mean of one run before it "
                      f"({floor_before:.1f} s) and one after ({floor_after:.1f} s); "
                      f"{np.__name__} {np.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
