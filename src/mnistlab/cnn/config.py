"""What defines a CNN training run (the recipe) and how it runs (the how-options): TrainConfig."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import ConfigError
from .model import INITS
from .optim import OPTIMIZERS
from .spec import PRESETS

DEVICES = ("auto", "cpu", "cuda", "mps")
AMP_MODES = ("auto", "on", "off")


@dataclass
class TrainConfig:
    """Everything that defines a training run; stored in the manifest's config."""

    spec: str = "seed"
    optimizer: str = "rmsprop"
    lr: float = 1e-3
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"
    epochs: int = 5
    batch_size: int = 64
    seed: int = 0
    val: int = 0
    augment: int = 0  # random shifts of up to this many pixels
    label_smoothing: float = 0.0
    init: str = "glorot"
    preprocess: str = "unit"
    dataset: str = "mnist"
    # How, not what: these do not change the result beyond floating-point rounding.
    device: str = "auto"
    amp: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    cuda_graphs: str = "auto"
    threads: int = 0  # 0: torch's default

    HOW = ("device", "amp", "channels_last", "compile", "cuda_graphs", "threads")

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"--epochs {self.epochs} must be a positive integer")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size} must be a positive integer")
        if self.device not in DEVICES:
            raise ConfigError(f"unknown device {self.device!r}; choose one of: {', '.join(DEVICES)}")
        for name in ("amp", "channels_last", "cuda_graphs"):
            if getattr(self, name) not in AMP_MODES:
                raise ConfigError(
                    f"--{name.replace('_', '-')} {getattr(self, name)!r}: "
                    f"choose one of: {', '.join(AMP_MODES)}"
                )
        if self.init not in INITS:
            raise ConfigError(f"unknown init {self.init!r}; choose one of: {', '.join(INITS)}")
        if not 0 <= self.augment <= 8:
            raise ConfigError(f"--augment {self.augment} must be a shift of 0..8 pixels")
        if self.augment and self.preprocess == "standard":
            raise ConfigError(
                "--augment with --preprocess standard: per-pixel scales turn shifted strokes on the border "
                "into huge inputs; use --preprocess unit"
            )
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing {self.label_smoothing} must be in [0, 1)")
        if self.threads < 0:
            raise ConfigError(f"--threads {self.threads} must be >= 0 (0: torch's default)")

    def recipe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in self.HOW}


def resolve_config(spec: str = "seed", **overrides: Any) -> TrainConfig:
    """A preset's recipe (when ``spec`` names one) with explicit, non-None overrides on top."""
    values: dict[str, Any] = {"spec": spec}
    if spec in PRESETS:
        values.update(PRESETS[spec].recipe)
    known = {f.name for f in fields(TrainConfig)}
    for key, value in overrides.items():
        if key not in known:
            raise ConfigError(f"unknown training option {key!r}")
        if value is not None:
            values[key] = value
    config = TrainConfig(**values)
    config.validate()
    return config


def config_from_manifest(manifest: dict[str, Any]) -> TrainConfig:
    """The TrainConfig a run directory's manifest recorded (the spec by the name it was given)."""
    stored = dict(manifest["config"])
    stored["spec"] = stored.pop("spec_name", None) or stored["spec"]
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in stored.items() if k in known})
