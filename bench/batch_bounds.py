"""Issue 9, target 2: how far below the compute floor's 1.5x the fixed parts of the stack
already are, measured in one run.

The target leaves everything that is not model work 0.5x the floor (members'
``predict_proba`` + SHAP on the rows in one NumPy batch). This script measures, on the same
rows, in this process:

1. the floor (``floor.compute_floor``, as ``perf_report.py`` measures it);
2. Arbiter's ``predict_batch`` in-process (no HTTP), with its own stage times;
3. two lower bounds that no code of ours is in:
   - **store**: the rows that ``predict_batch`` just stored (predictions, review items and
     audit events) inserted again with plain ``sqlite3.executemany`` into a fresh database
     with the same schema, WAL and ``synchronous=NORMAL`` as the server, one transaction:
     no Python per row beyond the driver's;
   - **GraphQL**: a bare Strawberry schema with the benchmark's selection (``id label
     confidence route explanation { baseValue outputValue }``): the request body decoded,
     the ``[JSON!]!`` variable of the rows coerced, a list of ready-made objects completed
     and the answer encoded, synchronously and with orjson (the server is async and
     slower). No validation, models or storage.

If the two bounds together exceed 0.5x the floor, no work on our own code can meet the
target with this stack: only a different one (no GraphQL on the batch path, or a store
that does not keep each prediction and its audit event as rows) can.

Run from the repository root:  uv run python bench/batch_bounds.py [--rows 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import strawberry
from floor import compute_floor, live_members  # bench/ is sys.path[0] as a script
from inputs import input_rows
from rich.console import Console
from rich.table import Table
from servers import arbiter_env, ensure_release, log
from strawberry.scalars import JSON
from tables import machine_line

from app.main import build_services
from app.metrics import PREDICTION_STAGE_DURATION
from app.ml.contract import to_matrix
from app.ml.task import load_tasks
from app.predictions.path import predict_batch
from app.settings import Settings

STAGES = ("validate", "infer", "explain", "route", "store")
QUERY = ("mutation($inputs: [JSON!]!) { predictBatch(inputs: $inputs) "
         "{ id label confidence route explanation { baseValue outputValue } } }")


def best_of(runs: int, fn: Callable[[], Any]) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def stage_sums(task: str) -> dict[str, float]:
    sums: dict[str, float] = {}
    for metric in PREDICTION_STAGE_DURATION.collect():
        for s in metric.samples:
            if s.name.endswith("_sum") and s.labels["task"] == task:
                sums[s.labels["stage"]] = s.value
    return sums


# --- lower bound of the store: the stored rows again, through the bare driver -------------


Tables = dict[str, tuple[list[str], list[tuple[Any, ...]]]]  # table -> (columns, rows)


def stored_rows(db: Path, ids: Sequence[str]) -> Tables:
    """Column names and rows, per table, of what ``predict_batch`` stored for these ids."""
    conn = sqlite3.connect(db)
    conn.execute("CREATE TEMP TABLE wanted (id TEXT PRIMARY KEY)")
    conn.executemany("INSERT INTO wanted VALUES (?)", [(i,) for i in ids])
    where = {"predictions": "id IN (SELECT id FROM wanted)",
             "review_items": "prediction_id IN (SELECT id FROM wanted)",
             "audit_events": "subject_type = 'prediction' "
                             "AND subject_id IN (SELECT id FROM wanted)"}
    out = {}
    for table, condition in where.items():
        columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        rows = conn.execute(f"SELECT {', '.join(columns)} FROM {table} WHERE {condition} "
                            f"ORDER BY rowid").fetchall()
        out[table] = (columns, rows)
    conn.close()
    return out


def renumbered(tables: Tables, first_event: int) -> dict[str, list[tuple[Any, ...]]]:
    """The same rows under new keys (new prediction and review item ids, event ids from
    ``first_event`` with new hashes), to go into a copy of the database holding the old."""
    new_id = {}
    out: dict[str, list[tuple[Any, ...]]] = {}
    for table, key_columns in (("predictions", {"id"}), ("review_items", {"id", "prediction_id"}),
                               ("audit_events", {"id", "subject_id", "hash"})):
        columns, rows = tables[table]
        at = {c: columns.index(c) for c in key_columns}
        changed = []
        for n, row in enumerate(rows):
            values = list(row)
            if table == "predictions":
                new_id[values[at["id"]]] = values[at["id"]] = str(uuid.uuid4())
            elif table == "review_items":
                values[at["id"]] = str(uuid.uuid4())
                values[at["prediction_id"]] = new_id[values[at["prediction_id"]]]
            else:
                values[at["id"]] = first_event + n
                values[at["subject_id"]] = new_id[values[at["subject_id"]]]
                values[at["hash"]] = os.urandom(32).hex()  # unique; the chain is not checked
            changed.append(tuple(values))
        out[table] = changed
    return out


def raw_store_seconds(db: Path, tables: Tables, workdir: Path, runs: int = 3) -> float:
    """Best of ``runs`` one-transaction inserts of the rows, under new keys, into a copy of
    the server's database (its schema, indexes, triggers and size)."""
    best = float("inf")
    for n in range(runs):
        target = workdir / f"raw-{n}.db"
        with sqlite3.connect(db) as source, sqlite3.connect(target) as copy:
            source.backup(copy)
        conn = sqlite3.connect(target, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        (last_event,) = conn.execute("SELECT max(id) FROM audit_events").fetchone()
        rows = renumbered(tables, last_event + 1)
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        for table in ("predictions", "review_items", "audit_events"):
            columns = tables[table][0]
            if rows[table]:
                conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                                 f"({', '.join('?' * len(columns))})", rows[table])
        conn.execute("COMMIT")
        best = min(best, time.perf_counter() - started)
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
    return best


