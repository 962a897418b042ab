"""Pictures of stored predictions' explanations: who may see them, the explanation of any
class read back from what was stored, their stable address, their ETag, their drawing."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any
from urllib.parse import quote

import anyio
import matplotlib

from app.access.roles import READERS, Principal, Role
from app.db.tables import Prediction
from app.errors import BadRequestError, PermissionDeniedError
from app.predictions.charts import (
    TOP_FEATURES,
    ChartKind,
    ClassExplanation,
    FeatureContribution,
    ImageFormat,
    draw,
)
from app.predictions.explanation import Explanation
from app.predictions.queries import get_prediction
from app.predictions.services import Services

# Pictures show inputs and explanations in full: the roles that read everything.
PICTURE_ROLES = READERS
# Part of every ETag: bump it when the drawing changes, so caches fetch the new picture.
CHART_VERSION = "1"


def may_see_pictures(role: Role) -> bool:
    return role in PICTURE_ROLES


def picture_path(prediction_id: str, fmt: ImageFormat = ImageFormat.SVG,
                 kind: ChartKind = ChartKind.WATERFALL, class_name: str | None = None) -> str:
    """The picture's URL path (relative to the server), e.g. ``/explanations/<id>.svg``."""
    query = [] if kind is ChartKind.WATERFALL else [f"kind={kind.value}"]
    if class_name is not None:
        query.append(f"class={quote(class_name, safe='')}")
    return f"/explanations/{quote(prediction_id, safe='')}.{fmt.value}" + (
        "?" + "&".join(query) if query else "")


async def stored_explanation(
    services: Services, caller: Principal, prediction_id: str, class_name: str | None = None
) -> ClassExplanation:
    """The stored explanation of ``class_name`` (default: the predicted class)."""
    if not may_see_pictures(caller.role):
        raise PermissionDeniedError(
            f"role {caller.role.value} may not see explanation pictures; "
            f"they are for {' and '.join(sorted(r.value for r in PICTURE_ROLES))} keys")
    return class_explanation(await get_prediction(services, caller, prediction_id), class_name)


def class_explanation(p: Prediction, class_name: str | None = None) -> ClassExplanation:
    """One class's explanation from a stored prediction. Multiclass predictions store every
    class; a binary one stores the predicted class, and the other is its exact mirror."""
    classes = tuple(c["label"] for c in p.probabilities)
    stored = Explanation.from_json(p.explanation)
    wanted = stored.explained_class if class_name is None else class_name
    if wanted not in classes:
        raise BadRequestError(
            f"task {p.task!r} has no class {wanted!r}; its classes: {', '.join(classes)}")
    base, output, shap = _class_values(p.id, stored, classes, wanted)
    probability = next(c["probability"] for c in p.probabilities if c["label"] == wanted)
    return ClassExplanation(
        task=p.task, release=p.release_version, prediction_id=p.id, classes=classes,
        label=p.label, confidence=p.confidence, explained_class=wanted,
        class_probability=probability, space=stored.space, status=stored.status,
        base=base, output=output,
        contributions=tuple(
            FeatureContribution(c["feature"], c["value"], s, bool(c.get("derived")))
            for c, s in zip(stored.contributions or [], shap, strict=True)),
    )


def _class_values(prediction_id: str, stored: Explanation, classes: tuple[str, ...],
                  wanted: str) -> tuple[float, float, list[float]]:
    shap = [float(c["shap"]) for c in stored.contributions or []]
    base, output = float(stored.base_value), float(stored.output_value)
    if wanted == stored.explained_class:
        return base, output, shap
    if len(classes) == 2:
        # Two classes: log-odds of one are minus those of the other, and probabilities
        # add to one, so every SHAP value flips sign (a constant has none).
        if stored.space == "PROBABILITY":
            return 1.0 - base, 1.0 - output, [-s for s in shap]
        return -base, -output, [-s for s in shap]
    for other in stored.other_classes or []:
        if other.name == wanted:
            return float(other.base_value), float(other.output_value), list(other.shap)
    raise BadRequestError(
        f"prediction {prediction_id} was stored before explanations of every class were "
        f"kept; only its predicted class {stored.explained_class!r} can be drawn")


def picture_etag(ex: ClassExplanation, kind: ChartKind, fmt: ImageFormat, top: int) -> str:
    """A strong ETag from everything the picture is drawn from (a stored prediction's
    explanation never changes), the drawing's version and matplotlib's."""
    content: dict[str, Any] = {"chart": CHART_VERSION, "matplotlib": matplotlib.__version__,
                               "kind": kind.value, "format": fmt.value, "top": top,
                               "explanation": asdict(ex)}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode())
    return f'"{digest.hexdigest()[:32]}"'


async def render(ex: ClassExplanation, kind: ChartKind, fmt: ImageFormat,
                 top: int = TOP_FEATURES, limiter: anyio.CapacityLimiter | None = None
                 ) -> bytes:
    """The picture's bytes, drawn on a worker thread (drawing blocks for ~0.1 s). Pass a
    limiter of one: drawings are serialised anyway, and requests should wait for it here
    rather than each hold one of the threads predictions run on."""
    return await anyio.to_thread.run_sync(draw, ex, kind, fmt, top, limiter=limiter)
