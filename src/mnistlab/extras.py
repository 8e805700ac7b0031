"""The optional parts of mnistlab: which importable module comes with which pip extra.

One table, read by every place that imports an optional module, so a missing one always becomes
the same line: ``<what> needs <module>; install it with pip install 'mnistlab[<extra>]'``.
To add an optional dependency: add its extra to pyproject.toml and its top-level module(s) here
(tests/test_extras.py checks that every import outside the standard library is a dependency or
in this table, and that the table's extras exist in pyproject.toml).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from types import ModuleType

from .errors import MissingExtra

# top-level module -> the extra in pyproject.toml's [project.optional-dependencies] that installs it
EXTRAS: dict[str, str] = {
    "torch": "cnn",
    "fastapi": "web",
    "uvicorn": "web",
    "pydantic": "web",  # comes with fastapi
    "starlette": "web",  # fastapi's base; its HTTPException is what routing raises
    "h5py": "import",
    "onnx": "import",
    "google": "import",  # protobuf, which comes with onnx
    "optuna": "sweep",
    "sqlalchemy": "sweep",  # comes with optuna
    "psycopg": "sweep",  # the driver behind postgresql:// storages
    "tensorboard": "tensorboard",
    "tensorboardX": "tensorboard",
    "ipykernel": "notebooks",  # the example notebooks' kernel; mnistlab itself never imports it
    "ipywidgets": "notebooks",  # tqdm.auto's Jupyter progress bars
}


def missing_extra(module: str, what: str) -> MissingExtra:
    """The error for an optional module that is not installed (``module`` may be dotted)."""
    top = module.partition(".")[0]
    extra = EXTRAS[top]
    error = MissingExtra(f"{what} needs {top}; install it with pip install 'mnistlab[{extra}]'")
    error.name = top
    return error


def require(module: str, what: str) -> ModuleType:
    """Import an optional module, or raise MissingExtra naming the extra to install."""
    with needs_extras(what):
        return importlib.import_module(module)


@contextlib.contextmanager
def needs_extras(what: str) -> Iterator[None]:
    """Turn a missing optional module, imported anywhere inside the block, into MissingExtra.

    Blocks nest; the outermost names ``what``, being closest to what the user asked for."""
    try:
        yield
    except ModuleNotFoundError as exc:
        top = optional_module(exc)
        if top is None:
            raise
        raise missing_extra(top, what) from None


def optional_module(exc: BaseException) -> str | None:
    """The optional top-level module a ModuleNotFoundError is about, else None (a real bug)."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.partition(".")[0]
        if top in EXTRAS:
            return top
    return None
