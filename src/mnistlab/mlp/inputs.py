"""Checks and conversion of the splits handed to the trainer: images and labels, raw or preprocessed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .model import MLP


@dataclass
class EvalSet:
    inputs: np.ndarray  # (N, input_size): the model's dtype, or raw uint8 values when ``raw``
    labels: np.ndarray  # (N,) intp
    raw: bool = False

    def preprocessed(self, model: MLP) -> np.ndarray:
        if not self.raw:
            return self.inputs
        images = self.inputs.reshape(len(self.inputs), *model.preprocess.mean.shape)
        return model.to_input_matrix(model.preprocess(images))


def is_raw(inputs: np.ndarray) -> bool:
    """uint8 (N, H, W) arrays are raw images that the model's preprocessing turns into inputs."""
    return isinstance(inputs, np.ndarray) and inputs.dtype == np.uint8 and inputs.ndim == 3


def check_data(
    model: MLP, inputs: np.ndarray, labels: np.ndarray, what: str, keep_raw: bool = False
) -> EvalSet:
    """Validate and convert a split: raw uint8 images, or preprocessed (N, 28, 28) / (N, input_size).
    With ``keep_raw``, raw images of a float32 model stay raw (a quarter of the memory), flattened."""
    if keep_raw and is_raw(inputs) and model.dtype == np.float32:
        if inputs.shape[1:] != model.preprocess.mean.shape or inputs[0].size != model.config.input_size:
            model.to_input_matrix(model.preprocess(inputs[:1]))  # raises the one-line shape error
        flat = inputs.reshape(len(inputs), -1)
        return EvalSet(flat, _check_labels(model, labels, len(flat), what), raw=True)
    x = model.to_input_matrix(model.to_inputs(inputs) if is_raw(inputs) else inputs)
    return EvalSet(x, _check_labels(model, labels, len(x), what))


def _check_labels(model: MLP, labels: np.ndarray, n: int, what: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{what}: {n} inputs but labels of shape {y.shape}; give one label per image")
    if n == 0:
        raise DataError(f"{what}: no images")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{what}: labels must be integers, got {y.dtype}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= model.config.n_classes:
        bad = lo if lo < 0 else hi
        raise DataError(f"{what}: label {bad} is out of range 0..{model.config.n_classes - 1}")
    return y.astype(np.intp)
