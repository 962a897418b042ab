"""The project's own packages pass ruff and mypy (run here so the one test command checks
them, locally and in CI), and keep the shape a newcomer relies on."""

from __future__ import annotations

import ast
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PACKAGES = ["app", "graphql_schema", "workers", "review", "migrations", "web", "tests",
            "bench"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing() -> None:
    result = _run(str(BIN / "ruff"), "check", *[p for p in PACKAGES if (ROOT / p).exists()])
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing() -> None:
    result = _run(str(BIN / "mypy"))
    assert result.returncode == 0, result.stdout + result.stderr


# The shape a newcomer relies on (issue 22), read from the code: no import cycles, imports
# only downwards, no module over 400 lines, no folder over 15 modules, short functions.
SHAPED = ["app", "graphql_schema", "workers", "review", "web"]
MAX_MODULE_LINES = 400
MAX_FOLDER_MODULES = 15
MAX_MEDIAN_FUNCTION_LINES = 10
# Which packages a layer may not import: the composition root (app.main, app.cli) is imported by
# nothing; the core knows no API, worker or page; the queue knows no API or worker.
ENTRY = ("app.main", "app.cli")
FORBIDDEN = {
    "app": ("graphql_schema", "workers", "web", *ENTRY),
    "review": ("graphql_schema", "workers", "web", "app.http", *ENTRY),
    "graphql_schema": ("workers", "web", *ENTRY),
    "workers": ("graphql_schema", "web", *ENTRY),
    "web": ("workers", *ENTRY),
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in SHAPED:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Each module's imports of the project's own modules, function-level ones included."""
    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.update(f"{node.module}.{a.name}" for a in node.names)
        graph[name] = {r for t in targets if (r := resolve(t)) and r != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_imports_form_no_cycle() -> None:
    assert _cycles(_imports(_modules())) == []


def test_imports_point_downwards() -> None:
    upward = []
    for name, targets in _imports(_modules()).items():
        if any(_within(name, entry) for entry in ENTRY):
            continue
        layer = name.split(".")[0]
        upward += [f"{name} -> {t}" for t in sorted(targets)
                   if any(_within(t, banned) for banned in FORBIDDEN[layer])]
    assert upward == []


def test_modules_and_folders_stay_small() -> None:
    modules = _modules()
    long = {n: size for n, p in modules.items()
            if (size := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    per_folder = Counter(p.parent for p in modules.values() if p.name != "__init__.py")
    crowded = {str(f.relative_to(ROOT)): n for f, n in per_folder.items()
               if n > MAX_FOLDER_MODULES}
    assert (long, crowded) == ({}, {})


def test_functions_are_short_in_the_median() -> None:
    lengths = [node.end_lineno - node.lineno + 1
               for path in _modules().values()
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
               and node.end_lineno is not None]
    assert statistics.median(lengths) <= MAX_MEDIAN_FUNCTION_LINES
