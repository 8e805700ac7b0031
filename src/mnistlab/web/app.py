"""The FastAPI app behind `mnistlab serve`: a thin JSON shell over the library, plus the page's static files.

Every run-specific endpoint takes the run as ``?run=NAME`` (a path relative to the runs directory,
as listed by ``GET /api/runs``). Errors are JSON ``{"error": "one line"}`` with a 4xx status; the
server keeps serving whatever a request holds.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from ..data import Dataset
from ..data.drawing import MAX_SIDE, check_drawing, normalize_drawing
from ..errors import ConfigError, MnistlabError
from ..inspect.activations import default_oip_layer
from ..inspect.confusions import Confusions, confusions
from ..model_api import InspectableModel
from ..models import load_model
from . import encode
from .attribution import attribution_answer
from .store import ApiError, LoadedRun, RunStore
from .sweeps import sweep_router

STATIC = Path(__file__).parent / "static"
MAX_BODY = 2 * 1024 * 1024  # a 1024x1024 drawing in base64 is 1.4 MB; JSON lists of 512x512 fit too
MAX_GALLERY = 200


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


def create_app(
    runs_dir: str | Path = "runs",
    *,
    model_loader: Callable[[Path], InspectableModel] | None = None,
    dataset_loader: Callable[[str], Dataset] | None = None,
    max_body: int = MAX_BODY,
    torch_threads: int | None = None,
    sweep_storage: str | None = None,
) -> FastAPI:
    """The app serving the runs under ``runs_dir``; the loaders are replaceable for tests.

    ``torch_threads``: when given, torch's intra-op thread count is set to it once a model has
    imported torch (process-wide, so only `mnistlab serve` passes it; see there why 1).
    ``sweep_storage``: the Optuna storage of the Sweeps tab (default RUNS/sweeps.db when it exists).
    """
    kwargs: dict[str, Any] = {}
    if model_loader is not None or torch_threads is not None:
        kwargs["model_loader"] = _with_torch_threads(model_loader or load_model, torch_threads)
    if dataset_loader is not None:
        kwargs["dataset_loader"] = dataset_loader
    store = RunStore(runs_dir, **kwargs)
    # Every model call runs on one thread: the CNN's forward hooks are per model, not per call, so two
    # requests at once would mix their captures; and one thread keeps one OpenMP team instead of one
    # per pool thread with the idle ones spinning (docs/performance.md).
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mnistlab-model")

    def on_model_thread(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        async def run(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.get_running_loop().run_in_executor(
                executor, functools.partial(func, *args, **kwargs)
            )

        return run

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="mnistlab",
        version=__version__,
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
        lifespan=lifespan,
    )
    app.state.store = store
    app.add_middleware(_BodyLimit, max_bytes=max_body)
    _install_error_handlers(app)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(sweep_router(store.runs_dir, sweep_storage))

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get("/api/runs")
    def runs() -> dict[str, Any]:
        """Every run under the runs directory, read fresh from disk each time."""
        return {"runs_dir": str(store.runs_dir), "runs": store.list_runs()}

    @app.get("/api/run")
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

    @app.get("/api/history")
    @on_model_thread
    def history(run: str | None = None) -> dict[str, Any]:
        """history.json of the run: one dict per epoch (loss, accuracy, ...)."""
        return {"name": run, "history": store.get(run).history}

    @app.post("/api/predict")
    @on_model_thread
    def predict(body: PredictBody, run: str | None = None) -> dict[str, Any]:
        """Probabilities and every layer's activations for one image, drawn or exact 28x28."""
        start = time.perf_counter()
        loaded = store.get(run)
        layers = _check_layers(loaded, body.layers)
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
        answer = _inspect(loaded, image, layers)
        if body.attribution:
            answer["attribution"] = attribution_answer(loaded.model, image, body.attribution, body.target)
        answer["blank"] = bool(image.max() <= 0)
        answer["server_ms"] = round((time.perf_counter() - start) * 1000, 2)
        return answer

    @app.get("/api/test-image")
    @on_model_thread
    def test_image(
        run: str | None = None,
        index: int = Query(..., description="index in the test split"),
        attribution: str | None = Query(None, description="also an attribution map by this method"),
        target: str | None = Query(None, description="the map's target: a class (4) or a pair (4,9)"),
    ) -> dict[str, Any]:
        """Test image number ``index`` (canonical order), its label, and the model's view of it."""
        loaded = store.get(run)
        ds = _dataset(store, loaded)
        n = len(ds.test_images)
        if not 0 <= index < n:
            raise ApiError(
                400, f"test index {index} is out of range; the test split has {n} images (0..{n - 1})"
            )
        image = ds.test_images[index].astype(np.float32)
        answer = _inspect(loaded, image, loaded.model.layer_names())
        if attribution:
            answer["attribution"] = attribution_answer(loaded.model, image, attribution, target)
        answer.update(index=index, label=int(ds.test_labels[index]))
        return answer

    @app.get("/api/misclassified")
    @on_model_thread
    def misclassified(
        run: str | None = None,
        offset: int = Query(0, ge=0),
        limit: int = Query(60, ge=1, le=MAX_GALLERY),
    ) -> dict[str, Any]:
        """Test images the model gets wrong, in test-split order, with thumbnails."""
        loaded = store.get(run)
        ds = _dataset(store, loaded)
        ev = _evaluation(store, loaded)
        wrong = np.flatnonzero(ev.predictions != ev.labels)
        return {
            "total": int(len(wrong)),
            "offset": offset,
            "items": _gallery(ds, ev.proba, wrong[offset : offset + limit]),
        }

    @app.get("/api/confusion")
    @on_model_thread
    def confusion(run: str | None = None) -> dict[str, Any]:
        """The test-split confusion matrix: rows are true labels, columns predictions."""
        loaded = store.get(run)
        ds = _dataset(store, loaded)
        ev = _evaluation(store, loaded)
        return {
            "class_names": list(ds.class_names),
            "matrix": ev.matrix.tolist(),
            "accuracy": ev.accuracy,
            "n": int(ev.matrix.sum()),
        }

    @app.get("/api/confusion-cell")
    @on_model_thread
    def confusion_cell(
        run: str | None = None,
        true: int = Query(..., description="true label (row)"),
        pred: int = Query(..., description="predicted label (column)"),
        limit: int = Query(60, ge=1, le=MAX_GALLERY),
    ) -> dict[str, Any]:
        """The test images of one confusion-matrix cell, most confident first."""
        loaded = store.get(run)
        ds = _dataset(store, loaded)
        _check_classes(ds, true=true, pred=pred)
        ev = _evaluation(store, loaded)
        cell = ev.misclassified(true, pred)
        return {
            "true": true, "pred": pred, "total": int(len(cell)),
            "items": _gallery(ds, ev.proba, cell[:limit]),
        }

    @app.get("/api/compare")
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
        ds = _dataset(store, loaded)
        _check_classes(ds, a=a, b=b)
        if a == b:
            raise ApiError(400, f"a and b are both {a}; choose two different classes")
        layers = _check_layers(loaded, [layer]) if layer else None
        return _cached(
            loaded, ("compare", a, b, n, layer), lambda: _compare_answer(loaded.model, ds, a, b, n, layers)
        )

    @app.get("/api/oip")
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
            _check_layers(loaded, [layer])
        return _cached(
            loaded, ("oip", layer, steps),
            lambda: _oip_answer(loaded.model, loaded.layer_shapes, layer, steps),
        )

    return app


