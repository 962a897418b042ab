"""What every benchmark table says about the machine, and how it is printed."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

from rich.console import Console
from rich.table import Table


def cpu_model() -> str:
    """The CPU's model name."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_line() -> str:
    """CPUs, Python and kernel, for a table's caption."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"machine: {os.cpu_count()} CPUs ({usable} usable, {cpu_model()}), "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}")


def omp_setting(omp_threads: str | None) -> str:
    """The OMP_NUM_THREADS the servers ran with."""
    return omp_threads or os.environ.get("OMP_NUM_THREADS") or "unset"


def print_wide(table: Table, width: int) -> None:
    """Print ``table`` on stdout; to a file or pipe at least ``width`` columns wide, so it
    is not squeezed into 80."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, width))
    console.print(table)
