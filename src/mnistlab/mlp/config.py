"""The one typed configuration of an MLP: its shape and how it is trained.

Every valid name lives in a tuple here; the error for a bad name lists them (scikit-learn's habit).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..data.preprocess import KINDS as PREPROCESSING
from ..errors import ConfigError
from .activations import FORWARD, OUTPUT_FORWARD
from .optimizers import OPTIMIZERS as _OPTIMIZER_CLASSES

ACTIVATIONS = tuple(FORWARD)  # relu, sigmoid, tanh
# "softmax": class probabilities with cross-entropy; "sigmoid": ten independent logistic outputs
# with log-loss (binary cross-entropy summed over the outputs), as in the seed.
OUTPUTS = tuple(OUTPUT_FORWARD)
INITS = ("auto", "he", "xavier")
DTYPES = ("float32", "float64")
# constant; seed: lr_e = lr_{e-1} / (1 + decay * e) (the seed's per-epoch decay, compounding);
# step: lr * gamma ** (e // step_size); cosine: from lr down to lr_min over the epochs.
SCHEDULES = ("constant", "seed", "step", "cosine")
# standard: PyTorch's SGD (v = m v + g; w -= lr v; Nesterov optional).
# seed: the seed's form, w -= lr g_t + m lr_{t-1} g_{t-1} (momentum on the previous step only).
MOMENTUM_FORMS = ("standard", "seed")
OPTIMIZERS = tuple(_OPTIMIZER_CLASSES)  # the update rules of mnistlab.mlp.optimizers


@dataclass(frozen=True)
class MLPConfig:
    """Shape, initialization and training of a multilayer perceptron.

    The defaults are the tuned configuration that reaches >= 98% test accuracy on MNIST in 35
    epochs at batch 500 (see docs/performance.md); ``preset("seed")`` gives the seed's setup.
    """

    # ----- shape -----
    input_size: int = 784
    hidden: tuple[int, ...] = (70, 30)
    n_classes: int = 10
    activation: str = "tanh"
    output: str = "softmax"
    init: str = "auto"  # auto: He-normal for relu, Xavier-uniform (Glorot) for sigmoid/tanh
    dtype: str = "float32"
    seed: int = 0
    # ----- training -----
    epochs: int = 35
    batch_size: int = 500
    optimizer: str = "sgd"
    lr: float = 0.4
    momentum: float = 0.9
    momentum_form: str = "standard"
    nesterov: bool = True
    l1: float = 0.0
    l2: float = 7e-4
    schedule: str = "cosine"
    decay: float = 0.0  # the seed schedule's constant
    step_size: int = 10  # step schedule: epochs per step
    gamma: float = 0.5  # step schedule: factor per step
    lr_min: float = 0.0  # cosine schedule: final learning rate
    # ----- data -----
    preprocess: str = "unit"
    val: int = 0  # images held out of the training split for validation (the last ones)
    patience: int | None = None  # early stop after this many epochs without a better val accuracy

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        self.validate()

    # ----- checks -----

    def validate(self) -> None:
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("output", self.output, OUTPUTS)
        _choice("init", self.init, INITS)
        _choice("dtype", self.dtype, DTYPES)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("momentum form", self.momentum_form, MOMENTUM_FORMS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("preprocessing", self.preprocess, PREPROCESSING)
        for name in ("input_size", "n_classes", "epochs", "batch_size", "step_size"):
            _positive_int(name, getattr(self, name))
        if not self.hidden:
            raise ConfigError("hidden layers are empty; give at least one size, e.g. --layers 70,30")
        for size in self.hidden:
            _positive_int("hidden layer size", size)
        if self.n_classes < 2:
            raise ConfigError(f"n_classes must be at least 2, got {self.n_classes}")
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be > 0, got {self.lr}; try --lr 0.1")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum_form != "standard":
            raise ConfigError(
                "Nesterov momentum needs the standard momentum form; drop --nesterov or the seed form"
            )
        if self.nesterov and self.momentum == 0:
            raise ConfigError("Nesterov momentum needs --momentum > 0")
        for name in ("l1", "l2", "decay", "lr_min"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.val < 0:
            raise ConfigError(f"--val must be >= 0 images, got {self.val}")
        if self.patience is not None:
            _positive_int("patience", self.patience)
            if self.val == 0:
                raise ConfigError("early stopping (--patience) needs a validation split; add --val 5000")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")

    @property
    def sizes(self) -> tuple[int, ...]:
        """Layer widths input to output, e.g. (784, 70, 30, 10)."""
        return (self.input_size, *self.hidden, self.n_classes)

    def init_for(self) -> str:
        if self.init != "auto":
            return self.init
        return "he" if self.activation == "relu" else "xavier"

    # ----- (de)serialization -----

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["hidden"] = list(self.hidden)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MLPConfig:
        """Rebuild from a run manifest; unknown keys mean a run from another version."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"MLP config has unknown field(s) {', '.join(unknown)}; the run comes from another "
                "mnistlab version"
            )
        values = dict(data)
        if "hidden" in values:
            values["hidden"] = tuple(values["hidden"])
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(
                f"MLP config is invalid ({exc}); the run is corrupt or from another version"
            ) from None

    def replace(self, **changes: Any) -> MLPConfig:
        return dataclasses.replace(self, **changes)


# The seed's setup: sigmoid hidden layers, ten sigmoid outputs with log-loss, 784-70-30-10, the seed's
# momentum form and per-epoch learning-rate decay. Inputs standardized per pixel: with sigmoid units
# that beat inputs scaled to 0..1 (docs/performance.md).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "seed": dict(
        activation="sigmoid",
        output="sigmoid",
        init="xavier",
        lr=2.0,
        momentum=0.5,
        momentum_form="seed",
        nesterov=False,
        schedule="seed",
        decay=0.001,
        preprocess="standard",
    ),
}


def preset(name: str, **overrides: Any) -> MLPConfig:
    """A named configuration, with any field overridden."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return MLPConfig(**{**PRESETS[name], **overrides})


def _choice(what: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {what} {value!r}; choose one of: {', '.join(valid)}")


def _positive_int(what: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
