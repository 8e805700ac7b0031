"""The PyTorch CNN: a declarative spec, a fast resident-data training loop, the inspection interface.

The spec part (parsing, presets, shapes, summaries) is pure Python; torch is imported the first
time a model, optimizer or trainer is asked for.

>>> from mnistlab.cnn import train
>>> result = train(load_dataset("mnist"), spec="seed", out="runs/seed")
>>> result.model.activations(images, ["conv1", "output"])
"""

from __future__ import annotations

import importlib
from typing import Any

from ..extras import needs_extras
from .spec import PRESETS, Spec, count_params, infer_shapes, parse_spec, summary_table

_LAZY = {
    "CNN": "model", "Net": "model", "build_net": "model",
    "OPTIMIZERS": "optim", "SCHEDULES": "optim", "Optimizer": "optim", "Schedule": "optim",
    "TrainConfig": "training", "TrainResult": "training", "Trainer": "training", "resolve_config": "training",
    "resume": "training", "train": "training",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        with needs_extras(f"mnistlab.cnn.{name}"):
            return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PRESETS", "Spec", "count_params", "infer_shapes", "parse_spec", "summary_table", *_LAZY]
