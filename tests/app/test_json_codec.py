"""JSON through orjson (app.json_codec): the same values as the standard library, on the
columns of both backends."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from app import json_codec


def test_dumps_writes_the_values_the_standard_library_does() -> None:
    value = {"a": [1, 2.5, None, True, "é ✓"], 3: {"nested": -0.1}, "f": 1e-7}
    assert json.loads(json_codec.dumps(value)) == json.loads(json.dumps(value))
    assert json_codec.loads(json_codec.dumps(value)) == json.loads(json.dumps(value))


def test_numpy_numbers_and_arrays_are_plain_json() -> None:
    value = {"x": np.float64(0.25), "n": np.int64(7), "v": np.array([1.5, 2.0])}
    assert json_codec.loads(json_codec.dumps(value)) == {"x": 0.25, "n": 7, "v": [1.5, 2.0]}


def test_what_only_the_standard_library_reads_still_reads() -> None:
    assert math.isnan(json_codec.loads('{"x": NaN}')["x"])
    assert json_codec.loads("[Infinity]") == [math.inf]
    with pytest.raises(json.JSONDecodeError):
        json_codec.loads("{not json")
