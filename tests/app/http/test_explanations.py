"""GET /explanations/{id}.svg|.png over real HTTP, on SQLite and PostgreSQL, for predictions
of the real example releases: the picture shows the stored numbers, and only auditors and
admins may fetch it."""

from __future__ import annotations

import io
import math
import struct
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from PIL import Image

from app.ml.task import TaskSpec
from app.predictions.charts import probability_text
from app.settings import Settings
from tests.support.inputs import example_inputs
from tests.support.server import Api, make_key

SVG = "{http://www.w3.org/2000/svg}"
PREDICT = """mutation($task: String!, $input: JSON!) { predict(task: $task, input: $input) {
  id label confidence probabilities { label probability }
  explanation { space explainedClass baseValue outputValue
                contributions { feature value shap } } } }"""
URLS = """query($id: ID!) { prediction(id: $id) {
  svg: explanationUrl png: explanationUrl(format: PNG, kind: BAR)
  late: explanationUrl(class: "late") } }"""
ROUNDING = 0.0005  # the pictures print three decimals


def _predict(api: Api, task: str, row: dict[str, Any]) -> dict[str, Any]:
    body = api(PREDICT, task=task, input=row)
    assert "errors" not in body, body
    prediction: dict[str, Any] = body["data"]["predict"]
    return prediction


def _get(http: httpx.Client, key: str | None, path: str, **headers: str) -> httpx.Response:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return http.get(path, headers=headers)


def _number(text: str) -> float:
    return float(text.strip().replace("\u2212", "-"))


def _svg(response: httpx.Response) -> ET.Element:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/svg+xml"
    root = ET.fromstring(response.content)
    # Served to browsers: nothing that runs or loads anything.
    for element in root.iter():
        assert not element.tag.endswith("script") and not element.tag.endswith("foreignObject")
        for name, value in element.attrib.items():
            assert not name.lower().startswith("on"), (element.tag, name)
            if name.endswith("href"):
                assert value.startswith("#"), value
    return root


def _texts(root: ET.Element, gid: str | None = None) -> list[str]:
    scope = root if gid is None else next(g for g in root.iter(f"{SVG}g") if g.get("id") == gid)
    return [t.text or "" for t in scope.iter(f"{SVG}text")]


def _note_value(root: ET.Element, gid: str) -> float:
    [text] = _texts(root, gid)
    return _number(text.split()[-1])


def _shown_contributions(root: ET.Element, rows: int) -> list[float]:
    return [_number(_texts(root, f"contribution-{i}")[0]) for i in range(rows)]


def _check_waterfall(root: ET.Element, p: dict[str, Any], explained: dict[str, Any],
                     task: TaskSpec) -> None:
    """Title, the top features in order of size, the fold, base and output: the stored
    numbers, and the shown ones add up within rounding."""
    title = root.find(f"{SVG}title")
    assert title is not None and title.text is not None
    assert f"{task.name} \u00b7 release 1 \u00b7 prediction {p['id']}" in title.text
    assert f"predicted {p['label']} ({probability_text(p['confidence'])})" in title.text
    assert f"explaining {explained['class']}" in title.text
    ranked = sorted(explained["contributions"], key=lambda c: abs(c["shap"]), reverse=True)
    shown = ranked if len(ranked) <= 11 else ranked[:10]
    labels = [t for t in _texts(root) if " = " in t]
    for c in shown:
        assert any(t.startswith(f"{c['feature']} = ") for t in labels), c["feature"]
    rows = len(shown) + (len(ranked) > len(shown))
    values = _shown_contributions(root, rows)
    for c, value in zip(shown, values, strict=False):
        assert abs(value - c["shap"]) <= ROUNDING
    if len(ranked) > len(shown):
        assert f"{len(ranked) - 10} other features" in _texts(root)
        assert abs(values[-1] - sum(c["shap"] for c in ranked[10:])) <= ROUNDING
    base, output = _note_value(root, "base-value"), _note_value(root, "output-value")
    assert abs(base - explained["baseValue"]) <= ROUNDING
    assert abs(output - explained["outputValue"]) <= ROUNDING
    assert abs(base + sum(values) - output) <= ROUNDING * (rows + 2)


def _png_size(content: bytes) -> tuple[int, int]:
    assert content[:8] == b"\x89PNG\r\n\x1a\n"
    Image.open(io.BytesIO(content)).verify()  # every chunk's CRC, the image data
    width, height = struct.unpack(">II", content[16:24])
    return width, height


def test_pictures_show_the_stored_explanation(
    http: httpx.Client, predictor: Api, settings: Settings, example_tasks: dict[str, TaskSpec]
) -> None:
    task = example_tasks["breast_cancer"]
    p = _predict(predictor, task.name, example_inputs(task, 1, seed=11)[0])
    stored = p["explanation"]
    assert stored["explainedClass"] == p["label"]
    auditor = make_key(settings, "auditor", "compliance")

    response = _get(http, auditor, f"/explanations/{p['id']}.svg")
    root = _svg(response)
    _check_waterfall(root, p, {"class": p["label"], **stored}, task)
    assert response.headers["cache-control"].startswith("private")
    etag = response.headers["etag"]
    again = _get(http, auditor, f"/explanations/{p['id']}.svg", **{"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag

    # The other class of a binary task: the log-odds of benign, the mirror of malignant's.
    other = next(c for c in task.classes if c != p["label"])
    root = _svg(_get(http, auditor, f"/explanations/{p['id']}.svg?class={other}"))
    q = next(c["probability"] for c in p["probabilities"] if c["label"] == other)
    mirrored = {"class": other, "baseValue": -stored["baseValue"],
                "outputValue": math.log(q / (1 - q)),
                "contributions": [{**c, "shap": -c["shap"]} for c in stored["contributions"]]}
    _check_waterfall(root, p, mirrored, task)

    bar = _get(http, auditor, f"/explanations/{p['id']}.svg?kind=bar")
    assert bar.headers["etag"] != etag
    [note] = _texts(_svg(bar), "sum")
    numbers = [_number(w) for w in note.split() if w[-1].isdigit()]
    assert abs(numbers[0] - stored["baseValue"]) <= ROUNDING
    assert abs(numbers[0] + numbers[1] - numbers[2]) <= 2 * ROUNDING
    assert abs(numbers[2] - stored["outputValue"]) <= ROUNDING

    admin = make_key(settings, "admin", "ops")
    for path in (f"/explanations/{p['id']}.png", f"/explanations/{p['id']}.PNG?kind=bar"):
        png = _get(http, admin, path)
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        width, height = _png_size(png.content)
        assert width == 800 and 400 <= height <= 1200, (width, height)
    # Several at once (drawn one at a time, off the event loop): the same bytes each time.
    path = f"/explanations/{p['id']}.png"
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: _get(http, admin, path), range(6)))
    assert {(r.status_code, r.content) for r in answers} == {(200, answers[0].content)}


