"""Member artifacts on disk: skops files (never pickle) checked by SHA-256 on load."""

from __future__ import annotations

import hashlib
import os
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import skops.io as sio
from sklearn.pipeline import Pipeline

from app.errors import ModelLoadError

# Beyond skops' own defaults (scikit-learn estimators and transformers), the only types our
# allow-listed pipelines hold. Anything else in a file is refused.
TRUSTED_TYPES = [
    "app.ml.pipeline.ModelFrame",  # the first step of an imported member: ours, stateless
    "numpy.dtype",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
]


def library_versions() -> dict[str, str]:
    """Versions an artifact was written with (read from metadata: no heavy imports)."""
    return {name: version(name) for name in ("scikit-learn", "numpy", "shap", "skops")}


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_pipeline(pipeline: Pipeline, path: Path) -> str:
    """Write atomically (temp file + rename) and return the file's SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        sio.dump(pipeline, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return sha256_of(path)


def _loads(data: bytes, path: Path) -> Any:
    """The object of a skops file, refusing any type beyond skops' defaults and ours."""
    try:
        found = sio.get_untrusted_types(data=data)
    except Exception as exc:  # not a skops file at all (truncated, wrong format)
        raise ModelLoadError(f"model artifact {path} cannot be loaded: {exc}") from exc
    untrusted = sorted(set(found) - set(TRUSTED_TYPES))
    if untrusted:
        raise ModelLoadError(f"model artifact {path} holds untrusted types: {untrusted}")
    try:
        return sio.loads(data, trusted=TRUSTED_TYPES)
    except Exception as exc:
        raise ModelLoadError(f"model artifact {path} cannot be loaded: {exc}") from exc


def read_estimator(path: Path) -> tuple[Any, str]:
    """An estimator written elsewhere (no hash recorded yet) and its file's SHA-256, with
    the same refusal of untrusted types as every artifact."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc.strerror}") from None
    return _loads(data, path), hashlib.sha256(data).hexdigest()


def load_pipeline(path: Path, expected_sha256: str) -> Pipeline:
    """Refuse a missing file, a hash mismatch, or a file holding an untrusted type."""
    if not path.is_file():
        raise ModelLoadError(f"model artifact {path} is missing")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise ModelLoadError(
            f"model artifact {path} was modified: SHA-256 {actual} != recorded {expected_sha256}"
        )
    pipeline = _loads(data, path)
    if not isinstance(pipeline, Pipeline):
        raise ModelLoadError(f"model artifact {path} is not a scikit-learn Pipeline")
    return pipeline
