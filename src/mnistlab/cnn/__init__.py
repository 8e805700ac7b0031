"""The PyTorch CNN: a declarative spec, a fast resident-data training loop, the inspection interface.

Rooms: layers.py (the layer-kind and activation registry), spec.py (the spec language, shapes,
summary), model.py (the torch network, the inspection interface), optim.py, config.py (what a run
is), training.py (the loop), levers.py (speed levers, process-wide settings), checkpoint.py
(saving and resuming), stop.py (a clean stop on Ctrl-C), progress.py (the bar), distributed.py
and launch.py (many ranks: torchrun, DDP). The spec part is pure Python; torch is imported the
first time a model, optimizer or trainer is asked for.

>>> from mnistlab.cnn import train
>>> result = train(load_dataset("mnist"), spec="seed", out="runs/seed")
>>> result.model.activations(images, ["conv1", "output"])
"""

from __future__ import annotations

import importlib
from typing import Any

from ..extras import needs_extras
from .layers import KINDS, LayerKind, register
from .spec import PRESETS, Spec, count_params, infer_shapes, parse_spec, summary_table

_LAZY = {
    "CNN": "model",
    "Net": "model",
    "build_net": "model",
    "OPTIMIZERS": "optim",
    "SCHEDULES": "optim",
    "Optimizer": "optim",
    "Schedule": "optim",
    "TrainConfig": "config",
    "resolve_config": "config",
    "TrainResult": "training",
    "Trainer": "training",
    "train": "training",
    "resume": "checkpoint",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        with needs_extras(f"mnistlab.cnn.{name}"):
            return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "KINDS",
    "LayerKind",
    "PRESETS",
    "Spec",
    "register",
    "count_params",
    "infer_shapes",
    "parse_spec",
    "summary_table",
    *_LAZY,
]
