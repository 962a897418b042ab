"""Personal values stay redacted on the paths `test_pii_markers` does not take: unique
marker incomes (income is pii in loan_default) scored by `arbiter predict-file`, valid and
out of range, appear in none of its output, messages or log lines, and in no audit export
but the one that asks for them (`--include-pii`), on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from app.ml.task import TaskSpec
from app.settings import Settings
from tests.app.predictions.test_files import write_csv
from tests.support.inputs import example_inputs
from tests.support.processes import arbiter

TASK = "loan_default"
VALID, OUT_OF_RANGE = 8_765_432.25, 14_680_064.75  # unusual: found only if they leak


def spellings(value: float) -> list[str]:
    return [repr(value), f"{value:.6g}", str(int(value))]


def leaks(text: str) -> list[str]:
    return [s for value in (VALID, OUT_OF_RANGE) for s in spellings(value) if s in text]


def test_marker_incomes_leak_from_no_predicted_file_or_export_without_pii(
        settings: Settings, env: dict[str, str], example_tasks: dict[str, TaskSpec],
        tmp_path: Path) -> None:
    task = example_tasks[TASK]
    rows = example_inputs(task, 3, seed=5)
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    write_csv(good, task, [{**rows[0], "income": VALID}, *rows[1:]])
    write_csv(bad, task, [rows[0], {**rows[1], "income": OUT_OF_RANGE}, rows[2]])

    scored = arbiter(env, "predict-file", TASK, str(good))
    assert scored.returncode == 0, scored.stderr
    output = (tmp_path / "good.predictions.jsonl").read_text()
    assert len(output.splitlines()) == 3
    refused = arbiter(env, "predict-file", TASK, str(bad), "--output",
                      str(tmp_path / "bad.jsonl"))
    assert refused.returncode == 2 and "row 2" in refused.stderr, refused.stderr
    assert "income" in refused.stderr and "above the maximum" in refused.stderr
    assert "[redacted]" in refused.stderr  # printed as text, not read as rich markup
    assert leaks("\n".join([scored.stdout, scored.stderr, output, refused.stdout,
                            refused.stderr])) == []

    plain, attached = tmp_path / "export.jsonl", tmp_path / "with-pii.jsonl"
    for args in ([], ["--include-pii"]):
        done = arbiter(env, "audit", "export", "--output",
                       str(attached if args else plain), *args)
        assert done.returncode == 0, done.stderr
        assert leaks(done.stdout + done.stderr) == []
    assert "prediction.made" in plain.read_text()
    assert leaks(plain.read_text()) == []
    assert leaks(attached.read_text()) != []  # the markers were there to be found
