"""Member artifacts: skops files that load back identical, and are refused when missing,
modified or holding a type outside the trusted list."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from app.errors import ModelLoadError
from app.examples.loan import generate
from app.ml.algorithms import ALGORITHMS
from app.ml.artifacts import TRUSTED_TYPES, load_pipeline, save_pipeline, sha256_of
from app.ml.contract import frame_to_matrix, to_matrix, validate_inputs
from app.ml.pipeline import build_pipeline
from app.ml.task import Member, TaskSpec
from app.ml.training import TrainedRelease


def shout(x: np.ndarray) -> np.ndarray:
    """A custom function: code that is not scikit-learn's, so skops must not trust it."""
    return np.asarray(x) * 2


@pytest.fixture(scope="module")
def synthetic_xy(synthetic_task_factory: Callable[[int], TaskSpec],
                 synthetic_data: Callable[..., tuple[list[dict[str, object]], np.ndarray]],
                 ) -> tuple[TaskSpec, np.ndarray, np.ndarray]:
    task = synthetic_task_factory(2)
    rows, y = synthetic_data(400, 2, 5)
    return task, to_matrix(task, validate_inputs(task, rows)), y


def test_round_trip_gives_identical_predictions(loan_release: TrainedRelease,
                                                tmp_path: Path) -> None:
    X = frame_to_matrix(loan_release.task, generate(rows=500, seed=31))
    for member in loan_release.members:
        path = tmp_path / "members" / f"{member.spec.name}.skops"
        sha = save_pipeline(member.pipeline, path)
        assert sha == sha256_of(path)
        assert len(sha) == 64
        loaded = load_pipeline(path, sha)
        assert isinstance(loaded, Pipeline)
        np.testing.assert_array_equal(loaded.predict_proba(X), member.pipeline.predict_proba(X))
    assert sorted(p.name for p in (tmp_path / "members").iterdir()) == [
        "boosted.skops", "logistic.skops"], "no temporary files are left behind"


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_every_allowed_algorithm_loads_with_the_trusted_types(
        algorithm: str, synthetic_xy: tuple[TaskSpec, np.ndarray, np.ndarray],
        tmp_path: Path) -> None:
    task, X, y = synthetic_xy
    small = {"n_estimators": 10} if "n_estimators" in ALGORITHMS[algorithm].defaults else {}
    member = Member(name="m", algorithm=algorithm, weight=1.0, params=small)
    pipeline = build_pipeline(task, member, seed=0).fit(X, y)
    path = tmp_path / f"{algorithm}.skops"
    loaded = load_pipeline(path, save_pipeline(pipeline, path))
    np.testing.assert_array_equal(loaded.predict_proba(X), pipeline.predict_proba(X))


def test_saving_again_replaces_the_file(breast_cancer_release: TrainedRelease,
                                        tmp_path: Path) -> None:
    path = tmp_path / "m.skops"
    first, second = breast_cancer_release.members
    save_pipeline(first.pipeline, path)
    sha = save_pipeline(second.pipeline, path)
    assert isinstance(load_pipeline(path, sha)[-1], type(second.pipeline[-1]))
    assert list(tmp_path.iterdir()) == [path]


def test_a_modified_byte_is_refused(breast_cancer_release: TrainedRelease,
                                    tmp_path: Path) -> None:
    path = tmp_path / "m.skops"
    sha = save_pipeline(breast_cancer_release.members[0].pipeline, path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="SHA-256") as info:
        load_pipeline(path, sha)
    assert "modified" in str(info.value)
    assert sha in str(info.value)
    assert info.value.code == "MODEL_LOAD_FAILED"


def test_a_wrong_recorded_hash_is_refused(breast_cancer_release: TrainedRelease,
                                          tmp_path: Path) -> None:
    path = tmp_path / "m.skops"
    sha = save_pipeline(breast_cancer_release.members[0].pipeline, path)
    with pytest.raises(ModelLoadError, match="SHA-256"):
        load_pipeline(path, "0" * 64)
    assert isinstance(load_pipeline(path, sha), Pipeline)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gone.skops"
    with pytest.raises(ModelLoadError, match="missing") as info:
        load_pipeline(path, "0" * 64)
    assert str(path) in str(info.value)


def test_a_directory_is_not_an_artifact(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="missing"):
        load_pipeline(tmp_path, "0" * 64)


def test_an_untrusted_type_is_refused_even_with_the_right_hash(
        synthetic_xy: tuple[TaskSpec, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    _, X, y = synthetic_xy
    X = np.nan_to_num(X)
    pipeline = Pipeline([("custom", FunctionTransformer(shout)),
                         ("model", LogisticRegression(max_iter=500))]).fit(X, y)
    path = tmp_path / "custom.skops"
    sha = save_pipeline(pipeline, path)
    assert sha == sha256_of(path)
    reported = sio.get_untrusted_types(file=path)
    custom = [t for t in reported if t.endswith("shout")]
    assert custom, f"skops reports the custom function: {reported}"
    with pytest.raises(ModelLoadError, match="untrusted") as info:
        load_pipeline(path, sha)
    assert custom[0] in str(info.value)
    assert not any(t.endswith("shout") for t in TRUSTED_TYPES)


def test_an_artifact_that_is_not_a_pipeline_is_refused(
        synthetic_xy: tuple[TaskSpec, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    _, X, y = synthetic_xy
    model = LogisticRegression(max_iter=500).fit(np.nan_to_num(X), y)
    path = tmp_path / "bare.skops"
    sio.dump(model, path)
    with pytest.raises(ModelLoadError, match="not a scikit-learn Pipeline"):
        load_pipeline(path, sha256_of(path))


def test_a_file_that_is_not_skops_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.skops"
    path.write_bytes(b"definitely not a zip file")
    with pytest.raises(ModelLoadError):
        load_pipeline(path, sha256_of(path))
