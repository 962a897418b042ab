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
import collections
import multiprocessing
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Round:
    """One round of writers: their rate, the CPU each of their transactions cost (their
    processes, the database's backends, the sequencer's process), the waits sampled."""

    rate: float
    writer_us: float  # CPU of the writer processes per transaction
    backend_us: float | None  # CPU of the database's backends (local server only)
    sequencer_us: float  # CPU of the sequencer's process per transaction
    lock_waits: int  # the most sessions seen waiting on a lock at once
    seen: collections.Counter[str]


def _writer(url: str, data: str, name: str, seconds: float, logged: bool, kind: str,
            start: Any, finish: Any, done: multiprocessing.Queue) -> None:
    if not logged:
        audit.record = lambda session, entries: None  # type: ignore[assignment]
    asyncio.run(_predictions(url, data, seconds, start, finish, done) if kind == "predict"
                else _keys(url, name, seconds, start, finish, done))


async def _keys(url: str, name: str, seconds: float, start: Any, finish: Any,
                done: multiprocessing.Queue) -> None:
    """The smallest audited transaction: one INSERT and its event."""
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    async with sessions() as session, session.begin():  # connected, statements prepared
        await create_key(session, "predictor", f"{name}-warm", actor="bench")
    start.wait()  # every writer (and the sequencer) ready: the clock starts together
    n, cpu, end = 0, time.process_time(), time.perf_counter() + seconds
    while time.perf_counter() < end:
        async with sessions() as session, session.begin():
            await create_key(session, "predictor", f"{name}-{n}", actor="bench")
        n += 1
    done.put((n, time.process_time() - cpu))
    finish.wait()  # connected until the backends' CPU is read
    await engine.dispose()


async def _predictions(url: str, data: str, seconds: float, start: Any, finish: Any,
                       done: multiprocessing.Queue) -> None:
    """One prediction at a time (models, SHAP, routing, its row and its event)."""
    from app.main import build_services
    from app.predictions.path import predict
    from app.settings import Settings
    from tests.support.inputs import example_inputs

    services, engine = build_services(Settings(data_dir=Path(data), database_url=url))
    await services.registry.load_all()
    task = services.registry.tasks["loan_default"]
    rows = example_inputs(task, 500, seed=os.getpid())
    await predict(services, None, task.name, rows[-1])
    start.wait()
    n, cpu, end = 0, time.process_time(), time.perf_counter() + seconds
    while time.perf_counter() < end:
        await predict(services, None, task.name, rows[n % len(rows)])
        n += 1
    done.put((n, time.process_time() - cpu))
    finish.wait()
    services.close()
    await engine.dispose()


def _sequencer(url: str, data: str, start: Any, stop: Any, finish: Any,
               done: multiprocessing.Queue) -> None:
    """What a server does beside its requests: a sequencer round every 0.2 s, until the
    writers are done."""
    async def work() -> None:
        engine = make_engine(url)
        key = load_signing_key(None, Path(data), False)
        seq = Sequencer(make_sessionmaker(engine), key, CheckpointPolicy(), 0.2)
        await seq.drain()
        start.wait()
        cpu = time.process_time()
        task = asyncio.create_task(seq.run())
        while not stop.is_set():
            await asyncio.sleep(0.1)
        task.cancel()
        done.put(time.process_time() - cpu)
        finish.wait()
        await seq.drain()
        await engine.dispose()
    asyncio.run(work())


def _backend_cpu(pids: list[int]) -> float | None:
    """CPU seconds the server's processes ``pids`` used so far (their /proc stat; None when
    the server is not on this machine)."""
    total = 0
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    except OSError:
        return None
    return total / os.sysconf("SC_CLK_TCK")


