"""The Misclassified and Confusion tabs' endpoints: the model evaluated once on its test split.

The evaluation (as `mnistlab evaluate` does it) is computed on the first request and kept with the
loaded run, so it is redone only when the run changes on disk.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Query

from ..data import Dataset
from ..inspect.confusions import Confusions, confusions
from . import encode
from .common import ModelThread, check_classes
from .store import LoadedRun, RunStore

MAX_GALLERY = 200


def evaluation_router(store: RunStore, on_model_thread: ModelThread) -> APIRouter:
    router = APIRouter()

    @router.get("/api/misclassified")
    @on_model_thread
    def misclassified(
        run: str | None = None,
        offset: int = Query(0, ge=0),
        limit: int = Query(60, ge=1, le=MAX_GALLERY),
    ) -> dict[str, Any]:
        """Test images the model gets wrong, in test-split order, with thumbnails."""
        loaded = store.get(run)
        ds = store.dataset_of(loaded)
        ev = _evaluation(loaded, ds)
        wrong = np.flatnonzero(ev.predictions != ev.labels)
        return {
            "total": int(len(wrong)),
            "offset": offset,
            "items": _gallery(ds, ev.proba, wrong[offset : offset + limit]),
        }

    @router.get("/api/confusion")
    @on_model_thread
    def confusion(run: str | None = None) -> dict[str, Any]:
        """The test-split confusion matrix: rows are true labels, columns predictions."""
        loaded = store.get(run)
        ds = store.dataset_of(loaded)
        ev = _evaluation(loaded, ds)
        return {
            "class_names": list(ds.class_names),
            "matrix": ev.matrix.tolist(),
            "accuracy": ev.accuracy,
            "n": int(ev.matrix.sum()),
        }

    @router.get("/api/confusion-cell")
    @on_model_thread
    def confusion_cell(
        run: str | None = None,
        true: int = Query(..., description="true label (row)"),
        pred: int = Query(..., description="predicted label (column)"),
        limit: int = Query(60, ge=1, le=MAX_GALLERY),
    ) -> dict[str, Any]:
        """The test images of one confusion-matrix cell, most confident first."""
        loaded = store.get(run)
        ds = store.dataset_of(loaded)
        check_classes(ds, true=true, pred=pred)
        ev = _evaluation(loaded, ds)
        cell = ev.misclassified(true, pred)
        return {
            "true": true, "pred": pred, "total": int(len(cell)),
            "items": _gallery(ds, ev.proba, cell[:limit]),
        }

    return router


def _evaluation(loaded: LoadedRun, ds: Dataset) -> Confusions:
    with loaded.lock:
        if "evaluation" not in loaded.cache:
            loaded.cache["evaluation"] = confusions(loaded.model, ds, "test")
        return loaded.cache["evaluation"]


def _gallery(ds: Dataset, proba: np.ndarray, indices: np.ndarray) -> list[dict[str, Any]]:
    return [
        {
            "index": int(i),
            "label": int(ds.test_labels[i]),
            "predicted": int(proba[i].argmax()),
            "confidence": float(proba[i].max()),
            "image": encode.image_u8(ds.test_images[i]),
        }
        for i in indices
    ]
