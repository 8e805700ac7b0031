"""The Compare and Features tabs' endpoints: the inspect library's class comparison and optimal input
patterns, as `inspect compare` and `inspect oip` draw them, each answer cached per version of the run.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, Query

from ..data import Dataset
from ..inspect.activations import default_oip_layer
from ..model_api import InspectableModel
from . import encode
from .common import ModelThread, check_classes, check_layers
from .store import ApiError, LoadedRun, RunStore

MAX_OIP_UNITS = 256
MAX_CACHED = 24  # compare and OIP answers per run (each up to a few hundred KB of PNG)


def analysis_router(store: RunStore, on_model_thread: ModelThread) -> APIRouter:
    router = APIRouter()

    @router.get("/api/compare")
    @on_model_thread
    def compare(
        run: str | None = None,
        a: int = Query(..., description="class A"),
        b: int = Query(..., description="class B"),
        n: int = Query(3, ge=1, le=8, description="example images per class"),
        layer: str | None = Query(None, description="one layer (default: the conv and dense layers)"),
    ) -> dict[str, Any]:
        """What separates class A from class B (mnistlab.inspect.compare_classes, as `inspect compare`)."""
        loaded = store.get(run)
        ds = store.dataset_of(loaded)
        check_classes(ds, a=a, b=b)
        if a == b:
            raise ApiError(400, f"a and b are both {a}; choose two different classes")
        layers = check_layers(loaded, [layer]) if layer else None
        return _cached(
            loaded, ("compare", a, b, n, layer), lambda: compare_answer(loaded.model, ds, a, b, n, layers)
        )

    @router.get("/api/oip")
    @on_model_thread
    def oip(
        run: str | None = None,
        layer: str | None = Query(
            None, description="layer (default: the last conv layer, or the first hidden layer)"
        ),
        steps: int = Query(100, ge=1, le=500, description="gradient steps"),
    ) -> dict[str, Any]:
        """Optimal input patterns of a layer's units (mnistlab.inspect.optimize_inputs, as `inspect oip`)."""
        loaded = store.get(run)
        if layer is not None:
            check_layers(loaded, [layer])
        return _cached(
            loaded, ("oip", layer, steps),
            lambda: oip_answer(loaded.model, loaded.layer_shapes, layer, steps),
        )

    return router


def _cached(loaded: LoadedRun, key: tuple, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A slow answer computed once per version of the run; the oldest are dropped past MAX_CACHED."""
    with loaded.lock:
        if key in loaded.cache:
            return loaded.cache[key]
    answer = compute()
    with loaded.lock:
        loaded.cache[key] = answer
        slow = [k for k in loaded.cache if isinstance(k, tuple)]
        for old in slow[: max(0, len(slow) - MAX_CACHED)]:
            del loaded.cache[old]
    return answer


def _inspect_module() -> Any:
    try:
        from .. import inspect as inspect_lib

        inspect_lib.compare_classes  # noqa: B018 - present once the inspect library is installed
    except (ImportError, AttributeError):
        raise ApiError(
            501, "this mnistlab has no inspect library (mnistlab.inspect); update mnistlab"
        ) from None
    return inspect_lib


def _png(fig: Any) -> str:
    from ..inspect.report import figure_png

    return base64.b64encode(figure_png(fig, 90, tight=False)).decode("ascii")


def compare_answer(
    model: InspectableModel, ds: Dataset, a: int, b: int, n: int, layers: list[str] | None
) -> dict[str, Any]:
    """The Compare tab's figures (PNG) and tables (the library's Table as JSON) for classes a and b."""
    lib = _inspect_module()
    from ..viz.compare import plot_contrast, plot_ranking

    comparison = lib.compare_classes(model, ds, a, b, n=n, layers=layers)
    names = ds.class_names
    a_name, b_name = names[a], names[b]
    figures = [
        {
            "title": f"{layer}: {a_name} (top row) vs {b_name} (bottom row)",
            "caption": "Red circles: strongly active in every image of A and in no image of B. "
            "Yellow: in every image of A and in some image of B.",
            "png": _png(plot_contrast(comparison, layer)),
        }
        for layer in comparison.layers
    ]
    top = comparison.table(15)
    if comparison.rankings:
        figures.append(
            {
                "title": "Most discriminative units over the two whole classes",
                "caption": f"AUC: probability that a {a_name} scores higher than a {b_name}; "
                "d: standardized mean difference.",
                "png": _png(plot_ranking(top, a_name=a_name, b_name=b_name)),
            }
        )
    summary = comparison.summary_table().to_json()
    ranking = comparison.ranking_table(15).to_json()
    return {
        "a": a,
        "b": b,
        "a_images": comparison.a.names(),
        "b_images": comparison.b.names(),
        "layers": list(comparison.layers),
        "figures": figures,
        "tables": [summary, ranking],
    }


def oip_answer(
    model: InspectableModel, shapes: dict[str, tuple[int, ...]], layer: str | None, steps: int
) -> dict[str, Any]:
    """The Features tab's tiles: each unit's optimal input pattern (at most MAX_OIP_UNITS) and its gain."""
    lib = _inspect_module()
    layer = layer or default_oip_layer(model)
    count = shapes[layer][0]
    units = list(range(min(count, MAX_OIP_UNITS)))
    result = lib.optimize_inputs(model, layer, units, steps=steps)
    gains = result.gain()
    reached = result.reached()
    tiles = []
    for i, unit in enumerate(result.units):
        if result.dead[i]:
            caption = f"{int(unit)}: dead"
        elif np.isfinite(gains[i]):
            caption = f"{int(unit)}: {gains[i]:.0f}x"
        else:
            caption = f"{int(unit)}: from 0"
        tiles.append(
            {
                "unit": int(unit),
                "image": encode.image_u8(result.images[i]),
                "caption": caption,
                "title": f"{layer} unit {int(unit)}: "
                f"activation {result.start[i]:.3g} -> {result.final[i]:.3g}",
                "dead": bool(result.dead[i]),
            }
        )
    note = f" (the first {MAX_OIP_UNITS} of {count})" if count > MAX_OIP_UNITS else ""
    return {
        "layer": layer,
        "units": len(units),
        "steps": steps,
        "seconds": round(float(result.seconds), 2),
        "summary": f"{layer}: {len(units)} units{note}, {steps} steps in {result.seconds:.1f} s; "
        f"{int(reached.sum())} reached at least 10x their start, {int(result.dead.sum())} dead",
        "tiles": tiles,
    }
