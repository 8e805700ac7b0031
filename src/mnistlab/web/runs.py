"""The server's health and its runs: the list the run picker shows, one run's summary and history."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from .. import __version__
from ..inspect.activations import default_oip_layer
from .common import ModelThread
from .store import LoadedRun, RunStore


def runs_router(store: RunStore, on_model_thread: ModelThread) -> APIRouter:
    router = APIRouter()

    @router.get("/api/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @router.get("/api/runs")
    def runs() -> dict[str, Any]:
        """Every run under the runs directory, read fresh from disk each time."""
        return {"runs_dir": str(store.runs_dir), "runs": store.list_runs()}

    @router.get("/api/run")
    @on_model_thread
    def run_info(run: str | None = None) -> dict[str, Any]:
        """The run's manifest, layers with their shapes, class names and training history."""
        from ..importers import original_names

        loaded = store.get(run)
        manifest = loaded.manifest
        sources = original_names(manifest)
        imported = manifest.get("imported") or {}
        return {
            "name": loaded.name,
            "kind": manifest.get("kind"),
            "dataset": manifest.get("dataset"),
            "created": manifest.get("created"),
            "config": manifest.get("config", {}),
            "metrics": manifest.get("metrics", {}),
            "class_names": _class_names(loaded),
            # an imported model's layers carry the original model's layer names as "source"
            "layers": [{"name": k, "shape": list(v), **({"source": sources[k]} if k in sources else {})}
                       for k, v in loaded.layer_shapes.items()],
            "imported": (
                {"format": imported.get("format"), "file": imported.get("file")} if imported else None
            ),
            "default_oip_layer": default_oip_layer(loaded.model),
            "history": loaded.history,
        }

    @router.get("/api/history")
    @on_model_thread
    def history(run: str | None = None) -> dict[str, Any]:
        """history.json of the run: one dict per epoch (loss, accuracy, ...)."""
        return {"name": run, "history": store.get(run).history}

    return router


def _class_names(loaded: LoadedRun) -> list[str]:
    from ..data import DATASETS

    info = DATASETS.get(str(loaded.manifest.get("dataset")))
    if info is not None:
        return list(info.class_names)
    return [str(i) for i in range(loaded.layer_shapes.get("output", (10,))[0])]
