"""The Draw & inspect tab's endpoints: one image, drawn or from the test split, through the model.

Each answer holds the image the model sees, its probabilities, every asked layer's activations and,
when asked, an attribution map (attribution.py), all from one request.
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from ..data.drawing import MAX_SIDE, check_drawing, normalize_drawing
from . import encode
from .attribution import attribution_answer
from .common import ModelThread, check_layers
from .store import ApiError, LoadedRun, RunStore


class PredictBody(BaseModel):
    """An image to classify: ``pixels`` as rows of numbers, or ``data`` (base64 bytes) with its size."""

    model_config = ConfigDict(extra="forbid")

    pixels: list[list[float]] | None = Field(
        default=None, description="rows of pixel values 0..255, ink high"
    )
    data: str | None = Field(default=None, description="base64 of height*width uint8 pixels, row-major")
    width: int | None = None
    height: int | None = None
    drawing: bool = Field(
        default=True,
        description="true: a free drawing, normalized the way MNIST's digits were; "
        "false: an exact 28x28 image",
    )
    layers: list[str] | None = Field(default=None, description="layers to return (all when omitted)")
    attribution: str | None = Field(
        default=None, description="also an attribution map by this method (gradient, ig, ...)"
    )
    target: str | None = Field(
        default=None, description="the map's target: a class (4) or a pair (4,9); default the predicted class"
    )


def predict_router(store: RunStore, on_model_thread: ModelThread) -> APIRouter:
    router = APIRouter()

    @router.post("/api/predict")
    @on_model_thread
    def predict(body: PredictBody, run: str | None = None) -> dict[str, Any]:
        """Probabilities and every layer's activations for one image, drawn or exact 28x28."""
        start = time.perf_counter()
        loaded = store.get(run)
        layers = check_layers(loaded, body.layers)
        pixels = _decode_pixels(body)
        if body.drawing:
            image = normalize_drawing(pixels)
        else:
            if pixels.shape != (28, 28):
                raise ApiError(
                    400,
                    f"with drawing=false the image must be 28x28, got {pixels.shape[0]}x{pixels.shape[1]}",
                )
            image = pixels.astype(np.float32)
        answer = _image_answer(loaded, image, layers, body.attribution, body.target)
        answer["blank"] = bool(image.max() <= 0)
        answer["server_ms"] = round((time.perf_counter() - start) * 1000, 2)
        return answer

    @router.get("/api/test-image")
    @on_model_thread
    def test_image(
        run: str | None = None,
        index: int = Query(..., description="index in the test split"),
        attribution: str | None = Query(None, description="also an attribution map by this method"),
        target: str | None = Query(None, description="the map's target: a class (4) or a pair (4,9)"),
    ) -> dict[str, Any]:
        """Test image number ``index`` (canonical order), its label, and the model's view of it."""
        loaded = store.get(run)
        ds = store.dataset_of(loaded)
        n = len(ds.test_images)
        if not 0 <= index < n:
            raise ApiError(
                400, f"test index {index} is out of range; the test split has {n} images (0..{n - 1})"
            )
        image = ds.test_images[index].astype(np.float32)
        answer = _image_answer(loaded, image, loaded.model.layer_names(), attribution, target)
        answer.update(index=index, label=int(ds.test_labels[index]))
        return answer

    return router


def _image_answer(
    loaded: LoadedRun, image: np.ndarray, layers: list[str], attribution: str | None, target: str | None
) -> dict[str, Any]:
    """What the page shows for one image: probabilities and activations from one forward pass, and
    the attribution map when a method is asked for."""
    wanted = list(dict.fromkeys([*layers, "output"]))
    acts = loaded.model.activations(image[None], wanted)
    proba = acts["output"][0]
    answer = {
        "image": encode.image_u8(image),
        "probabilities": [float(p) for p in proba],
        "predicted": int(np.argmax(proba)),
        "layers": [encode.activation(name, acts[name][0]) for name in layers],
    }
    if attribution:
        answer["attribution"] = attribution_answer(loaded.model, image, attribution, target)
    return answer


def _decode_pixels(body: PredictBody) -> np.ndarray:
    if (body.pixels is None) == (body.data is None):
        raise ApiError(
            400, "give the image either as 'pixels' (rows of numbers) or as 'data' with 'width' and 'height'"
        )
    if body.pixels is not None:
        rows = body.pixels
        if not rows or any(len(r) != len(rows[0]) for r in rows) or not rows[0]:
            raise ApiError(400, "'pixels' must be a non-empty rectangle: rows of equal length")
        if len(rows) > MAX_SIDE or len(rows[0]) > MAX_SIDE:
            raise ApiError(400, f"image is {len(rows)}x{len(rows[0])}; at most {MAX_SIDE}x{MAX_SIDE} pixels")
        array = np.asarray(rows, np.float64)
    else:
        if body.width is None or body.height is None:
            raise ApiError(400, "'data' needs 'width' and 'height'")
        if not (1 <= body.width <= MAX_SIDE and 1 <= body.height <= MAX_SIDE):
            raise ApiError(400, f"width and height must be 1..{MAX_SIDE}, got {body.width}x{body.height}")
        try:
            raw = base64.b64decode(body.data, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "'data' is not valid base64") from None
        if len(raw) != body.width * body.height:
            raise ApiError(
                400,
                f"'data' holds {len(raw)} bytes but width*height is {body.width * body.height} (one byte "
                "per pixel)",
            )
        array = np.frombuffer(raw, np.uint8).reshape(body.height, body.width)
    return check_drawing(array)