# ----- helpers: decoding input and calling the library -----


MAX_OIP_UNITS = 256
MAX_CACHED = 24  # compare and OIP answers per run (each up to a few hundred KB of PNG)


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


def _compare_answer(
    model: InspectableModel, ds: Dataset, a: int, b: int, n: int, layers: list[str] | None
) -> dict[str, Any]:
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


def _oip_answer(
    model: InspectableModel, shapes: dict[str, tuple[int, ...]], layer: str | None, steps: int
) -> dict[str, Any]:
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


def _with_torch_threads(
    loader: Callable[[Path], InspectableModel], threads: int | None
) -> Callable[[Path], InspectableModel]:
    if threads is None:
        return loader

    def load(path: Path) -> InspectableModel:
        model = loader(path)
        torch = sys.modules.get("torch")  # never imported here for an MLP-only server
        if torch is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return model

    return load



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


def _check_layers(loaded: LoadedRun, layers: list[str] | None) -> list[str]:
    try:
        return loaded.model.check_layers(layers)
    except ConfigError as exc:
        raise ApiError(404, str(exc)) from None


def _inspect(loaded: LoadedRun, image: np.ndarray, layers: list[str]) -> dict[str, Any]:
    """What the page shows for one image: probabilities and activations, one forward pass."""
    wanted = list(dict.fromkeys([*layers, "output"]))
    acts = loaded.model.activations(image[None], wanted)
    proba = acts["output"][0]
    return {
        "image": encode.image_u8(image),
        "probabilities": [float(p) for p in proba],
        "predicted": int(np.argmax(proba)),
        "layers": [encode.activation(name, acts[name][0]) for name in layers],
    }


def _check_classes(ds, **values: int) -> None:
    """Each named query value must be a class index of the run's dataset."""
    k = len(ds.class_names)
    for what, value in values.items():
        if not 0 <= value < k:
            raise ApiError(400, f"{what}={value} is not a class; use 0..{k - 1}")


def _dataset(store: RunStore, loaded: LoadedRun) -> Dataset:
    name = loaded.manifest.get("dataset") or "mnist"
    return store.dataset(str(name))


def _class_names(loaded: LoadedRun) -> list[str]:
    from ..data import DATASETS

    info = DATASETS.get(str(loaded.manifest.get("dataset")))
    if info is not None:
        return list(info.class_names)
    return [str(i) for i in range(loaded.layer_shapes.get("output", (10,))[0])]


def _evaluation(store: RunStore, loaded: LoadedRun) -> Confusions:
    """The model evaluated on its test split (as `mnistlab evaluate` does), once per version of the run."""
    with loaded.lock:
        if "evaluation" not in loaded.cache:
            loaded.cache["evaluation"] = confusions(loaded.model, _dataset(store, loaded), "test")
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


# ----- errors and limits -----


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(MnistlabError)
    async def library_error(request: Request, exc: MnistlabError) -> JSONResponse:
        # ConfigError here is always about the request's content (shape, range, layer name).
        status = 400 if isinstance(exc, ConfigError) else 409
        return JSONResponse({"error": str(exc)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)


def _validation_message(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    msg = first.get("msg", "invalid value")
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON"
    if tuple(first.get("loc", ())) == ("body",):
        return 'the request body must be a JSON object, e.g. {"pixels": [[0, 255, ...], ...]}'
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{where}: {msg}{more}"


class _BodyLimit:
    """Refuses request bodies over ``max_bytes`` with 413, whether or not Content-Length is sent."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(send)
            return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                await self._too_large(send)
                return
            chunks.append(body)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Callable) -> None:
        body = json.dumps(
            {"error": f"request body is larger than {self.max_bytes // 1024} KiB; send a smaller image"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
