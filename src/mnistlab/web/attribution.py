"""The attribution map the page shows beside the probabilities (mnistlab.inspect.attribution).

Presentation only: the library computes the map; this scales it to bytes for a canvas, 128 meaning
zero, so the page can paint raising pixels red and lowering ones blue on one symmetric scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from ..inspect.attribution import LIVE_METHODS, attribute
from ..model_api import InspectableModel
from .encode import b64_u8


def attribution_answer(
    model: InspectableModel, image: np.ndarray, method: str, target: str | None
) -> dict[str, Any]:
    """One image's map for ``method`` and ``target`` (None: the predicted class), ready to paint.

    A request the model cannot answer (a bad target, Grad-CAM without conv layers, a model without
    gradients) gives ``{"error": ...}``: the probabilities and activations of the update still show.
    """
    try:
        result = attribute(model, image, target or None, method)
    except ConfigError as exc:
        return {"method": method, "error": str(exc)}
    except NotImplementedError:
        return {"method": method, "error": f"this {model.kind} model gives no gradients; choose occlusion"}
    values = result.maps[0].astype(np.float64)
    limit = float(np.abs(values).max())
    scaled = 128 + 127 * values / limit if limit > 0 else np.full(values.shape, 128.0)
    answer: dict[str, Any] = {
        "method": method,
        "target": result.target.describe(0),
        "data": b64_u8(np.rint(scaled)),
        "limit": limit,
        "objective": float(result.objective[0]),
        "ms": round(result.seconds * 1000, 2),
        "live": method in LIVE_METHODS,
    }
    if result.completeness_error is not None:
        answer["completeness_error"] = float(result.completeness_error[0])
    if result.layer:
        answer["layer"] = result.layer
    return answer

