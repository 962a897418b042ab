"""Pictures of one explanation: a waterfall or a bar chart, as SVG or PNG bytes.

Pure: an explanation in, bytes out. Drawn with matplotlib's object API (a ``Figure`` saved
by its own canvas), never pyplot's global figure manager. Matplotlib documents itself as
not thread-safe (font caches and rcParams are shared), so drawings are serialised by a
lock; a drawing takes tens of milliseconds, and callers run it off the event loop.
"""

from __future__ import annotations

import io
import textwrap
import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

# Okabe-Ito colours, told apart with every common colour-vision deficiency; the bar labels
# carry a + or - sign as well, so colour is never the only cue.
POSITIVE_COLOUR = "#D55E00"  # vermillion: raises the output
NEGATIVE_COLOUR = "#0072B2"  # blue: lowers it
LINE_COLOUR = "#555555"
WIDTH_INCHES = 8.0
DPI = 100  # 800 px wide
ROW_INCHES = 0.36
LINE_INCHES = 0.14  # extra height per wrapped label line
FRAME_INCHES = 2.3  # title, axis label, legend
TOP_FEATURES = 10
TOP_FEATURES_MAX = 40
LABEL_CHARS = 38  # a label line wraps here; at most LABEL_LINES lines, then an ellipsis
LABEL_LINES = 3
TITLE_CHARS = 95
MINUS = "\u2212"  # the typographic minus, as matplotlib's own tick labels use

# Text stays text in SVG (searchable, selectable, readable by screen readers), and ids are
# derived from a fixed salt so that one explanation always gives the same bytes.
_SVG_RC: dict[Any, Any] = {"svg.fonttype": "none", "svg.hashsalt": "arbiter-explanation"}
_DRAWING = threading.Lock()


class ChartKind(StrEnum):
    """WATERFALL walks from the base value to the output; BAR shows each contribution."""

    WATERFALL = "waterfall"
    BAR = "bar"


class ImageFormat(StrEnum):
    """File formats a picture is drawn in; the value is the URL's extension."""

    SVG = "svg"
    PNG = "png"

    @property
    def media_type(self) -> str:
        return "image/svg+xml" if self is ImageFormat.SVG else "image/png"


@dataclass(frozen=True)
class FeatureContribution:
    """What one input feature added to the explained output."""

    feature: str
    value: Any  # the input's value (a derived feature's computed value)
    shap: float
    derived: bool = False


@dataclass(frozen=True)
class ClassExplanation:
    """One class's explanation of one stored prediction, with what the picture's title
    names: ``base + sum(shap) == output`` in ``space`` (LOG_ODDS or PROBABILITY)."""

    task: str
    release: int
    prediction_id: str
    classes: tuple[str, ...]
    label: str  # the predicted class
    confidence: float  # its probability
    explained_class: str
    class_probability: float
    space: str
    status: str  # OK, or PARTIAL when a member failed and the others decided
    base: float
    output: float
    contributions: tuple[FeatureContribution, ...]


@dataclass(frozen=True)
class ChartRow:
    """One bar: a feature, or the features folded together beyond the top ones."""

    label: str
    shap: float


def number(x: float, signed: bool = False) -> str:
    """Three decimals (scientific below that), with a typographic minus."""
    if x != 0 and abs(x) < 0.0005:
        text = f"{x:+.1e}" if signed else f"{x:.1e}"
    else:
        text = f"{x:+.3f}" if signed else f"{x:.3f}"
    return text.replace("-", MINUS)


