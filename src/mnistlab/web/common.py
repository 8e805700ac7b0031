"""What the routers share: the one thread every model call runs on, and the checks of query values.

Each router is built by a function taking the app's ``RunStore`` and its ``ModelThread``, as
``create_app`` wires them (sweeps.py needs neither: it reads only the sweep storage).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..data import Dataset
from ..errors import ConfigError
from .store import ApiError, LoadedRun


class ModelThread:
    """A decorator that runs a sync handler on the app's single model thread and awaits it.

    One thread, because the CNN's forward hooks are per model, not per call, so two requests at once
    would mix their captures; and one thread keeps one OpenMP team instead of one per pool thread
    with the idle ones spinning (docs/performance.md).
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mnistlab-model")

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)  # FastAPI reads the handler's parameters through __wrapped__
        async def run(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, functools.partial(func, *args, **kwargs)
            )

        return run

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def check_layers(loaded: LoadedRun, layers: list[str] | None) -> list[str]:
    """The run's layers named in ``layers`` (all when None); an unknown one is a 404 naming the valid ones."""
    try:
        return loaded.model.check_layers(layers)
    except ConfigError as exc:
        raise ApiError(404, str(exc)) from None


def check_classes(ds: Dataset, **values: int) -> None:
    """Each named query value must be a class index of the run's dataset."""
    k = len(ds.class_names)
    for what, value in values.items():
        if not 0 <= value < k:
            raise ApiError(400, f"{what}={value} is not a class; use 0..{k - 1}")
