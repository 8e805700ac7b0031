"""The FastAPI app behind `mnistlab serve`: a thin JSON shell over the library, plus the page's static files.

Every run-specific endpoint takes the run as ``?run=NAME`` (a path relative to the runs directory,
as listed by ``GET /api/runs``). Errors are JSON ``{"error": "one line"}`` with a 4xx status; the
server keeps serving whatever a request holds. The endpoints live in one router per topic:
runs.py, predict.py (Draw & inspect), evaluation.py (Misclassified, Confusion), analysis.py
(Compare, Features) and sweeps.py; what they share is in common.py.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..data import Dataset
from ..errors import ConfigError, MnistlabError
from ..model_api import InspectableModel
from ..models import load_model
from .analysis import analysis_router
from .api_docs import api_reference_html
from .body_limit import MAX_BODY, BodyLimit
from .common import ModelThread
from .evaluation import evaluation_router
from .predict import predict_router
from .runs import runs_router
from .store import ApiError, RunStore
from .sweeps import sweep_router

STATIC = Path(__file__).parent / "static"


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
    on_model_thread = ModelThread()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        on_model_thread.shutdown()

    app = FastAPI(
        title="mnistlab",
        version=__version__,
        docs_url=None,  # Swagger UI comes from a CDN; /api/docs below is rendered here
        redoc_url=None,
        openapi_url="/api/openapi.json",
        lifespan=lifespan,
    )
    app.state.store = store
    app.add_middleware(BodyLimit, max_bytes=max_body)
    _install_error_handlers(app)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/docs", include_in_schema=False)
    def api_docs() -> HTMLResponse:
        return HTMLResponse(api_reference_html(app.openapi()))

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(sweep_router(store.runs_dir, sweep_storage))
    for router in (runs_router, predict_router, evaluation_router, analysis_router):
        app.include_router(router(store, on_model_thread))
    return app


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


# ----- errors -----


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(MnistlabError)
    async def library_error(request: Request, exc: MnistlabError) -> JSONResponse:
        # ConfigError here is always about the request's content (shape, range, layer name).
        status = 400 if isinstance(exc, ConfigError) else 409
        return JSONResponse({"error": str(exc)}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # routing's own answers (no such path, wrong method) in the same shape as every other error
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            message = f"nothing at {where}; the API is listed at /api/docs"
        elif exc.status_code == 405:
            allowed = {k.lower(): v for k, v in (exc.headers or {}).items()}.get("allow", "")
            message = (
                f"{request.method} is not allowed on {request.url.path} (allowed: {allowed}); see /api/docs"
            )
        else:
            message = str(exc.detail)
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

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
