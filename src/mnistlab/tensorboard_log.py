"""Training as TensorBoard sees it: one event directory per run, written through tensorboardX.

Per epoch (step = the epoch number): every numeric value of the history row as a scalar,
``history/KEY`` for the shared vocabulary (``loss``, ``train_accuracy``, ``test_accuracy``, ``lr``,
``seconds``, ...) and ``engine/KEY`` for an engine's extras; a histogram of every
layer's activations on a fixed probe batch of test images (``activations/LAYER``) and of every
weight tensor (``weights/NAME``); each conv layer's maps for one fixed test image as one image
(``activation_grid/LAYER``, the mosaic the CLI's grids use, scaled to the layer's peak). After
training: the confusion matrix (``confusion_matrix``) and the optimal input patterns of the last
conv layer, an MLP's first hidden layer (``oip/LAYER``).

tensorboardX needs neither torch nor TensorFlow, so the NumPy MLP logs without torch.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .data import Dataset
from .errors import ConfigError, MnistlabError
from .model_api import InspectableModel
from .runs import HISTORY_KEYS

PROBE_SIZE = 256  # test images whose activations make the histograms: the first ones, the same every epoch
GRID_INDEX = 0  # the test image whose conv maps are drawn each epoch
OIP_STEPS = 100


def scalar_tag(key: str) -> str:
    """``history/KEY`` for the shared vocabulary (runs.HISTORY_KEYS), ``engine/KEY`` for an engine's
    extras (timings, ``reg_loss``, ...): TensorBoard groups the charts by the part before the slash."""
    return f"{'history' if key in HISTORY_KEYS else 'engine'}/{key}"


def check_log_dir(path: str | Path) -> Path:
    """Create ``path`` and prove it writable now, so a bad --tensorboard fails before training."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".mnistlab-write-check.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot write TensorBoard logs there ({exc.strerror}); "
            "choose a writable --tensorboard DIR"
        ) from None
    return path


def _summary_writer(logdir: Path):
    from .extras import require

    return require("tensorboardX", "--tensorboard").SummaryWriter(logdir=str(logdir), flush_secs=10)


def conv_layers(model: InspectableModel) -> list[str]:
    """The layers of feature maps (pass-through layers such as pooling left out)."""
    return [name for name, role in model.layer_roles().items() if role == "map"]


def grid_image(maps: np.ndarray) -> np.ndarray:
    """One image's maps (C, H, W) as a single (rows, cols) mosaic in 0..1, scaled to their peak."""
    from .viz.activations import mosaic

    grid = mosaic(maps)  # NaN in the gaps between maps
    low, high = float(np.nanmin(grid)), float(np.nanmax(grid))
    scaled = (grid - low) / (high - low) if high > low else np.zeros_like(grid)
    return np.nan_to_num(scaled, nan=0.0).astype(np.float32)


