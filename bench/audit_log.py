"""Issue 20, measured: audited transactions with and without the log, `verify` speed, and
the time from commit to sequenced.

1. Writers: ``--writers`` OS processes (default 8) on one PostgreSQL database each commit
   audited transactions for ``--seconds``: ``--work keys``, the real ``create_key`` (one
   INSERT and its ``key.created`` event committing to the row: the smallest audited
   transaction), or ``--work predict``, one prediction (models, SHAP, its row, its event),
   with the log on (a sequencer process runs
   beside them, as a server would) and off (``audit.record`` a no-op). Prints both rates,
   their ratio, the p50/p99 from an event's commit stamp to its leaf, and the most sessions
   seen waiting on a lock while the writers ran (``pg_stat_activity``).
2. Verify: ``--events`` predictions stored with ``predictBatch`` (10,000 a call), then
   ``verify`` timed on SQLite and PostgreSQL: events per second.

Run from the repository root:  uv run python bench/audit_log.py --database-url postgresql
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from inputs import input_rows  # bench/ is sys.path[0] as a script
from postgres import admin_dsn, postgres_database

from app.access.keys import create_key
from app.audit import log as audit
from app.audit.checkpoints import load_signing_key
from app.audit.sequencer import CheckpointPolicy, Sequencer
from app.audit.verify import verify_log
from app.db.engine import make_engine, make_sessionmaker
from app.db.migrate import upgrade
from app.ml.task import load_tasks


def _writer(url: str, data: str, name: str, seconds: float, logged: bool, kind: str,
            done: multiprocessing.Queue) -> None:
    if not logged:
        audit.record = lambda session, entries: None  # type: ignore[assignment]
    done.put(asyncio.run(_predictions(url, data, seconds) if kind == "predict"
                         else _keys(url, name, seconds)))


async def _keys(url: str, name: str, seconds: float) -> int:
    """The smallest audited transaction: one INSERT and its event."""
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        async with sessions() as session, session.begin():
            await create_key(session, "predictor", f"{name}-{n}", actor="bench")
        n += 1
    await engine.dispose()
    return n


async def _predictions(url: str, data: str, seconds: float) -> int:
    """One prediction at a time (models, SHAP, routing, its row and its event)."""
    from app.main import build_services
    from app.predictions.path import predict
    from app.settings import Settings
    from tests.support.inputs import example_inputs

    services, engine = build_services(Settings(data_dir=Path(data), database_url=url))
    await services.registry.load_all()
    task = services.registry.tasks["loan_default"]
    rows = example_inputs(task, 500, seed=os.getpid())
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        await predict(services, None, task.name, rows[n % len(rows)])
        n += 1
    services.close()
    await engine.dispose()
    return n


def _sequencer(url: str, data: str, stop: Any) -> None:
    """What a server does beside its requests: a sequencer round every 0.2 s, until the
    writers are done."""
    async def work() -> None:
        engine = make_engine(url)
        key = load_signing_key(None, Path(data), False)
        seq = Sequencer(make_sessionmaker(engine), key, CheckpointPolicy(), 0.2)
        task = asyncio.create_task(seq.run())
        while not stop.is_set():
            await asyncio.sleep(0.1)
        task.cancel()
        await seq.drain()
        await engine.dispose()
    asyncio.run(work())


async def _lock_waits(url: str, seconds: float) -> int:
    engine = make_engine(url)
    most, end = 0, time.perf_counter() + seconds
    async with engine.connect() as conn:
        while time.perf_counter() < end:
            waiting = (await conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()")).scalar_one()
            most = max(most, waiting)
            await asyncio.sleep(0.05)
    await engine.dispose()
    return most


async def _latencies(url: str) -> list[float]:
    engine = make_engine(url)
    async with engine.connect() as conn:
        rows = (await conn.exec_driver_sql(
            "SELECT e.at, l.sequenced_at FROM audit_leaves l JOIN audit_events e "
            "ON e.id = l.event_id WHERE e.kind IN ('key.created', 'prediction.made')")).all()
    await engine.dispose()
    return sorted((s - a).total_seconds() for a, s in rows)


def writers(url: str, data: str, n: int, seconds: float, logged: bool,
            kind: str) -> tuple[float, int]:
    ctx = multiprocessing.get_context("spawn")
    done: multiprocessing.Queue = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, data, f"w{i}", seconds, logged, kind, done))
             for i in range(n)]
    stop = ctx.Event()
    if logged:
        procs.append(ctx.Process(target=_sequencer, args=(url, data, stop)))
    for p in procs:
        p.start()
    waits = asyncio.run(_lock_waits(url, seconds))
    total = sum(done.get(timeout=seconds + 600) for _ in range(n))
    stop.set()
    for p in procs:
        p.join(timeout=120)
    return total / seconds, waits


def _release(url: str, data: str) -> None:
    from app.ml.training import fit_release
    from app.releases.store import store_release
    from app.settings import Settings

    async def work() -> None:
        settings = Settings(data_dir=Path(data), database_url=url)
        engine = make_engine(url)
        task = load_tasks(settings.tasks_dir)["loan_default"]
        await store_release(make_sessionmaker(engine), settings.artifacts_dir,
                            fit_release(task), "bench")  # the first goes LIVE
        await engine.dispose()
    asyncio.run(work())


def writer_report(dsn: str, data: str, n: int, seconds: float, kind: str) -> None:
    rates = {}
    for logged in (False, True, False, True):  # interleaved: the machine is shared
        with postgres_database(dsn) as url:
            upgrade(url)
            if kind == "predict":
                _release(url, data)
            rate, waits = writers(url, data, n, seconds, logged, kind)
            rates.setdefault(logged, []).append(rate)
            note = ""
            if logged:
                lat = asyncio.run(_latencies(url))
                p50, p99 = statistics.median(lat), lat[int(len(lat) * 0.99) - 1]
                note = f", commit->leaf p50 {p50 * 1000:.0f} ms p99 {p99 * 1000:.0f} ms"
            print(f"{n} writers ({kind}), log {'on ' if logged else 'off'}: {rate:7.1f} tx/s, "
                  f"at most {waits} sessions waiting on a lock{note}", flush=True)
    on, off = statistics.mean(rates[True]), statistics.mean(rates[False])
    print(f"audited transactions with the log / without: {on:.1f} / {off:.1f} = "
          f"{on / off:.2f}x")


def verify_report(url: str, data: str, events: int) -> None:
    from app.main import build_services
    from app.settings import Settings
    settings = Settings(data_dir=Path(data), database_url=url)

    async def work() -> None:
        from app.ml.training import fit_release
        from app.predictions.path import predict_batch
        from app.releases.store import store_release

        services, engine = build_services(settings)
        task = services.registry.tasks["loan_default"]
        # the first release of a task goes LIVE
        await store_release(services.sessions, settings.artifacts_dir, fit_release(task), "bench")
        await services.registry.load_all()
        for i in range(0, events, 10_000):
            await predict_batch(services, None, task.name,
                                input_rows(task, min(10_000, events - i), seed=i))
        key = load_signing_key(None, settings.data_dir, False)
        await Sequencer(services.sessions, key, CheckpointPolicy()).drain(True)
        start, cpu = time.perf_counter(), time.process_time()
        v = await verify_log(services.sessions, key.public)
        took, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert v.ok, v.problems[:5]
        # This process's CPU time too: on a shared machine the wall clock also counts the
        # time others held the cores (PostgreSQL's own work is not in it).
        print(f"verify {url.split(':')[0]}: {v.leaves} events, {v.rows} rows in "
              f"{took:.2f} s = {v.leaves / took:,.0f} events/s ({cpu:.2f} s of this "
              f"process's CPU: {v.leaves / cpu:,.0f} events per CPU second)", flush=True)
        services.close()
        await engine.dispose()
    asyncio.run(work())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default="postgresql")
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--skip", choices=["writers", "verify"])
    parser.add_argument("--work", choices=["keys", "predict"], default="keys",
                        help="the writers' transaction: create_key, or one prediction")
    args = parser.parse_args()
    dsn = admin_dsn(parser, args.database_url)
    assert dsn is not None
    with tempfile.TemporaryDirectory() as data:
        if args.skip != "writers":
            writer_report(dsn, data, args.writers, args.seconds, args.work)
        if args.skip != "verify":
            sqlite = f"sqlite+aiosqlite:///{Path(data) / 'verify.db'}"
            upgrade(sqlite)
            verify_report(sqlite, data, args.events)
            with postgres_database(dsn) as url:
                upgrade(url)
                verify_report(url, data + "/pg", args.events)


if __name__ == "__main__":
    main()
