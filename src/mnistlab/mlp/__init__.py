"""The NumPy multilayer perceptron: pure NumPy, float32, no torch anywhere in this package.

>>> from mnistlab.mlp import MLP, MLPConfig, train
>>> model = MLP(MLPConfig(hidden=(70, 30)))
>>> history = train(model, x_train, y_train, test=(x_test, y_test))
"""

from __future__ import annotations

from .config import ACTIVATIONS, OUTPUTS, PRESETS, SCHEDULES, MLPConfig, preset
from .model import MLP
from .run import TrainResult, train_on_dataset
from .schedules import learning_rate
from .train import Trainer, train

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "MLPConfig",
    "OUTPUTS",
    "PRESETS",
    "SCHEDULES",
    "TrainResult",
    "Trainer",
    "learning_rate",
    "preset",
    "train",
    "train_on_dataset",
]
