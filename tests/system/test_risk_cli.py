"""`arbiter train` and `arbiter releases` say what risk control certified, and plainly when
it could not."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.processes import arbiter
from tests.support.risk_tasks import write_risk_tasks


def test_train_and_releases_print_the_certificates(env: dict[str, str], tmp_path: Path) -> None:
    env = {**env, "ARBITER_TASKS_DIR": str(write_risk_tasks(tmp_path / "tasks"))}
    ample = arbiter(env, "train", "ample")
    assert ample.returncode == 0, ample.stderr
    out = " ".join(ample.stdout.split())  # rich wraps long lines
    assert "AUTO error <= 10.0% at 90% confidence, per predicted class" in out
    assert re.search(r"good: certified, threshold 0\.\d{3}, \d+ calibration rows", out)
    assert re.search(r"conformal coverage 0\.\d{3} \[0\.\d{3}, [01]\.\d{3}\]", out)
    scarce = arbiter(env, "train", "scarce")
    assert scarce.returncode == 0, scarce.stderr
    out = " ".join(scarce.stdout.split())
    assert re.search(r"good: NOT CERTIFIED: \d+ calibration rows predicted good cannot certify "
                     r"AUTO error <= 10\.0% at 90% confidence", out)
    listing = " ".join(arbiter(env, "releases", "ample").stdout.split())
    assert re.search(r"release 1: AUTO error <= 10\.0% at 90% confidence \(class scope\): "
                     r"thresholds good 0\.\d{3}, bad 0\.\d{3}", listing)
    listing = " ".join(arbiter(env, "releases", "scarce").stdout.split())
    assert "thresholds good NOT_CERTIFIED, bad NOT_CERTIFIED" in listing
