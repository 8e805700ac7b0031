"""What a sweep needs from each engine: the names it searches, their checks, a default space, and
one trial's training into a run directory with a per-epoch callback."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..data import Dataset
from ..errors import ConfigError
from .space import Param

DEFAULT_VAL = 10_000  # the objective's held-out images: the last ones of the training split

EpochCallback = Callable[[dict[str, Any]], None]
# config field annotations (strings under postponed evaluation) a sweep can search as plain values
SCALARS: dict[str, type] = {"int": int, "float": float, "str": str}


@dataclass
class TrialRun:
    history: list[dict[str, Any]]
    status: str  # complete | stopped (the callback asked) | interrupted (Ctrl-C) | diverged
    run_dir: Path | None


class MLPEngine:
    name = "mlp"
    default_space = (
        "lr=log:0.05:1 l2=log:1e-5:3e-3 batch_size=int:100:1000:100 activation=choice:relu,tanh "
        "layers=choice:70,30|100,50"
    )
    # search name -> MLPConfig field (the same name except layers)
    fields: ClassVar[dict[str, str]] = {"layers": "hidden"}

    def params(self, base: Any) -> dict[str, Param]:
        from ..mlp.config import MLPConfig

        skip = {"input_size", "n_classes", "nesterov", "patience", "val", "seed", "dtype"}
        out: dict[str, Param] = {"layers": Param(tuple, self._checker(base, "hidden"))}
        for field in dataclasses.fields(MLPConfig):
            kind = SCALARS.get(str(field.type))
            if field.name not in skip and kind is not None:
                out[field.name] = Param(kind, self._checker(base, field.name))
        return out

    def _checker(self, base: Any, field: str) -> Callable[[Any], None]:
        return lambda value: base.replace(**{field: value})  # MLPConfig validates on construction

    def configure(self, base: Any, values: dict[str, Any]) -> Any:
        return base.replace(**{self.fields.get(k, k): v for k, v in values.items()})

    def epochs(self, config: Any) -> int:
        return config.epochs

    def recipe(self, config: Any) -> dict[str, Any]:
        return config.to_dict()

    def train(
        self, config: Any, dataset: Dataset, out: Path, on_epoch: EpochCallback, threads: Any
    ) -> TrialRun:
        from ..errors import TrainingDiverged
        from ..mlp.run import train_on_dataset
        from ..runs import read_manifest

        try:
            result = train_on_dataset(
                config, dataset, out=out, overwrite=True, callback=on_epoch, threads=threads
            )
        except TrainingDiverged:
            written = out if (out / "run.json").exists() else None
            return TrialRun(_history(out) if written else [], "diverged", written)
        status = read_manifest(result.run_dir)["status"]
        return TrialRun(result.history, status, result.run_dir)


class CNNEngine:
    name = "cnn"
    default_space = (
        "lr=log:1e-4:3e-3 batch_size=choice:32,64,128 weight_decay=log:1e-6:1e-3 "
        "optimizer=choice:rmsprop,adam"
    )
    fields: ClassVar[dict[str, str]] = {}

    def params(self, base: Any) -> dict[str, Param]:
        from ..cnn.training import TrainConfig

        skip = set(TrainConfig.HOW) | {"dataset", "val", "seed", "nesterov"}
        out: dict[str, Param] = {}
        for field in dataclasses.fields(TrainConfig):
            kind = SCALARS.get(str(field.type))
            if field.name not in skip and kind is not None:
                out[field.name] = Param(kind, self._checker(base, field.name))
        return out

    def _checker(self, base: Any, field: str) -> Callable[[Any], None]:
        def check(value: Any) -> None:
            config = self.configure(base, {field: value})
            if field == "spec":
                from ..cnn.spec import parse_spec

                parse_spec(value)
            config.validate()

        return check

    def configure(self, base: Any, values: dict[str, Any]) -> Any:
        from ..cnn.spec import PRESETS

        config = dataclasses.replace(base, **values)
        if "spec" in values and values["spec"] in PRESETS:
            # a preset brings its own recipe; what the sweep fixed or drew still wins
            recipe = {k: v for k, v in PRESETS[values["spec"]].recipe.items() if k not in values}
            config = dataclasses.replace(config, **recipe)
        return config

    def epochs(self, config: Any) -> int:
        return config.epochs

    def recipe(self, config: Any) -> dict[str, Any]:
        return config.recipe()

    def train(
        self, config: Any, dataset: Dataset, out: Path, on_epoch: EpochCallback, threads: Any
    ) -> TrialRun:
        from ..cnn.training import Trainer
        from ..errors import TrainingDiverged

        try:
            result = Trainer(
                config, dataset, out, progress=False, overwrite=True, epoch_callback=on_epoch
            ).run()
        except TrainingDiverged:
            return TrialRun(_history(out), "diverged", out)
        return TrialRun(result.history, result.state, result.run_dir)


def _history(run_dir: Path) -> list[dict[str, Any]]:
    from ..runs import read_history

    return read_history(run_dir)


ENGINES = {"mlp": MLPEngine(), "cnn": CNNEngine()}


def engine(name: str) -> MLPEngine | CNNEngine:
    if name not in ENGINES:
        raise ConfigError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")
    return ENGINES[name]


def without_test_split(ds: Dataset, train_size: int | None = None) -> Dataset:
    """The dataset a trial sees: the training split only (its first ``train_size`` images). The test
    arrays are not touched, so nothing a sweep chooses can depend on them."""
    import numpy as np

    images, labels = ds.train_images, ds.train_labels
    if train_size is not None:
        if not 0 < train_size <= len(labels):
            raise ConfigError(f"--train-size {train_size} must be between 1 and {len(labels)}")
        images, labels = images[:train_size], labels[:train_size]
    empty = np.empty((0, *images.shape[1:]), images.dtype)
    return Dataset(ds.name, images, labels, empty, np.empty(0, labels.dtype), ds.class_names, ds.source)
