"""The accuracy measured after every epoch, read straight from the trainer's working parameters."""

from __future__ import annotations

from functools import partial

import numpy as np

from . import activations as act
from .inputs import EvalSet
from .layout import ParamViews, TrainData, WorkingLayout, preprocess_into
from .model import MLP
from .staircase import columns_of, reach_levels
from .threads import RowSplit


class SplitEval:
    """An evaluation split laid out like the training data, so that it skips the same zeros:
    columns in the working order and images in descending reach (see staircase), labels alongside,
    so that each block of images multiplies only the columns up to its images' last ink. Raw
    images stay uint8 and are preprocessed block by block into cache-sized buffers. ``make``
    returns None where no block would skip a column (dense inputs)."""

    def __init__(self, rows: np.ndarray, labels: np.ndarray, blocks: list[tuple[int, int, int]]) -> None:
        self.rows, self.labels = rows, labels
        self.blocks = blocks  # (start, stop, columns multiplied)
        self.mean: np.ndarray | None = None  # raw rows: preprocessing per block (None: not needed)
        self.scale: np.ndarray | None = None
        self.buffer: np.ndarray | None = None  # raw rows: a block's float inputs
        self.outputs: list[np.ndarray] = []  # per layer, a block's outputs
        self.spares: list[tuple[np.ndarray | None, list[np.ndarray]]] = []  # the same for further threads

    @classmethod
    def make(cls, evalset: EvalSet, data: TrainData, working: WorkingLayout, block: int) -> SplitEval | None:
        model = working.model
        x = evalset.inputs
        n, n_in = x.shape
        rows = np.take(x, data.first_rows, axis=1)
        # a raw zero in an always-multiplied column is not a zero input: those columns come first
        levels = reach_levels(rows, data.n_always if evalset.raw else 0, n_in)
        order = np.argsort(-levels.astype(np.int32), kind="stable")
        levels = levels[order]
        blocks = [(a, min(a + block, n), int(columns_of(levels[a], n_in))) for a in range(0, n, block)]
        if all(columns == n_in for _, _, columns in blocks):
            return None
        split = cls(np.take(rows, order, axis=0), evalset.labels[order], blocks)
        # the working first-layer weights are the model's divided by input_scale (see layout)
        if evalset.raw and data.input_scale == 1:
            cols = data.first_rows
            mean, scale = model.preprocess.mean.reshape(-1)[cols], model.preprocess.scale.reshape(-1)[cols]
            split.mean = mean if mean.any() else None
            split.scale = scale
        elif not evalset.raw and data.input_scale != 1:
            split.rows *= data.input_scale
        if evalset.raw:
            split.buffer = np.empty((block, n_in), np.float32)
        split.outputs = [np.empty((block, n_out), model.dtype) for _, n_out in working.shapes]
        return split

    def inputs(self, start: int, stop: int, width: int, buffer: np.ndarray | None) -> np.ndarray:
        """Block ``start:stop`` of the first ``width`` columns, as the working weights expect it."""
        rows = self.rows[start:stop, :width]
        if self.rows.dtype != np.uint8:
            return rows
        mean = None if self.mean is None else self.mean[:width]
        scale = None if self.scale is None else self.scale[:width]
        return preprocess_into(buffer[: stop - start, :width], rows, mean, scale)

    def accuracy(
        self, model: MLP, working: WorkingLayout, params: ParamViews, threads: RowSplit | None = None
    ) -> float:
        """Accuracy (argmax of the logits) under the working parameters ``params``; with
        ``threads``, every thread takes its share of the blocks into buffers of its own (each image
        is computed as by one thread, and the counts are whole numbers)."""
        parts = threads.parts if threads is not None and threads.active else 1
        while len(self.spares) < parts - 1:  # (buffer, outputs) of each further thread
            buffer = None if self.buffer is None else np.empty_like(self.buffer)
            self.spares.append((buffer, [np.empty_like(o) for o in self.outputs]))
        if parts == 1:
            return self._correct(model, params, self.blocks, self.buffer, self.outputs) / len(self.labels)
        counts = [0] * parts
        own = [(self.buffer, self.outputs), *self.spares]

        def count(part: int) -> None:
            buffer, outputs = own[part]
            counts[part] = self._correct(model, params, self.blocks[part::parts], buffer, outputs)

        threads.spread([partial(count, part) for part in range(parts)])
        return sum(counts) / len(self.labels)

    def _correct(
        self,
        model: MLP,
        params: ParamViews,
        blocks: list[tuple[int, int, int]],
        buffer: np.ndarray | None,
        outputs: list[np.ndarray],
    ) -> int:
        weights, biases = params.weights, params.biases
        hidden = act.FORWARD[model.config.activation]
        correct = 0
        for start, stop, columns in blocks:
            x = self.inputs(start, stop, columns, buffer)
            z = np.matmul(x, weights[0][:columns], out=outputs[0][: stop - start])
            z += biases[0]
            logits = model.logits_from(hidden(z), weights, biases, start=1, bufs=outputs)
            correct += int(np.count_nonzero(logits.argmax(axis=1) == self.labels[start:stop]))
        return correct
