"""Drawing explanations: rows, labels, readability, safety and determinism of the bytes."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

from matplotlib.backends.backend_agg import FigureCanvasAgg

from app.predictions.charts import (
    LABEL_CHARS,
    LABEL_LINES,
    ChartKind,
    ClassExplanation,
    FeatureContribution,
    ImageFormat,
    chart_rows,
    draw,
    explanation_figure,
    other_features,
    probability_text,
    row_label,
)

LONG = "average_monthly_balance_of_all_linked_savings_and_checking_accounts_in_euros"


def _explanation(n: int = 25, feature: str = "feature", value: object = 1.5) -> ClassExplanation:
    contributions = tuple(
        FeatureContribution(f"{feature}_{i}", value, (-1) ** i * 3.0 / (i + 1)) for i in range(n))
    base = -0.4
    return ClassExplanation(
        task="churn", release=3, prediction_id="0b7e1f7c-6a59-4d0f-9d5c-1f2f0f4b7a11",
        classes=("stays", "leaves"), label="leaves", confidence=0.91, explained_class="leaves",
        class_probability=0.91, space="LOG_ODDS", status="OK", base=base,
        output=base + sum(c.shap for c in contributions), contributions=contributions)


def test_rows_are_ranked_by_size_and_the_smallest_fold_into_one() -> None:
    ex = _explanation(25)
    rows = chart_rows(ex.contributions, top=10)
    assert [r.label.split(" = ")[0] for r in rows[:10]] == [f"feature_{i}" for i in range(10)]
    assert rows[10].label == "15 other features"
    assert abs(rows[10].shap - sum(c.shap for c in ex.contributions[10:])) < 1e-12
    assert abs(sum(r.shap for r in rows) - (ex.output - ex.base)) < 1e-12
    # One feature past the top is shown by name, never as "1 other features".
    assert [r.label.split(" = ")[0] for r in chart_rows(ex.contributions, top=24)] == [
        f"feature_{i}" for i in range(25)]


def test_the_folded_row_counts_its_features_in_words() -> None:
    texts = {n: draw(_explanation(n), ChartKind.BAR, ImageFormat.SVG, top=10).decode()
             for n in (11, 12, 13)}
    assert "other feature" not in texts[11]  # one past the top is drawn by name
    assert "2 other features" in texts[12] and "3 other features" in texts[13]
    assert "1 other feature" not in "".join(texts.values())
    assert other_features(1) == "1 other feature" and other_features(2) == "2 other features"


def test_labels_wrap_and_abbreviate_instead_of_running_off() -> None:
    label = row_label(FeatureContribution(LONG, 123456.0, 0.1))
    assert "".join(label.split()) == f"{LONG}=123,456"
    assert all(len(line) <= LABEL_CHARS for line in label.split("\n"))
    huge = row_label(FeatureContribution(LONG * 4, "x", 0.1))
    assert len(huge.split("\n")) == LABEL_LINES and huge.endswith("\u2026")
    assert row_label(FeatureContribution("has_cosigner", True, 0.1)) == "has_cosigner = true"
    assert row_label(FeatureContribution("ratio", 0.25, 0.1, derived=True)) == (
        "ratio = 0.25 (derived)")
    assert row_label(FeatureContribution("income", None, 0.1)) == "income = missing"
    assert row_label(FeatureContribution("area", 1688.4, 0.1)) == "area = 1,688.4"
    assert row_label(FeatureContribution("delta", -0.5, 0.1)) == "delta = \u22120.5"


def test_probabilities_near_certainty_are_not_rounded_to_it() -> None:
    assert [probability_text(p) for p in (0.97345, 0.99996, 1.0, 0.00002, 0.0)] == [
        "p = 0.973", "p > 0.999", "p = 1.000", "p < 0.001", "p = 0.000"]


def test_every_text_fits_inside_the_picture() -> None:
    ex = _explanation(12, feature=LONG)
    for kind in ChartKind:
        fig = explanation_figure(ex, kind)
        renderer = FigureCanvasAgg(fig).get_renderer()
        fig.draw(renderer)
        drawn = fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)  # pixels
        box = fig.bbox
        assert box.x0 - 1 <= drawn.x0 and drawn.x1 <= box.x1 + 1, (kind, drawn, box)
        assert box.y0 - 1 <= drawn.y0 and drawn.y1 <= box.y1 + 1, (kind, drawn, box)
        labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        assert any(label.startswith(LONG[:20]) for label in labels)
        assert fig.bbox.width == 800


def test_svg_keeps_text_as_text_and_runs_nothing() -> None:
    ex = _explanation(5, feature="<script>alert(1)</script>", value="\" onload=\"alert(2)")
    root = ET.fromstring(draw(ex, ChartKind.WATERFALL, ImageFormat.SVG))
    tags = {element.tag.rsplit("}", 1)[-1] for element in root.iter()}
    assert "script" not in tags and "text" in tags
    assert not any(name.startswith("on") for e in root.iter() for name in e.attrib)
    texts = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert any(t.startswith("<script>alert(1)</script>_0 = ") for t in texts)


def test_drawing_is_deterministic_across_threads() -> None:
    ex = _explanation(30)
    jobs = [(kind, fmt) for kind in ChartKind for fmt in ImageFormat] * 3
    serial = {(k, f): draw(ex, k, f) for k, f in jobs}
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda job: draw(ex, *job), jobs))
    assert parallel == [serial[job] for job in jobs]
    assert serial[(ChartKind.WATERFALL, ImageFormat.PNG)][:8] == b"\x89PNG\r\n\x1a\n"
