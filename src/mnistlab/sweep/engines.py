"""What a sweep needs from each engine: the names it searches, their checks, a default space, and
one trial's training into a run directory with a per-epoch callback."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
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


class _Engine:
    """What both engines share: every plain scalar field of the config (ints, floats, strings) is a
    name a sweep can search, checked by the engine's ``_checker``."""

    def _scalar_params(self, base: Any, config_class: type, skip: set[str]) -> dict[str, Param]:
        return {
            field.name: Param(SCALARS[str(field.type)], self._checker(base, field.name))
            for field in dataclasses.fields(config_class)
            if field.name not in skip and str(field.type) in SCALARS
        }

    def _checker(self, base: Any, field: str) -> Callable[[Any], None]:
        raise NotImplementedError

    def epochs(self, config: Any) -> int:
        return config.epochs


class MLPEngine(_Engine):
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
        layers = Param(tuple, self._checker(base, "hidden"))
        return {"layers": layers, **self._scalar_params(base, MLPConfig, skip)}

    def _checker(self, base: Any, field: str) -> Callable[[Any], None]:
        return lambda value: base.replace(**{field: value})  # MLPConfig validates on construction

    def configure(self, base: Any, values: dict[str, Any]) -> Any:
        return base.replace(**{self.fields.get(k, k): v for k, v in values.items()})

    def recipe(self, config: Any) -> dict[str, Any]:
        return config.to_dict()

    def train(
        self, config: Any, dataset: Dataset, out: Path, on_epoch: EpochCallback, threads: Any,
        tensorboard: Path | None = None,
    ) -> TrialRun:
        from ..errors import TrainingDiverged
        from ..mlp.run import train_on_dataset
        from ..runs import read_manifest

        train = train_on_dataset
        if tensorboard is not None:  # the log's figures use the validation images (trials never see test)
            from ..tensorboard_log import train_mlp_logged

            train = partial(train_mlp_logged, tensorboard, val=config.val)
        try:
            result = train(config, dataset, out=out, overwrite=True, callback=on_epoch, threads=threads)
        except TrainingDiverged:
            written = out if (out / "run.json").exists() else None
            return TrialRun(_history(out) if written else [], "diverged", written)
        status = read_manifest(result.run_dir)["status"]
        return TrialRun(result.history, status, result.run_dir)


class CNNEngine(_Engine):
    name = "cnn"
    default_space = (
        "lr=log:1e-4:3e-3 batch_size=choice:32,64,128 weight_decay=log:1e-6:1e-3 "
        "optimizer=choice:rmsprop,adam"
    )
    fields: ClassVar[dict[str, str]] = {}

    def params(self, base: Any) -> dict[str, Param]:
        from ..cnn.training import TrainConfig

        skip = set(TrainConfig.HOW) | {"dataset", "val", "seed", "nesterov"}
        return self._scalar_params(base, TrainConfig, skip)

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

    def recipe(self, config: Any) -> dict[str, Any]:
        return config.recipe()

    def train(
        self, config: Any, dataset: Dataset, out: Path, on_epoch: EpochCallback, threads: Any,
        tensorboard: Path | None = None,
    ) -> TrialRun:
        from ..cnn.training import Trainer
        from ..errors import TrainingDiverged

        try:
            trainer = Trainer(config, dataset, out, progress=False, overwrite=True, epoch_callback=on_epoch)
            if tensorboard is None:
                result = trainer.run()
            else:
                from ..tensorboard_log import run_cnn_logged

                result = run_cnn_logged(trainer, tensorboard, val=config.val)
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
