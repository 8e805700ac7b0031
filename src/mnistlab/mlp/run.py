"""Train an MLP on a dataset and save it as a run directory: what `mnistlab train mlp` calls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..callbacks import StopTraining
from ..data import Dataset, Preprocessor, load_dataset, validation_split
from ..errors import TrainingDiverged
from ..runs import make_manifest, write_run
from .config import MLPConfig
from .model import MLP
from .train import Trainer


@dataclass
class TrainResult:
    model: MLP
    history: list[dict[str, Any]]
    run_dir: Path | None
    test_accuracy: float | None
    input_layout: dict[str, float] = field(default_factory=dict)  # Trainer.layout: how the inputs were split
    # ThreadChoice.log: (epoch, threads chosen, microseconds per image with all, with one)
    thread_choices: list[tuple[int, int, float, float]] = field(default_factory=list)

    def _repr_html_(self) -> str:  # Jupyter: a summary table and the curves
        from ..notebook import training_html

        return training_html("mlp", self.run_dir, self.history, self.model.config.to_dict())


def train_on_dataset(
    config: MLPConfig,
    dataset: Dataset | str = "mnist",
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
    profile: bool = False,
    preset: str | None = None,
    threads: int | str | None = "auto",
    on_model: Callable[[MLP], None] | None = None,
) -> TrainResult:
    """Fit preprocessing on the training split, train, evaluate on the test split, write the run.

    With ``config.val`` the last ``val`` training images are held out for validation (and early
    stopping with ``config.patience``). ``on_model`` gets the model before training starts (its
    weights are current whenever ``callback`` runs). If training diverges, the run is still written with the
    last good weights (when at least one epoch finished) and TrainingDiverged is raised naming it.
    """
    ds = load_dataset(dataset) if isinstance(dataset, str) else dataset
    train_idx, val_idx = validation_split(len(ds.train_images), config.val)
    train_images = ds.train_images[train_idx] if config.val else ds.train_images
    pre = Preprocessor.fit(config.preprocess, train_images)
    model = MLP(config, preprocess=pre)
    if on_model is not None:
        on_model(model)
    y = ds.train_labels[train_idx] if config.val else ds.train_labels
    # raw uint8 images: the trainer applies the model's preprocessing chunk by chunk
    test = (ds.test_images, ds.test_labels) if len(ds.test_labels) else None
    val = (ds.train_images[val_idx], ds.train_labels[val_idx]) if config.val else None
    trainer = Trainer(model)  # the model carries the config
    history: list[dict[str, Any]] = []

    def on_epoch(row: dict[str, Any]) -> None:
        history.append(row)
        if callback is not None:
            callback(row)

    diverged: TrainingDiverged | None = None
    stopped = False
    try:
        trainer.fit(train_images, y, test=test, val=val, callback=on_epoch, profile=profile, threads=threads)
    except TrainingDiverged as exc:
        diverged = exc
    except StopTraining:
        stopped = True  # the model holds the weights after the epoch whose callback asked
    if test is None:
        test_accuracy = None
    elif diverged is None and config.patience is None and not stopped:
        test_accuracy = history[-1]["test_accuracy"]  # measured on the final weights after the last epoch
    else:  # the weights were rolled back (divergence) or restored (early stopping's best epoch)
        with np.errstate(over="ignore", invalid="ignore"):  # last good weights of a diverged run may be huge
            test_accuracy = model.accuracy(pre(ds.test_images), ds.test_labels)
    choices = list(trainer.thread_choice.log) if trainer.thread_choice else []
    run_dir = None
    if out is not None and (diverged is None or history):
        extra: dict[str, Any] = {
            "metrics": {"test_accuracy": test_accuracy, "epochs_trained": len(history)},
            "status": "diverged" if diverged else "stopped" if stopped else "complete",
            "blas_threads": trainer.threads,
            "blas_thread_choices": choices,
            "input_layout": trainer.layout,
        }
        if preset:
            extra["preset"] = preset
        if trainer.best_epoch is not None:
            extra["metrics"]["best_epoch"] = trainer.best_epoch
            extra["metrics"]["stopped_early"] = trainer.stopped_early
        manifest = make_manifest("mlp", config.to_dict(), dataset=ds.name, **extra)
        run_dir = write_run(
            Path(out), manifest, model.get_params(), pre.to_arrays(), history, overwrite=overwrite
        )
    if diverged is not None:
        where = f"; the last good weights are saved in {run_dir}" if run_dir else ""
        raise TrainingDiverged(f"{diverged}{where}")
    return TrainResult(model, history, run_dir, test_accuracy, trainer.layout, choices)