def _value_text(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        # 55,000 rather than 5.5e+04; four significant digits below a thousand.
        text = (f"{value:,.2f}".rstrip("0").rstrip(".") if abs(value) >= 1000
                else f"{value:.4g}")
        return text.replace("-", MINUS)
    return str(value)


def row_label(c: FeatureContribution) -> str:
    """``feature = value``, wrapped so that a long name never runs off the picture."""
    text = f"{c.feature} = {_value_text(c.value)}" + (" (derived)" if c.derived else "")
    lines = textwrap.wrap(text, LABEL_CHARS, break_long_words=True) or [text]
    if len(lines) > LABEL_LINES:
        lines = lines[:LABEL_LINES]
        lines[-1] = lines[-1][: LABEL_CHARS - 1] + "\u2026"
    return "\n".join(lines)


def chart_rows(contributions: tuple[FeatureContribution, ...], top: int) -> list[ChartRow]:
    """Largest absolute contribution first; beyond ``top`` the rest fold into one row
    (never a fold of a single feature: that one is shown by name instead)."""
    ordered = sorted(contributions, key=lambda c: abs(c.shap), reverse=True)
    if len(ordered) <= top + 1:
        return [ChartRow(row_label(c), c.shap) for c in ordered]
    rest = ordered[top:]
    return [ChartRow(row_label(c), c.shap) for c in ordered[:top]] + [
        ChartRow(other_features(len(rest)), sum(c.shap for c in rest))
    ]


def other_features(n: int) -> str:
    """The folded row's label: ``1 other feature``, ``2 other features``."""
    return f"{n} other feature{'' if n == 1 else 's'}"


def probability_text(p: float) -> str:
    """``p = 0.973``; never ``p = 1.000`` for a probability that is not one."""
    if p >= 0.9995 and p < 1:
        return "p > 0.999"
    if 0 < p < 0.0005:
        return "p < 0.001"
    return f"p = {p:.3f}"


def space_text(ex: ClassExplanation) -> str:
    if ex.space == "PROBABILITY":
        return "probability"
    return "log-odds" if len(ex.classes) == 2 else "centred log-probability"


def title_text(ex: ClassExplanation) -> str:
    partial = "  [PARTIAL: a member failed]" if ex.status != "OK" else ""
    lines = [
        f"{ex.task} \u00b7 release {ex.release} \u00b7 prediction {ex.prediction_id}",
        f"predicted {ex.label} ({probability_text(ex.confidence)}) \u00b7 explaining "
        f"{ex.explained_class} ({probability_text(ex.class_probability)}) in "
        f"{space_text(ex)}{partial}",
    ]
    return "\n".join(part for line in lines for part in textwrap.wrap(line, TITLE_CHARS))


def draw(ex: ClassExplanation, kind: ChartKind, fmt: ImageFormat, top: int = TOP_FEATURES
         ) -> bytes:
    """The picture's bytes: 800 px wide, as tall as its rows need."""
    title = title_text(ex)
    with _DRAWING, matplotlib.rc_context(_SVG_RC):
        fig = explanation_figure(ex, kind, top)
        buffer = io.BytesIO()
        metadata = ({"Title": title, "Date": None} if fmt is ImageFormat.SVG
                    else {"Title": title, "Software": None})
        fig.savefig(buffer, format=fmt.value, dpi=DPI, metadata=metadata)
    return buffer.getvalue()


def explanation_figure(ex: ClassExplanation, kind: ChartKind, top: int = TOP_FEATURES
                       ) -> Figure:
    """The chart as an unsaved figure; ``draw`` builds and saves it under the lock."""
    rows = chart_rows(ex.contributions, top)
    lines = max((r.label.count("\n") + 1 for r in rows), default=1)
    row_inches = ROW_INCHES + LINE_INCHES * (lines - 1)
    height = FRAME_INCHES + row_inches * (len(rows) + 1.5)
    fig = Figure(figsize=(WIDTH_INCHES, height), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    if kind is ChartKind.WATERFALL:
        _waterfall(ax, ex, rows)
    else:
        _bars(ax, ex, rows)
    n = len(rows)
    ax.set_yticks(range(n), [r.label for r in reversed(rows)], fontsize=9)
    ax.set_ylim(-1.4, n + 0.4)
    fig.suptitle(title_text(ex), x=0.01, ha="left", fontsize=10)
    space = f"{space_text(ex)} of {ex.explained_class}"
    ax.set_xlabel(f"SHAP contribution to the {space}" if kind is ChartKind.BAR else
                  f"{space} (base value + contributions = output)", fontsize=9)
    fig.legend(handles=[Patch(color=POSITIVE_COLOUR, label=f"+ raises the {space_text(ex)}"),
                        Patch(color=NEGATIVE_COLOUR, label=f"{MINUS} lowers it")],
               loc="outside lower center", ncols=2, fontsize=9, frameon=False)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(axis="y", length=0)
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    return fig


def _colour(shap: float) -> str:
    return POSITIVE_COLOUR if shap >= 0 else NEGATIVE_COLOUR


def _set_xlim(ax: Axes, points: list[float]) -> None:
    """Room on both sides for the value labels written beside the bars."""
    low, high = min(points), max(points)
    span = high - low or 1.0
    ax.set_xlim(low - 0.2 * span, high + 0.2 * span)


def _bar_label(ax: Axes, y: float, end: float, shap: float, gid: str) -> None:
    pad = 0.01 * (ax.get_xlim()[1] - ax.get_xlim()[0])
    text = ax.text(end + (pad if shap >= 0 else -pad), y, number(shap, signed=True),
                   va="center", ha="left" if shap >= 0 else "right", fontsize=8.5,
                   color=_colour(shap),
                   bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.6})
    text.set_gid(gid)


def _line_note(ax: Axes, x: float, y: float, text: str, gid: str) -> None:
    """A note beside a vertical line, on the side with more room."""
    low, high = ax.get_xlim()
    right = x < (low + high) / 2
    note = ax.text(x, y, f" {text} " if right else f"{text} ", va="center",
                   ha="left" if right else "right", fontsize=9, color="#222222")
    note.set_gid(gid)


def _waterfall(ax: Axes, ex: ClassExplanation, rows: list[ChartRow]) -> None:
    """Bottom row starts at the base value, each row starts where the one below it ended,
    and the top row (the largest contribution) ends at the output."""
    n = len(rows)
    starts: list[float] = []
    position = ex.base
    for row in reversed(rows):
        starts.append(position)
        position += row.shap
    _set_xlim(ax, [ex.base, ex.output, *starts, position])
    for y, (row, start) in enumerate(zip(reversed(rows), starts, strict=True)):
        ax.barh(y, row.shap, left=start, height=0.62, color=_colour(row.shap))
        if y + 1 < n:  # a thin step to where the next bar starts
            ax.plot([start + row.shap] * 2, [y + 0.31, y + 0.69], color=LINE_COLOUR,
                    linewidth=0.8)
        _bar_label(ax, y, start + row.shap, row.shap, f"contribution-{n - 1 - y}")
    ax.axvline(ex.base, color=LINE_COLOUR, linestyle="--", linewidth=0.9)
    ax.axvline(ex.output, color="#000000", linewidth=1.1)
    _line_note(ax, ex.base, -0.95, f"base value {number(ex.base)}", "base-value")
    _line_note(ax, ex.output, n - 0.05, f"output {number(ex.output)}", "output-value")


def _bars(ax: Axes, ex: ClassExplanation, rows: list[ChartRow]) -> None:
    """Each contribution from zero; the base and output stated above the bars."""
    n = len(rows)
    _set_xlim(ax, [0.0, *(r.shap for r in rows)])
    for y, row in enumerate(reversed(rows)):
        ax.barh(y, row.shap, height=0.62, color=_colour(row.shap))
        _bar_label(ax, y, row.shap, row.shap, f"contribution-{n - 1 - y}")
    ax.axvline(0.0, color="#000000", linewidth=0.9)
    total = sum(c.shap for c in ex.contributions)
    note = ax.text(ax.get_xlim()[0], -0.95, f" base value {number(ex.base)}  +  "
                   f"contributions {number(total, signed=True)}  =  output {number(ex.output)}",
                   va="center", ha="left", fontsize=9, color="#222222")
    note.set_gid("sum")