class TensorBoardLog:
    """Writes one run into ``logdir``: call ``epoch`` after every epoch and ``finish`` once at the end."""

    def __init__(
        self,
        logdir: str | Path,
        dataset: Dataset,
        *,
        probe_size: int = PROBE_SIZE,
        grid_index: int = GRID_INDEX,
        oip_steps: int = OIP_STEPS,
        val: int = 0,
    ):
        """``val``: for a dataset without test images (a sweep trial's), the last ``val`` training
        images (its validation split) stand in for them."""
        self.logdir = check_log_dir(logdir)
        self.split_name = "test"
        if len(dataset.test_labels) == 0 and val:
            n = len(dataset.train_labels) - val
            images, labels = dataset.train_images, dataset.train_labels
            names = dataset.class_names
            dataset = Dataset(dataset.name, images[:n], labels[:n], images[n:], labels[n:], names)
            self.split_name = "validation"
        self.dataset = dataset
        self.probe = dataset.test_images[:probe_size]
        self.grid_index = grid_index
        self.oip_steps = oip_steps
        self.model: InspectableModel | None = None  # set by the engine's hook before the first epoch
        self.writer = _summary_writer(self.logdir)

    def epoch(
        self, row: Mapping[str, Any], model: InspectableModel, weights: Mapping[str, np.ndarray]
    ) -> None:
        step = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                if math.isfinite(value):
                    self.writer.add_scalar(scalar_tag(key), value, step)
        acts = model.activations(self.probe, model.layer_names())
        for name, values in acts.items():
            self.writer.add_histogram(f"activations/{name}", np.asarray(values, np.float64), step)
        for name, values in weights.items():
            self.writer.add_histogram(f"weights/{name}", np.asarray(values, np.float64), step)
        maps = conv_layers(model)
        if maps:
            one = model.activations(self.dataset.test_images[[self.grid_index]], maps)
            for name in maps:
                self.writer.add_image(
                    f"activation_grid/{name}", grid_image(one[name][0]), step, dataformats="HW"
                )
        self.writer.flush()

    def finish(self, model: InspectableModel, step: int) -> None:
        """The confusion matrix and the OIP gallery of the trained model; closes the writer."""
        from .inspect.activations import default_oip_layer
        from .inspect.confusions import confusions
        from .inspect.oip import optimize_inputs
        from .viz.confusion import plot_confusion
        from .viz.gallery import plot_oip_gallery

        try:
            conf = confusions(model, self.dataset, "test")
            names = [str(c) for c in self.dataset.class_names]
            self.writer.add_figure(
                "confusion_matrix",
                plot_confusion(conf.matrix, names, title=f"{self.split_name} accuracy {conf.accuracy:.2%}"),
                step,
            )
            layer = default_oip_layer(model)
            oip = optimize_inputs(model, layer, steps=self.oip_steps, seed=0)
            self.writer.add_figure(f"oip/{layer}", plot_oip_gallery(oip), step)
        finally:
            self.writer.close()

    def close(self) -> None:
        self.writer.close()

    # ------------------------------------------------------------- engine hooks
    def mlp_callback(self) -> Callable[[dict[str, Any]], None]:
        """For mnistlab.mlp.train_on_dataset(callback=...); pass ``on_model=log.watch`` as well."""

        def on_epoch(row: dict[str, Any]) -> None:
            if self.model is None:
                raise MnistlabError("TensorBoardLog.mlp_callback needs on_model=log.watch to see the model")
            self.epoch(row, self.model, self.model.get_params())

        return on_epoch

    def watch(self, model: InspectableModel) -> None:
        self.model = model

    def cnn_callback(self, trainer: Any) -> Callable[[dict[str, Any]], None]:
        """For mnistlab.cnn.Trainer's epoch_callback: reads a copy of the live weights, so the
        network being trained keeps its mode, device and memory format."""
        from .cnn.model import CNN, Net, load_numpy_state, state_to_numpy

        def on_epoch(row: dict[str, Any]) -> None:
            weights = state_to_numpy(trainer.net)
            net = Net(trainer.spec)
            load_numpy_state(net, weights)
            self.epoch(row, CNN(trainer.spec, trainer.preprocess, net), weights)

        return on_epoch


def _both(first: Callable[[dict[str, Any]], None], then: Callable[[dict[str, Any]], None] | None):
    if then is None:
        return first

    def on_epoch(row: dict[str, Any]) -> None:
        first(row)
        then(row)  # may raise StopTraining (a sweep's pruner): this epoch is logged already

    return on_epoch


def train_mlp_logged(logdir: str | Path, config: Any, dataset: Dataset, *, val: int = 0, **options: Any):
    """mnistlab.mlp.train_on_dataset with a TensorBoard log of every epoch and the end figures;
    ``options`` go to train_on_dataset (its ``callback`` still runs, after the log)."""
    from .mlp.run import train_on_dataset
    from .mlp.threads import blas_threads

    log = TensorBoardLog(logdir, dataset, val=val)
    options["callback"] = _both(log.mlp_callback(), options.get("callback"))
    try:
        result = train_on_dataset(config, dataset, on_model=log.watch, **options)
    except BaseException:
        log.close()
        raise
    with blas_threads(options.get("threads", "auto")):  # as training: idle BLAS threads spin when busy
        log.finish(result.model, len(result.history))
    return result


def run_cnn_logged(trainer: Any, logdir: str | Path, *, val: int = 0):
    """``trainer.run()`` with a TensorBoard log of every epoch and, for a finished run, the end
    figures; the trainer's own epoch_callback (a sweep's pruner) still runs, after the log."""
    from .cnn.levers import torch_threads

    log = TensorBoardLog(logdir, trainer.dataset, val=val)
    trainer.epoch_callback = _both(log.cnn_callback(trainer), trainer.epoch_callback)
    try:
        result = trainer.run()
    except BaseException:
        log.close()
        raise
    if result.state != "complete":
        log.close()
        return result
    with torch_threads(trainer.levers.threads):  # as training chose, not torch's default
        log.finish(result.model, len(result.history))
    return result
