"""What every ``arbiter`` command shares: the consoles, who acts, a migrated database, and
running async work with a session factory."""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from app.db.engine import make_engine, make_sessionmaker
from app.db.migrate import upgrade
from app.errors import UnknownTaskError
from app.ml.task import TaskSpec, load_tasks
from app.settings import Settings

T = TypeVar("T")
# Wide enough for the release table when piped (rich assumes 80 columns off a terminal).
console = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True)


def run(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run an async job with a session factory, disposing of the engine afterwards."""

    async def main() -> T:
        engine = make_engine(settings.resolved_database_url)
        try:
            return await work(make_sessionmaker(engine))
        finally:
            await engine.dispose()

    return asyncio.run(main())


def cli_actor() -> str:
    """Who acts from the command line, for stage histories and the audit log."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name (e.g. a container without a passwd entry)
        return f"cli:uid-{os.getuid()}"


def prepare() -> Settings:
    """The settings, with the data folder made and the database migrated to head."""
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    return settings


def known_tasks(settings: Settings, name: str) -> dict[str, TaskSpec]:
    """The task files by name, once ``name`` is known to be one of them: every command that
    takes a task refuses an unknown one alike (the names known, exit code 2)."""
    tasks = load_tasks(settings.tasks_dir)
    if name not in tasks:
        raise UnknownTaskError(name, list(tasks))
    return tasks


def progress_bar(on: Console, *more: ProgressColumn) -> Progress:
    """The commands' progress bar: what, how far, how long, then the ``more`` columns."""
    return Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                    TaskProgressColumn(), TimeElapsedColumn(), *more, console=on,
                    transient=False)
