"""``arbiter`` under cProfile, for ``perf_report.py --profile``: ``python bench/profiled_serve.py
serve ...`` runs the CLI exactly as the ``arbiter`` script does and, on a clean exit (SIGTERM
makes uvicorn shut down and return), writes the main thread's stats to
``$ARBITER_BENCH_PROFILE``. cProfile sees only the event-loop thread: the ensemble, SHAP and
routing run in a worker thread (the server's stage histogram times those).

Read the stats with ``python -m pstats FILE`` (``sort cumtime``, ``stats 40``).
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys
from types import FrameType

from app.cli import main


def _exit(signum: int, _frame: FrameType | None) -> None:
    # uvicorn restores this handler after its graceful shutdown and re-raises the signal:
    # exiting through SystemExit lets the stats be written.
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit)
    target = os.environ.get("ARBITER_BENCH_PROFILE")
    if not target:
        raise SystemExit("set ARBITER_BENCH_PROFILE to the stats file to write")
    sys.argv[0] = "arbiter"
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        main()
    except SystemExit:
        pass
    finally:
        profiler.disable()
        profiler.dump_stats(target)
