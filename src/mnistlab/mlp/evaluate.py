"""The accuracy measured after every epoch, read straight from the trainer's working parameters."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from . import activations as act
from .inputs import EvalSet
from .layout import ParamViews, TrainData, WorkingLayout, preprocess_into
from .model import MLP
from .staircase import columns_of, reach_levels
from .tally import count_correct
from .threads import RowSplit


class SplitEval:
    """An evaluation split laid out like the training data, so that it skips the same zeros:
    columns in the working order and images in descending reach (see staircase), labels alongside,
    so that each block of images multiplies only the columns up to its images' last ink. Raw
    images stay uint8 and are preprocessed block by block into cache-sized buffers. ``make``
    returns None where no block would skip a column (dense inputs).

    The first layer is computed block by block; the other layers run once per *stretch* of
    ``STRETCH_BLOCKS`` blocks, fewer small NumPy calls, whose logits are kept as (classes, images)
    and counted once per pass (see tally.count_correct). With several threads
    the workers compute their blocks' first layer (long calls, free of the interpreter lock) while
    the calling thread computes its own and runs every stretch's small calls."""

    # Blocks per stretch: a stretch's first-layer outputs stay in the L2 cache.
    STRETCH_BLOCKS = 4
    # With several threads, the calling thread's share of the blocks: it also runs the stretches.
    CALLER_SHARE = 0.4

    def __init__(self, rows: np.ndarray, labels: np.ndarray, blocks: list[tuple[int, int, int]]) -> None:
        self.rows, self.labels = rows, labels
        self.blocks = blocks  # (start, stop, columns multiplied)
        step = self.STRETCH_BLOCKS
        self.stretches = [list(range(b, min(b + step, len(blocks)))) for b in range(0, len(blocks), step)]
        self.mean: np.ndarray | None = None  # raw rows: preprocessing per block (None: not needed)
        self.scale: np.ndarray | None = None
        self.buffers: list[np.ndarray | None] = []  # raw rows: a block's float inputs, per thread
        self.first: np.ndarray | None = None  # every image's first-layer products (images, units)
        self.outputs: list[np.ndarray] = []  # per deeper layer, a stretch's outputs
        self.logits: np.ndarray | None = None  # every image's logits, one row per class
        self.label_flat = labels * len(labels) + np.arange(len(labels))  # true classes' flat logits

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
        split.buffers = [np.empty((block, n_in), np.float32) if evalset.raw else None]
        split.first = np.empty((n, working.shapes[0][1]), model.dtype)
        stretch = block * cls.STRETCH_BLOCKS
        split.outputs = [np.empty((stretch, n_out), model.dtype) for _, n_out in working.shapes[1:]]
        split.logits = np.empty((working.shapes[-1][1], n), model.dtype)
        return split

    def inputs(self, start: int, stop: int, width: int, buffer: np.ndarray | None) -> np.ndarray:
        """Block ``start:stop`` of the first ``width`` columns, as the working weights expect it."""
        rows = self.rows[start:stop, :width]
        if self.rows.dtype != np.uint8:
            return rows
        mean = None if self.mean is None else self.mean[:width]
        scale = None if self.scale is None else self.scale[:width]
        return preprocess_into(buffer[: stop - start, :width], rows, mean, scale)

    def accuracy(self, model: MLP, params: ParamViews, threads: RowSplit | None = None) -> float:
        """Accuracy (argmax of the logits) under the working parameters ``params``; with
        ``threads``, the workers multiply a share of the blocks' first layer (each image is
        computed as by one thread)."""
        parts = threads.parts if threads is not None and threads.active else 1
        hidden = act.FORWARD[model.config.activation]
        if parts == 1:
            self._logits(model, params, hidden, self.stretches, [])
            return self._correct() / len(self.labels)
        while len(self.buffers) < parts:
            self.buffers.append(None if self.buffers[0] is None else np.empty_like(self.buffers[0]))
        # the caller's blocks spread evenly; the others dealt round the workers
        share = self.CALLER_SHARE
        others = [i for i in range(len(self.blocks)) if int((i + 1) * share) == int(i * share)]
        owner = dict.fromkeys(range(len(self.blocks)), 0)
        owner.update({b: 1 + j % (parts - 1) for j, b in enumerate(others)})
        # ready[w][s]: worker w has multiplied its blocks of stretch s
        ready = [[threading.Event() for _ in self.stretches] for _ in range(parts - 1)]

        def caller() -> None:
            own = [[b for b in s if owner[b] == 0] for s in self.stretches]
            waits = [[e[s] for e in ready] for s in range(len(own))]
            self._logits(model, params, hidden, own, waits)

        def worker(w: int) -> None:
            try:
                for s, stretch in enumerate(self.stretches):
                    for b in stretch:
                        if owner[b] == w:
                            self._first_layer(params, b, self.buffers[w], hidden)
                    ready[w - 1][s].set()
            finally:  # the caller must not wait for a worker that failed (spread raises its error)
                for event in ready[w - 1]:
                    event.set()

        threads.spread([caller, *(lambda w=w: worker(w) for w in range(1, parts))])
        return self._correct() / len(self.labels)

    def _first_layer(self, params: ParamViews, b: int, buffer: np.ndarray | None, hidden: Callable) -> None:
        """Block ``b``'s first-layer outputs, activation included (long calls, free of the
        interpreter lock)."""
        start, stop, columns = self.blocks[b]
        x = self.inputs(start, stop, columns, buffer)
        z = np.matmul(x, params.weights[0][:columns], out=self.first[start:stop])
        z += params.biases[0]
        hidden(z)

    def _logits(
        self,
        model: MLP,
        params: ParamViews,
        hidden: Callable,
        own: list[list[int]],
        ready: list[list[threading.Event]],
    ) -> None:
        """Every stretch's logits into ``logits``, multiplying the blocks ``own[s]`` of stretch s and
        waiting for ``ready[s]`` (the other threads' blocks of it)."""
        weights, biases = params.weights, params.biases
        for s, stretch in enumerate(self.stretches):
            for b in own[s]:
                self._first_layer(params, b, self.buffers[0], hidden)
            for event in ready[s] if ready else ():
                event.wait()
            start, stop = self.blocks[stretch[0]][0], self.blocks[stretch[-1]][1]
            a = self.first[start:stop]
            logits = model.logits_from(a, weights, biases, start=1, bufs=[None, *self.outputs])
            np.copyto(self.logits[:, start:stop], logits.T)

    def _correct(self) -> int:
        """The correct predictions among the logits of the last pass."""
        return count_correct(self.logits, self.labels, np.take(self.logits, self.label_flat))
