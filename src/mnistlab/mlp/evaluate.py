"""The accuracy measured after every epoch, read straight from the trainer's working parameters."""

from __future__ import annotations

import numpy as np

from . import activations as act
from .inputs import EvalSet
from .layout import ParamViews, TrainData, WorkingLayout, preprocess_into
from .model import MLP


class SplitEval:
    """An evaluation split laid out like the training data, so that it skips the same zeros:
    columns in the working order, and the ``n_inked`` images with ink outside the core columns
    first, so that the first layer multiplies all columns for those and the core columns for the
    rest. Raw images stay uint8 and are preprocessed block by block into cache-sized buffers.
    ``make`` returns None where the split would not pay (dense inputs)."""

    def __init__(self, rows: np.ndarray, n_inked: int, labels: np.ndarray, block: int) -> None:
        self.rows, self.n_inked, self.labels = rows, n_inked, labels
        n = len(rows)
        # (start, stop, all columns?) blocks of at most ``block`` images, split where the core-only rows begin
        self.blocks = [
            (a, min(a + block, stop), stop == n_inked)
            for start, stop in ((0, n_inked), (n_inked, n))
            for a in range(start, stop, block)
        ]
        self.mean: np.ndarray | None = None  # raw rows: preprocessing per block (None: not needed)
        self.scale: np.ndarray | None = None
        self.buffers: dict[int, np.ndarray] = {}  # raw rows: float block buffers by column count
        self.outputs: list[np.ndarray] = []  # per layer, a block's outputs

    @classmethod
    def make(cls, evalset: EvalSet, data: TrainData, working: WorkingLayout, block: int) -> SplitEval | None:
        model = working.model
        x = evalset.inputs
        if data.n_core == x.shape[1]:
            return None
        others = np.concatenate([data.tail, data.inactive])  # the working layout's order
        touch = np.take(x, others, axis=1).any(axis=1)
        n_inked = int(np.count_nonzero(touch))
        if n_inked > len(touch) // 2:
            return None
        order = np.concatenate([np.flatnonzero(touch), np.flatnonzero(~touch)])
        cols = np.concatenate([data.core, others])
        split = cls(np.take(np.take(x, order, axis=0), cols, axis=1), n_inked, evalset.labels[order], block)
        # the working first-layer weights are the model's divided by input_scale (see layout)
        if evalset.raw and data.input_scale == 1:
            mean, scale = model.preprocess.mean.reshape(-1)[cols], model.preprocess.scale.reshape(-1)[cols]
            split.mean = mean if mean.any() else None
            split.scale = scale
        elif not evalset.raw and data.input_scale != 1:
            split.rows *= data.input_scale
        if evalset.raw:
            split.buffers = {w: np.empty((block, w), np.float32) for w in (data.n_core, x.shape[1])}
        split.outputs = [np.empty((block, n_out), model.dtype) for _, n_out in working.shapes]
        return split

    def inputs(self, start: int, stop: int, width: int) -> np.ndarray:
        """Block ``start:stop`` of the first ``width`` columns, as the working weights expect it."""
        rows = self.rows[start:stop, :width]
        if self.rows.dtype != np.uint8:
            return rows
        mean = None if self.mean is None else self.mean[:width]
        scale = None if self.scale is None else self.scale[:width]
        return preprocess_into(self.buffers[width][: stop - start], rows, mean, scale)

    def accuracy(self, model: MLP, working: WorkingLayout, params: ParamViews) -> float:
        """Accuracy (argmax of the logits) under the working parameters ``params``."""
        weights, biases = params.weights, params.biases
        w_all = working.first_layer(params.flat)
        n_in = w_all.shape[0]
        hidden = act.FORWARD[model.config.activation]
        correct = 0
        for start, stop, full in self.blocks:
            x = self.inputs(start, stop, n_in if full else working.n_core)
            z = np.matmul(x, w_all if full else weights[0], out=self.outputs[0][: stop - start])
            z += biases[0]
            logits = model.logits_from(hidden(z), weights, biases, start=1, bufs=self.outputs)
            correct += int(np.count_nonzero(logits.argmax(axis=1) == self.labels[start:stop]))
        return correct / len(self.labels)
