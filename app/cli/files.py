"""``arbiter predict-file``: a whole file of inputs through the prediction path."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress

from app.cli.context import cli_actor, console, err, known_tasks, prepare, progress_bar
from app.errors import ArbiterError, InputValidationError


def _count_rows(source: Path) -> int:
    """Rows of a CSV (lines after the header) or JSON Lines file (non-blank lines), for the
    progress bar: a quick pass over the bytes, no parsing."""
    with source.open("rb") as raw:
        lines = sum(1 for line in raw if line.strip())
    return max(lines - 1, 0) if source.suffix.lower() == ".csv" else lines


def predict_file(
    task: Annotated[str, typer.Argument(help="Task name.")],
    source: Annotated[Path, typer.Argument(
        help="Inputs: .csv (header row of feature names) or .jsonl (one object per line).")],
    output: Annotated[Path | None, typer.Option(
        help="Answers, JSON Lines (default: SOURCE with .predictions.jsonl).")] = None,
    chunk_rows: Annotated[int, typer.Option(help="Rows per transaction.")] = 5_000,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue after the rows OUTPUT already lists.")] = False,
) -> None:
    """Explain, route and store every row of SOURCE as predictBatch does, CHUNK_ROWS per
    transaction, and write one answer per row (row, id, label, confidence, route, status)."""
    from app.main import build_services
    from app.predictions import files as batch_files  # the whole prediction path: slow import

    settings = prepare()
    known_tasks(settings, task)
    if not source.is_file():
        raise ArbiterError(f"no such file: {source}")
    output = output or source.with_suffix(".predictions.jsonl")
    if output.exists() and output.stat().st_size and not resume:
        raise ArbiterError(f"{output} already lists answers; pass --resume to go on after "
                           f"them, or choose another --output")
    skip = batch_files.listed_rows(output)
    run = batch_files.run_key(source, output)

    async def work(bar: Progress, shown: Any, out: Any) -> batch_files.FileResult:
        services, engine = build_services(settings)
        try:
            spec = services.registry.task(task)
            await services.registry.load_all()
            return await batch_files.predict_file(
                services, task, batch_files.read_rows(spec, source), out, actor=cli_actor(),
                chunk_rows=chunk_rows, run=run, skip=skip,
                progress=lambda n: bar.advance(shown, n))
        finally:
            await services.drain()
            services.close()
            await engine.dispose()

    try:
        with progress_bar(err) as bar, output.open("a", encoding="utf-8") as out:
            shown = bar.add_task(f"predicting {task}", total=_count_rows(source),
                                 completed=skip)
            result = asyncio.run(work(bar, shown, out))
    except InputValidationError as exc:
        problems = "; ".join(f"row {p.index}: {p.message}" for p in exc.problems[:10])
        raise ArbiterError(
            f"{exc}: {problems}. The {batch_files.listed_rows(output)} rows before that chunk "
            f"are stored and listed in {output}; fix the file and run again with --resume"
        ) from None
    console.print(f"{result.predicted} predictions stored, {result.replayed} already stored "
                  f"answered from storage ({result.routed} routed to review), "
                  f"{skip + result.predicted + result.replayed} answers in {output}")