def test_graphql_links_to_the_pictures(
    http: httpx.Client, predictor: Api, settings: Settings, example_tasks: dict[str, TaskSpec]
) -> None:
    task = example_tasks["loan_default"]
    p = _predict(predictor, task.name, example_inputs(task, 1, seed=3)[0])
    assert predictor(URLS, id=p["id"])["data"]["prediction"] == {
        "svg": None, "png": None, "late": None}  # predictors may not fetch the pictures
    auditor = Api(http, make_key(settings, "auditor", "compliance"))
    urls = auditor(URLS, id=p["id"])["data"]["prediction"]
    assert urls == {"svg": f"/explanations/{p['id']}.svg",
                    "png": f"/explanations/{p['id']}.png?kind=bar",
                    "late": f"/explanations/{p['id']}.svg?class=late"}
    for url in urls.values():
        assert _get(http, auditor.key, url).status_code == 200


def test_multiclass_pictures_explain_any_class(
    http: httpx.Client, predictor: Api, settings: Settings, example_tasks: dict[str, TaskSpec]
) -> None:
    """loan_default has three classes; each class's output is its centred log-probability."""
    task = example_tasks["loan_default"]
    auditor = make_key(settings, "auditor", "compliance")
    p = _predict(predictor, task.name, example_inputs(task, 1, seed=21)[0])
    probs = {c["label"]: c["probability"] for c in p["probabilities"]}
    mean_log = sum(math.log(v) for v in probs.values()) / len(probs)
    predicted = _svg(_get(http, auditor, f"/explanations/{p['id']}.svg"))
    _check_waterfall(predicted, p, {"class": p["label"], **p["explanation"]}, task)
    outputs = {}
    for name in task.classes:
        root = _svg(_get(http, auditor, f"/explanations/{p['id']}.svg?class={name}&top=40"))
        output = _note_value(root, "output-value")
        assert abs(output - (math.log(probs[name]) - mean_log)) <= ROUNDING, name
        values = _shown_contributions(root, len(task.model_columns))
        assert abs(_note_value(root, "base-value") + sum(values) - output) <= ROUNDING * 20
        assert f"explaining {name} ({probability_text(probs[name])})" in (
            root.findtext(f"{SVG}title") or "")
        outputs[name] = output
    assert abs(sum(outputs.values())) <= 3 * ROUNDING  # centred: the classes add to zero


def test_only_auditors_and_admins_see_pictures(
    http: httpx.Client, predictor: Api, settings: Settings, example_tasks: dict[str, TaskSpec]
) -> None:
    task = example_tasks["breast_cancer"]
    p = _predict(predictor, task.name, example_inputs(task, 1)[0])
    path = f"/explanations/{p['id']}.svg"
    for key, status, code in [
        (None, 401, "UNAUTHENTICATED"),
        ("arb_not-a-key", 401, "UNAUTHENTICATED"),
        (predictor.key, 403, "FORBIDDEN"),  # even of its own prediction
        (make_key(settings, "reviewer", "reviewer"), 403, "FORBIDDEN"),
    ]:
        response = _get(http, key, path)
        assert response.status_code == status, (key, response.text)
        assert response.json()["errors"][0]["extensions"]["code"] == code
        assert response.headers.get("www-authenticate") == ("Bearer" if status == 401 else None)
    for role in ("auditor", "admin"):
        assert _get(http, make_key(settings, role, role), path).status_code == 200


def test_bad_requests_name_what_is_wrong(
    http: httpx.Client, predictor: Api, settings: Settings, example_tasks: dict[str, TaskSpec]
) -> None:
    task = example_tasks["breast_cancer"]
    p = _predict(predictor, task.name, example_inputs(task, 1)[0])
    admin = make_key(settings, "admin", "ops")
    for path, status, words in [
        ("/explanations/0b7e1f7c-6a59-4d0f-9d5c-1f2f0f4b7a11.svg", 404, "no prediction"),
        ("/explanations/bad%00id.svg", 404, "no prediction"),
        (f"/explanations/{p['id']}.gif", 400, "unknown picture format 'gif'"),
        (f"/explanations/{p['id']}", 400, "<predictionId>.svg"),
        (f"/explanations/{p['id']}.svg?kind=pie", 400, "unknown chart kind 'pie'"),
        (f"/explanations/{p['id']}.svg?class=late", 400, "no class 'late'"),
        (f"/explanations/{p['id']}.svg?top=0", 400, "top must be"),
    ]:
        response = _get(http, admin, path)
        assert response.status_code == status, (path, response.text)
        assert words in response.json()["errors"][0]["message"], (path, response.text)