# --- lower bound of the GraphQL layer: a bare schema with the same selection -------------


@strawberry.type
class Explanation:
    base_value: float
    output_value: float


@strawberry.type
class Prediction:
    id: str
    label: str
    confidence: float
    route: str
    explanation: Explanation


def bare_schema(answers: list[Prediction]) -> strawberry.Schema:
    @strawberry.type
    class Query:
        ok: bool = True

    @strawberry.type
    class Mutation:
        @strawberry.mutation
        def predict_batch(self, inputs: list[JSON]) -> list[Prediction]:
            if len(inputs) != len(answers):
                raise ValueError("one answer per input")
            return answers

    return strawberry.Schema(query=Query, mutation=Mutation)


def graphql_seconds(rows: list[dict[str, Any]], answers: list[Prediction], runs: int = 3
                    ) -> float:
    schema = bare_schema(answers)
    body = orjson.dumps({"query": QUERY, "variables": {"inputs": rows}})

    def request() -> None:  # orjson, the fastest JSON codec we have, for a bound
        sent = orjson.loads(body)
        result = schema.execute_sync(sent["query"], variable_values=sent["variables"])
        if result.errors:
            raise SystemExit(f"bare schema failed: {result.errors}")
        orjson.dumps({"data": result.data})

    return best_of(runs, request)


# --- the run --------------------------------------------------------------------------------


async def arbiter_batch(settings: Settings, task_name: str, rows: list[dict[str, Any]],
                        runs: int) -> tuple[float, dict[str, float], list[Any]]:
    """Best total of ``runs`` in-process batches (fresh rows each), its stage times, and
    the predictions of that run."""
    services, engine = build_services(settings)
    try:
        await services.registry.load_all()
        best: tuple[float, dict[str, float], list[Any]] = (float("inf"), {}, [])
        for n in range(runs):
            batch = rows[n * len(rows) // runs:(n + 1) * len(rows) // runs]
            before = stage_sums(task_name)
            started = time.perf_counter()
            stored = await predict_batch(services, None, task_name, batch, actor="bench")
            total = time.perf_counter() - started
            after = stage_sums(task_name)
            log.log(f"predict_batch {len(batch)} rows: {total:.2f} s")
            if total < best[0]:
                best = (total, {k: after[k] - before.get(k, 0.0) for k in after}, stored)
        return best
    finally:
        services.close()
        await engine.dispose()


def render(rows: int, floor: float, arbiter: float, stages: dict[str, float], store: float,
           graphql: float) -> Table:
    table = Table(title=f"predictBatch of {rows:,} rows: the floor, Arbiter and the stack's "
                        f"lower bounds (SQLite)", caption=machine_line())
    for name, justify in (("measure", "left"), ("seconds", "right"), ("x floor", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]

    def line(label: str, seconds: float, style: str | None = None) -> None:
        table.add_row(label, f"{seconds:.2f}", f"{seconds / floor:.2f}x", style=style)

    line("floor: predict_proba + SHAP, one NumPy batch", floor)
    line("target 2: 1.5x the floor", 1.5 * floor)
    line("  left for all but the model work", 0.5 * floor)
    line("Arbiter predict_batch, in-process", arbiter, "bold")
    for stage in STAGES:
        line(f"  {stage}", stages.get(stage, 0.0))
    line("bound: bare sqlite3 insert of the stored rows", store)
    line("bound: bare Strawberry, same selection", graphql)
    line("  the two bounds together", store + graphql, "bold")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="loan_default")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=2, help="in-process batches (best kept)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="kept, trained only without a LIVE release (default: temporary)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="arbiter-bounds-") as tmp:
        data_dir = (args.data_dir or Path(tmp) / "data").resolve()
        env = arbiter_env(data_dir, None)
        ensure_release(data_dir, args.task, "boosted", env)
        for key in [k for k in os.environ if k.startswith("ARBITER_")]:
            del os.environ[key]
        settings = Settings(data_dir=data_dir)
        task = load_tasks(settings.tasks_dir)[args.task]
        rows = input_rows(task, args.rows * args.runs, seed=2026)
        floor = compute_floor(live_members(data_dir, task), to_matrix(task, rows[:args.rows]))
        log.log(f"floor {floor:.2f} s")
        total, stages, stored = asyncio.run(arbiter_batch(settings, args.task, rows, args.runs))
        tables = stored_rows(data_dir / "arbiter.db", [p.id for p in stored])
        store = raw_store_seconds(data_dir / "arbiter.db", tables, Path(tmp))
        answers = [Prediction(id=p.id, label=p.label, confidence=p.confidence, route=p.route,
                              explanation=Explanation(base_value=p.explanation["baseValue"],
                                                      output_value=p.explanation["outputValue"]))
                   for p in stored]
        graphql = graphql_seconds(rows[:len(stored)], answers)
        Console().print(render(len(stored), floor, total, stages, store, graphql))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
