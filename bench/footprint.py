"""What a server costs before it does anything: a bare import of its dependencies, and
the RSS of a running server's processes."""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from servers import ROOT  # bench/ is sys.path[0] when run as a script

PROJECT_PACKAGES = {"app", "graphql_schema", "review", "workers", "web", "bench",
                    "predict_throughput", "baseline_app", "perf_report"}
# Imports everything listed in argv[1] (a JSON list), then prints its RSS in KiB.
BARE_IMPORT = (
    "import importlib, json, sys\n"
    "for name in json.load(open(sys.argv[1])):\n"
    "    try:\n"
    "        importlib.import_module(name)\n"
    "    except Exception:\n"
    "        pass\n"
    "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS')))\n"
)
# Lists the non-project, non-stdlib modules a server process holds once the app module is
# imported and the LIVE members of every task are unpickled (which imports their estimators).
LIST_DEPENDENCIES = (
    "import json, sys\n"
    "import app.main, app.cli\n"
    "import sqlalchemy as sa\n"
    "from pathlib import Path\n"
    "from app.ml.artifacts import load_pipeline\n"
    "data = Path(sys.argv[1])\n"
    "engine = sa.create_engine(f'sqlite:///{data / \"arbiter.db\"}')\n"
    "with engine.connect() as c:\n"
    "    for path, sha in c.execute(sa.text(\"SELECT m.artifact_path, m.sha256 FROM releases r"
    " JOIN release_members m ON m.release_id = r.id WHERE r.stage = 'LIVE'\")):\n"
    "        load_pipeline(data / 'artifacts' / path, sha)\n"
    "skip = set(sys.stdlib_module_names) | set(json.loads(sys.argv[2]))\n"
    "print(json.dumps(sorted(n for n in sys.modules if n.split('.')[0] not in skip\n"
    "                        and not n.startswith('_'))))\n"
)


def tree_rss_mib(pid: int) -> float:
    """RSS of every process in the server's session (it is started in its own)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            sid = int(stat.rsplit(")", 1)[1].split()[3])
            if sid == pid:
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("VmRSS"):
                        total += int(line.split()[1])
    return total / 1024


def bare_import(data_dir: Path, runs: int = 3) -> tuple[float, float, int]:
    """(median seconds, median RSS MiB, module count) of a fresh interpreter importing the
    modules the server holds from its dependencies."""
    listed = subprocess.run(
        [sys.executable, "-c", LIST_DEPENDENCIES, str(data_dir), json.dumps(sorted(
            PROJECT_PACKAGES))], cwd=ROOT, capture_output=True, text=True, check=True)
    modules = data_dir / "bench-dependencies.json"
    modules.write_text(listed.stdout)
    times, rss = [], []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", BARE_IMPORT, str(modules)], cwd="/",
                              capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - started)
        rss.append(int(done.stdout.strip()) / 1024)
    return statistics.median(times), statistics.median(rss), len(json.loads(listed.stdout))
