"""Arrays to compact JSON: uint8 pixels in base64, which the page paints straight into canvases.

This is presentation only (scaling numbers to grey levels); every number shown is computed by the
library.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np


def b64_u8(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.uint8).tobytes()).decode("ascii")


def image_u8(image: np.ndarray) -> str:
    """A (28, 28) pixel image (0..255, float or int) as base64 bytes."""
    return b64_u8(np.clip(np.rint(np.asarray(image, np.float32)), 0, 255))


def activation(name: str, values: np.ndarray) -> dict[str, Any]:
    """One image's activations of a layer, (C, H, W) maps or (units,), scaled per layer to 0..255.

    One scale for the whole layer (not per map) keeps quiet maps dark next to busy ones, which is
    what tells the eye where the layer reacts. ``lo``/``hi`` give the real range.
    """
    values = np.asarray(values, np.float32)
    finite = np.isfinite(values)
    lo = float(min(0.0, values[finite].min())) if finite.any() else 0.0
    hi = float(values[finite].max()) if finite.any() else 0.0
    span = hi - lo
    scaled = (
        np.zeros(values.shape, np.float32)
        if span <= 0
        else (np.where(finite, values, lo) - lo) * (255.0 / span)
    )
    return {"name": name, "shape": list(values.shape), "lo": lo, "hi": hi, "data": b64_u8(np.rint(scaled))}
