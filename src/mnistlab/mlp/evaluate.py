"""The accuracy measured after every epoch, read straight from the trainer's working parameters."""

from __future__ import annotations

from functools import partial

import numpy as np

from . import activations as act
from .inputs import EvalSet
from .layout import ParamViews, TrainData, WorkingLayout, preprocess_into
from .model import MLP
from .threads import RowSplit


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
        self.spares: list[tuple[dict[int, np.ndarray], list[np.ndarray]]] = []  # the same for further threads

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

    def inputs(self, start: int, stop: int, width: int, buffers: dict[int, np.ndarray]) -> np.ndarray:
        """Block ``start:stop`` of the first ``width`` columns, as the working weights expect it."""
        rows = self.rows[start:stop, :width]
        if self.rows.dtype != np.uint8:
            return rows
        mean = None if self.mean is None else self.mean[:width]
        scale = None if self.scale is None else self.scale[:width]
        return preprocess_into(buffers[width][: stop - start], rows, mean, scale)

    def accuracy(
        self, model: MLP, working: WorkingLayout, params: ParamViews, threads: RowSplit | None = None
    ) -> float:
        """Accuracy (argmax of the logits) under the working parameters ``params``; with
        ``threads``, every thread takes its share of the blocks into buffers of its own (each image
        is computed as by one thread, and the counts are whole numbers)."""
        parts = threads.parts if threads is not None and threads.active else 1
        while len(self.spares) < parts - 1:  # (buffers, outputs) of each further thread
            buffers = {w: np.empty_like(b) for w, b in self.buffers.items()}
            self.spares.append((buffers, [np.empty_like(o) for o in self.outputs]))
        if parts == 1:
            return self._correct(model, working, params, self.blocks, self.buffers, self.outputs) / len(
                self.labels
            )
        counts = [0] * parts
        own = [(self.buffers, self.outputs), *self.spares]

        def count(part: int) -> None:
            buffers, outputs = own[part]
            counts[part] = self._correct(model, working, params, self.blocks[part::parts], buffers, outputs)

        threads.spread([partial(count, part) for part in range(parts)])
        return sum(counts) / len(self.labels)

    def _correct(
        self,
        model: MLP,
        working: WorkingLayout,
        params: ParamViews,
        blocks: list[tuple[int, int, bool]],
        buffers: dict[int, np.ndarray],
        outputs: list[np.ndarray],
    ) -> int:
        weights, biases = params.weights, params.biases
        w_all = working.first_layer(params.flat)
        n_in = w_all.shape[0]
        hidden = act.FORWARD[model.config.activation]
        correct = 0
        for start, stop, full in blocks:
            x = self.inputs(start, stop, n_in if full else working.n_core, buffers)
            z = np.matmul(x, w_all if full else weights[0], out=outputs[0][: stop - start])
            z += biases[0]
            logits = model.logits_from(hidden(z), weights, biases, start=1, bufs=outputs)
            correct += int(np.count_nonzero(logits.argmax(axis=1) == self.labels[start:stop]))
        return correct
