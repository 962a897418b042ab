"""Task files: the example tasks load, and a wrong task file is refused with a message that
names what is wrong."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from app.errors import ConfigurationError
from app.ml.algorithms import ALGORITHMS, OutputSpace
from app.ml.contract import to_matrix
from app.ml.data import load_frame
from app.ml.task import FeatureType, TaskSpec, load_task, load_tasks
from app.settings import EXAMPLE_TASKS_DIR

HEADER = """\
name = "tiny"
classes = ["no", "yes"]

[data]
loader = "app.examples.loan:load"
target = "outcome"
"""

MEMBER_LOGISTIC = """
[[members]]
name = "logistic"
algorithm = "logistic_regression"
weight = 1.0
"""

FEATURE_INCOME = """
[[features]]
name = "income"
type = "numeric"
min = 0
max = 100
"""


def write(tmp_path: Path, text: str, name: str = "task.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def refused(path: Path) -> str:
    with pytest.raises(ConfigurationError) as info:
        load_task(path)
    message = str(info.value)
    assert str(path) in message, "the message names the task file"
    return message


# --- the example tasks -------------------------------------------------------------------


def test_example_tasks_load() -> None:
    tasks = load_tasks(EXAMPLE_TASKS_DIR)
    assert set(tasks) == {"breast_cancer", "loan_default"}

    cancer = tasks["breast_cancer"]
    assert cancer.classes == ("malignant", "benign")
    assert len(cancer.features) == 30
    assert all(f.type is FeatureType.NUMERIC for f in cancer.features)
    assert cancer.space is OutputSpace.LOG_ODDS
    assert cancer.review.confidence_level == 0.95
    assert Path(cancer.source_path) == (EXAMPLE_TASKS_DIR / "breast_cancer.toml").resolve()

    loan = tasks["loan_default"]
    assert loan.classes == ("repaid", "late", "default")
    assert loan.space is OutputSpace.LOG_ODDS
    assert [m.name for m in loan.members] == ["logistic", "boosted"]
    assert loan.model_columns[-2:] == ["avg_spend", "payment_to_income"]
    assert loan.feature("credit_history_years").required is False
    assert loan.feature("employment").categories == (
        "salaried", "self_employed", "unemployed", "retired")
    assert loan.feature("income").pii is True


def test_example_task_data_sources_cover_every_feature(example_tasks: dict[str, TaskSpec]) -> None:
    for task in example_tasks.values():
        frame = load_frame(task)
        assert {f.name for f in task.features} <= set(frame.columns)
        assert set(frame[task.data.target].astype(str)) == set(task.classes)


def test_contract_hash_is_stable_and_ignores_descriptions(tmp_path: Path) -> None:
    base = HEADER + MEMBER_LOGISTIC + FEATURE_INCOME
    first = load_task(write(tmp_path, base, "a.toml"))
    described = load_task(write(tmp_path, base + 'description = "Yearly income"\n', "b.toml"))
    assert first.contract_hash() == described.contract_hash()
    widened = load_task(write(tmp_path, base.replace("max = 100", "max = 200"), "c.toml"))
    assert first.contract_hash() != widened.contract_hash()


def test_minimal_task_file_loads_with_defaults(tmp_path: Path) -> None:
    task = load_task(write(tmp_path, HEADER + MEMBER_LOGISTIC + FEATURE_INCOME))
    assert task.name == "tiny"
    assert task.review.confidence_level == 0.9
    assert task.review.audit_rate == 0.0
    assert task.training.seed == 0
    assert task.model_columns == ["income"]


# --- refused task files ------------------------------------------------------------------


def test_unknown_algorithm(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + FEATURE_INCOME + """
        [[members]]
        name = "deep"
        algorithm = "neural_network"
        weight = 1.0
        """)
    message = refused(path)
    assert "'neural_network' is not allowed" in message
    assert "'deep'" in message
    for allowed in ALGORITHMS:
        assert allowed in message, "the message lists the allowed algorithms"


def test_categorical_without_categories(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + MEMBER_LOGISTIC + """
        [[features]]
        name = "colour"
        type = "categorical"
        """)
    message = refused(path)
    assert "categorical feature 'colour' needs `categories`" in message


def test_min_greater_than_max(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + MEMBER_LOGISTIC + """
        [[features]]
        name = "age"
        type = "numeric"
        min = 120
        max = 18
        """)
    message = refused(path)
    assert "feature 'age': min 120.0 > max 18.0" in message


def test_derived_feature_with_unknown_input(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + MEMBER_LOGISTIC + FEATURE_INCOME + """
        [[derived]]
        name = "ratio"
        function = "numpy:divide"
        inputs = ["income", "rent"]
        """)
    message = refused(path)
    assert "derived feature 'ratio' uses unknown inputs ['rent']" in message


def test_duplicate_feature(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + MEMBER_LOGISTIC + FEATURE_INCOME + FEATURE_INCOME)
    message = refused(path)
    assert "feature 'income' is declared twice" in message


def test_derived_feature_named_like_an_input_is_a_duplicate(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + MEMBER_LOGISTIC + FEATURE_INCOME + """
        [[derived]]
        name = "income"
        function = "numpy:negative"
        inputs = ["income"]
        """)
    message = refused(path)
    assert "feature 'income' is declared twice" in message


def test_members_mixing_log_odds_and_probability(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + FEATURE_INCOME + MEMBER_LOGISTIC + """
        [[members]]
        name = "forest"
        algorithm = "random_forest"
        weight = 1.0
        """)
    message = refused(path)
    assert "members must all explain in one space" in message
    assert "logistic=LOG_ODDS" in message
    assert "forest=PROBABILITY" in message


def test_gradient_boosting_in_three_class_task(tmp_path: Path) -> None:
    text = HEADER.replace('["no", "yes"]', '["low", "mid", "high"]') + FEATURE_INCOME + """
        [[members]]
        name = "gb"
        algorithm = "gradient_boosting"
        weight = 1.0
        """
    message = refused(write(tmp_path, text))
    assert "member 'gb': gradient_boosting supports two classes only" in message


def test_gradient_boosting_in_two_class_task_is_fine(tmp_path: Path) -> None:
    task = load_task(write(tmp_path, HEADER + FEATURE_INCOME + """
        [[members]]
        name = "gb"
        algorithm = "gradient_boosting"
        weight = 1.0
        """))
    assert task.space is OutputSpace.LOG_ODDS


def test_invalid_toml_syntax(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + 'classes = ["no", "yes"\n')
    message = refused(path)
    assert "cannot read task file" in message


def test_missing_data_source(tmp_path: Path) -> None:
    text = HEADER.split("[data]")[0] + MEMBER_LOGISTIC + FEATURE_INCOME
    message = refused(write(tmp_path, text))
    assert "data" in message
    assert "Field required" in message


@pytest.mark.parametrize("source", ["", 'loader = "m:f"\ncsv = "rows.csv"\n'])
def test_data_source_needs_exactly_one_of_loader_or_csv(tmp_path: Path, source: str) -> None:
    text = (HEADER.split("[data]")[0] + "[data]\n" + source + 'target = "outcome"\n'
            + MEMBER_LOGISTIC + FEATURE_INCOME)
    message = refused(write(tmp_path, text))
    assert "[data] needs exactly one of `loader` or `csv`" in message


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + MEMBER_LOGISTIC + FEATURE_INCOME + "colour = 'x'\n")
    message = refused(path)
    assert "colour" in message
    assert "Extra inputs are not permitted" in message


def test_non_positive_weight_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + FEATURE_INCOME + MEMBER_LOGISTIC.replace("1.0", "0"))
    message = refused(path)
    assert "weight" in message


def test_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read task file"):
        load_task(tmp_path / "nope.toml")


def test_missing_tasks_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_tasks(tmp_path / "nowhere")


def test_same_task_name_in_two_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    write(tmp_path, HEADER + MEMBER_LOGISTIC + FEATURE_INCOME, "a.toml")
    write(tmp_path, HEADER + MEMBER_LOGISTIC + FEATURE_INCOME, "b.toml")
    with pytest.raises(ConfigurationError, match=r"task 'tiny' is declared twice .*b\.toml"):
        load_tasks(tmp_path)


def test_functions_beside_the_task_files_are_importable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """load_tasks puts the folder on sys.path, so a derived feature may live beside the TOML."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    module = "arbiter_ml_test_helpers_beside_task"
    monkeypatch.delitem(sys.modules, module, raising=False)
    (tmp_path / f"{module}.py").write_text(
        "import numpy as np\n\n"
        "def doubled(x):\n"
        "    return 2 * np.asarray(x, dtype=float)\n"
    )
    write(tmp_path, HEADER + MEMBER_LOGISTIC + FEATURE_INCOME + f"""
        [[derived]]
        name = "income_twice"
        function = "{module}:doubled"
        inputs = ["income"]
        """)
    try:
        task = load_tasks(tmp_path)["tiny"]
        matrix = to_matrix(task, [{"income": 3.0}, {"income": 10.5}])
    finally:
        sys.modules.pop(module, None)
    np.testing.assert_array_equal(matrix, [[3.0, 6.0], [10.5, 21.0]])


def test_derived_function_that_cannot_be_imported(tmp_path: Path) -> None:
    task = load_task(write(tmp_path, HEADER + MEMBER_LOGISTIC + FEATURE_INCOME + """
        [[derived]]
        name = "broken"
        function = "no_such_module_for_arbiter:f"
        inputs = ["income"]
        """))
    with pytest.raises(ConfigurationError, match="cannot import 'no_such_module_for_arbiter:f'"):
        to_matrix(task, [{"income": 1.0}])