async def _watch(url: str, seconds: float) -> tuple[int, collections.Counter[str],
                                                    float | None]:
    """For ``seconds``: the most sessions seen waiting on a lock (``wait_event_type =
    'Lock'``) at once, every wait seen in the samples of active sessions (``type:event``;
    CPU = none), and the CPU seconds the database's other backends used meanwhile."""
    engine = make_engine(url)
    most, seen, end = 0, collections.Counter[str](), time.perf_counter() + seconds
    # Autocommit: a transaction would see one snapshot of pg_stat_activity throughout.
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        pids = list((await conn.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()")).scalars())
        before = _backend_cpu(pids)
        while time.perf_counter() < end:
            rows = (await conn.exec_driver_sql(
                "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') FROM "
                "pg_stat_activity WHERE datname = current_database() AND state = 'active' "
                "AND pid <> pg_backend_pid()")).scalars().all()
            most = max(most, sum(1 for r in rows if r.startswith("Lock:")))
            seen.update(rows)
            await asyncio.sleep(0.05)
        after = _backend_cpu(pids)
    await engine.dispose()
    used = None if before is None or after is None else after - before
    return most, seen, used


async def _latencies(url: str) -> list[float]:
    engine = make_engine(url)
    async with engine.connect() as conn:
        rows = (await conn.exec_driver_sql(
            "SELECT e.at, l.sequenced_at FROM audit_leaves l JOIN audit_events e "
            "ON e.id = l.event_id WHERE e.kind IN ('key.created', 'prediction.made')")).all()
    await engine.dispose()
    return sorted((s - a).total_seconds() for a, s in rows)


def writers(url: str, data: str, n: int, seconds: float, logged: bool, kind: str) -> Round:
    ctx = multiprocessing.get_context("spawn")
    done: multiprocessing.Queue = ctx.Queue()
    sequenced: multiprocessing.Queue = ctx.Queue()
    # The writers (and the sequencer) start their clocks together, once all are set up
    # (spawned, imported, connected), and the waits are sampled over the same seconds; they
    # keep their connections until the backends' CPU is read.
    parties = n + 1 + (1 if logged else 0)
    start, finish = ctx.Barrier(parties), ctx.Barrier(parties)
    procs = [ctx.Process(target=_writer, args=(url, data, f"w{i}", seconds, logged, kind,
                                               start, finish, done))
             for i in range(n)]
    stop = ctx.Event()
    if logged:
        procs.append(ctx.Process(target=_sequencer,
                                 args=(url, data, start, stop, finish, sequenced)))
    for p in procs:
        p.start()
    start.wait(timeout=600)
    waits, seen, backend = asyncio.run(_watch(url, seconds))
    results = [done.get(timeout=seconds + 600) for _ in range(n)]
    stop.set()
    sequencer = sequenced.get(timeout=600) if logged else 0.0
    finish.wait(timeout=600)
    for p in procs:
        p.join(timeout=120)
    total = sum(count for count, _ in results)
    per_tx = 1e6 / max(total, 1)
    return Round(total / seconds, sum(cpu for _, cpu in results) * per_tx,
                 None if backend is None else backend * per_tx, sequencer * per_tx, waits,
                 seen)


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


def writer_report(dsn: str, data: str, n: int, seconds: float, kind: str,
                  rounds: int) -> None:
    done: dict[bool, list[Round]] = {False: [], True: []}
    for _ in range(rounds):
        for logged in (False, True):  # interleaved: the machine is shared
            with postgres_database(dsn) as url:
                upgrade(url)
                if kind == "predict":
                    _release(url, data)
                r = writers(url, data, n, seconds, logged, kind)
                done[logged].append(r)
                note = ""
                if logged:
                    lat = asyncio.run(_latencies(url))
                    p50, p99 = statistics.median(lat), lat[int(len(lat) * 0.99) - 1]
                    note = f", commit->leaf p50 {p50 * 1000:.0f} ms p99 {p99 * 1000:.0f} ms"
                backend = "?" if r.backend_us is None else f"{r.backend_us:.0f}"
                print(f"{n} writers ({kind}), log {'on ' if logged else 'off'}: "
                      f"{r.rate:7.1f} tx/s, at most {r.lock_waits} sessions waiting on a "
                      f"lock{note}\n    CPU per transaction: writers {r.writer_us:.0f} us, "
                      f"backends {backend} us, sequencer {r.sequencer_us:.0f} us; waits "
                      "sampled: " + ", ".join(f"{w} {c}" for w, c in r.seen.most_common(5)),
                      flush=True)
    on = statistics.mean(r.rate for r in done[True])
    off = statistics.mean(r.rate for r in done[False])
    pairs = [a.rate / b.rate for a, b in zip(done[True], done[False], strict=True)]
    print(f"audited transactions with the log / without: {on:.1f} / {off:.1f} = "
          f"{on / off:.2f}x (per round: {', '.join(f'{p:.2f}' for p in pairs)})")

    def cpu(rs: list[Round]) -> float:
        return statistics.mean(r.writer_us + (r.backend_us or 0) + r.sequencer_us for r in rs)
    print(f"CPU per transaction (writers + backends + sequencer), without / with the log: "
          f"{cpu(done[False]):.0f} / {cpu(done[True]):.0f} us = "
          f"{cpu(done[False]) / cpu(done[True]):.2f}x")


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
    parser.add_argument("--rounds", type=int, default=2,
                        help="interleaved pairs of writer rounds (log off, log on)")
    parser.add_argument("--skip", choices=["writers", "verify"])
    parser.add_argument("--work", choices=["keys", "predict"], default="keys",
                        help="the writers' transaction: create_key, or one prediction")
    args = parser.parse_args()
    dsn = admin_dsn(parser, args.database_url)
    assert dsn is not None
    with tempfile.TemporaryDirectory() as data:
        if args.skip != "writers":
            writer_report(dsn, data, args.writers, args.seconds, args.work, args.rounds)
        if args.skip != "verify":
            sqlite = f"sqlite+aiosqlite:///{Path(data) / 'verify.db'}"
            upgrade(sqlite)
            verify_report(sqlite, data, args.events)
            with postgres_database(dsn) as url:
                upgrade(url)
                verify_report(url, data + "/pg", args.events)


if __name__ == "__main__":
    main()
