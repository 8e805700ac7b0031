"""Forward and backward passes over one chunk of a batch, in buffers allocated once per fit.

Weights are (in, out), so every product is a plain BLAS call on row-major buffers (transposes are
views); biases are added by broadcasting; activations are computed in place and their derivatives
taken from the kept outputs; the gradient with respect to the network's inputs is never computed.
The caller's factor (the learning rate over the batch size, for SGD) is folded into the output
delta, so the products deliver the scaled gradient with no extra pass over the parameters.
The first layer multiplies each chunk as a staircase of products (mlp/staircase.py). With several
threads (``products``) the threads divide that list of products, and each gathers the rows it
multiplies; the many small NumPy calls stay on the calling thread, where they overlap the workers'
long products: cut across threads, each would hand the interpreter lock back and forth.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from . import activations as act
from .layout import ParamViews, TrainData, WorkingLayout
from .model import MLP
from .profile import Phases
from .staircase import Steps
from .threads import RowSplit, deal

# Softmax and cross-entropy are unchanged by a shift per row. One shift for a whole chunk is a
# scalar subtraction; it is safe while every logit lies within this much of the top one (every
# exp stays a normal float32), else each row is shifted by its own max.
SHARED_SHIFT_RANGE = 60.0


class Tally:
    """What each chunk's loss step leaves for the epoch's accuracy and mean absolute error, counted
    once per epoch rather than with a few small NumPy calls per chunk: each image's logits (one row
    per class, so that the epoch's maxima are a few passes over long rows, where an argmax per
    chunk loops over rows of a few classes), its true class and, for softmax outputs, its true
    class's shifted logit and its sum of exps (indexed by position in the epoch's order). Sigmoid
    outputs keep one summed error per chunk."""

    def __init__(self, n: int, n_out: int, dtype: np.dtype) -> None:
        self.logits = np.empty((n_out, n), dtype)
        self.labels = np.empty(n, np.intp)
        self.label_logit = np.empty(n, dtype)
        self.exp_sum = np.empty(n, dtype)
        self.chunks: list[tuple[int, int]] = []  # (start, stop) of each chunk seen this epoch
        self.errors: list[float] = []  # sigmoid outputs: each chunk's summed |p - onehot|

    def take(self, softmax: bool) -> tuple[int, float]:
        """The number of correct predictions and the summed |p - onehot| of the chunks seen since
        the last call, each chunk's error summed as the chunk would have summed it."""
        stop = self.chunks[-1][1] if self.chunks else 0
        start = self.chunks[0][0] if self.chunks else 0
        correct = self.correct(start, stop)
        errors = self.errors
        if softmax:
            # |p - onehot| sums to 2 (1 - p_label) per row, since p sums to 1
            p_label = np.exp(self.label_logit[start:stop]) / self.exp_sum[start:stop]
            errors = [2.0 * (b - a - float(p_label[a - start : b - start].sum())) for a, b in self.chunks]
        abs_err = 0.0  # added in turn, as the chunks were: sum() compensates from Python 3.12 on
        for err in errors:
            abs_err += err
        self.chunks, self.errors = [], []
        return correct, abs_err

    def correct(self, start: int, stop: int) -> int:
        """How many images in ``start:stop`` have their true class as the argmax of their logits
        (the first class of the highest logit, as np.argmax picks it)."""
        logits = self.logits[:, start:stop]
        labels = self.labels[start:stop]
        top = logits.max(axis=0)
        flat_at = labels * self.logits.shape[1] + np.arange(start, stop)
        hit = np.take(self.logits, flat_at) == top
        tied = np.count_nonzero(logits == top, axis=0) > 1
        unsure = np.flatnonzero(hit & tied)  # another class shares the top logit: argmax decides
        misses = np.count_nonzero(logits[:, unsure].argmax(axis=0) != labels[unsure]) if len(unsure) else 0
        return int(np.count_nonzero(hit)) - int(misses)


def _in_turn(jobs: list[Callable[[], Any]]) -> None:
    for job in jobs:
        job()


class Chunk:
    """The chunk a ``Backprop.run`` is working on: its images (in descending reach), their
    first-layer products (``steps``), their gathered inputs and the parameters they are multiplied
    with."""

    def __init__(
        self, data: TrainData, idx: np.ndarray, steps: Steps, xb: np.ndarray, params: ParamViews
    ) -> None:
        self.data, self.idx, self.steps, self.xb, self.params = data, idx, steps, xb, params


class Backprop:
    def __init__(
        self, model: MLP, working: WorkingLayout, data: TrainData, rows: int, summed: bool, starts: np.ndarray
    ) -> None:
        """Buffers for chunks of up to ``rows`` images, which begin at ``starts`` in every epoch's
        order; ``summed``: batches span several chunks, whose gradients are added up."""
        dt = model.dtype
        sizes = working.sizes  # hidden widths padded (see layout)
        self.config = model.config
        self.working = working
        # Each layer's units without the working layout's pads, and the length of each layer's
        # sums: its products add over the model's units of the layer below only (None: every input
        # column). The pads would add exact zeros, but a longer sum may take another BLAS path
        # and round differently.
        self.widths = model.config.sizes[1:]
        self.fan_in = [None, *self.widths[:-1]]
        # Two input buffers, used in turn with several threads: a worker gathers the next chunk
        # into one while the other still holds the inputs of this chunk's weight gradient.
        self.inputs = [np.empty((rows, data.width), dt) for _ in range(2)]
        self.flip = 0
        self.raw_inputs = np.empty((rows, data.width), np.uint8) if data.raw else None
        self.tally = Tally(data.n, sizes[-1], dt)
        # per position in the epoch's order: where its chunk's output row starts in the flat outputs,
        # then (``start_epoch``) where its true class is
        chunk_lengths = np.diff(np.append(starts, data.n))
        self.row_offsets = (np.arange(data.n) - np.repeat(starts, chunk_lengths)) * sizes[-1]
        self.label_at = self.row_offsets.copy()
        self.ones = np.ones(max(rows, sizes[-1]), dt)
        self.acts = [np.empty((rows, s), dt) for s in sizes[1:]]  # layer outputs, computed in place
        self.deltas = [np.empty((rows, s), dt) for s in sizes[1:-1]]  # d loss / d z of hidden layers
        self.scratch = [np.empty((rows, s), dt) for s in sizes[1:]]
        self.logits = np.empty((rows, sizes[-1]), dt)
        # the gradient of a batch's later chunks, added into the optimizer's
        self.part: ParamViews | None = working.views(np.zeros(working.size, dt)) if summed else None
        # several cores, set by the trainer (None: one thread): the threads divide each chunk's
        # first-layer products (see staircase) and each gathers the rows it multiplies
        self.products: RowSplit | None = None
        self.chunk: Chunk | None = None
        # where in the epoch's order the next chunk begins whose worker rows were gathered ahead
        # into the input buffer it will use
        self.ahead: int | None = None
        # per (chunk length, thread boundary): whether the deeper layers' forward products, cut there,
        # reproduce the whole ones (see RowSplit.reproduces)
        self.deeper_cuts: dict[tuple[int, int], bool] = {}

    def start_epoch(self, data: TrainData, order: np.ndarray) -> None:
        """Take the labels of the epoch's ``order`` (as arranged, see Staircase.arrange) at once."""
        labels = np.take(data.labels, order, out=self.tally.labels, mode="clip")
        np.add(self.row_offsets, labels, out=self.label_at)
        self.ahead = None  # gathered from another order

    def run(
        self,
        data: TrainData,
        idx: np.ndarray,
        steps: Steps,
        at: int,
        params: ParamViews,
        grad: ParamViews,
        first: bool,
        scale: float,
        phases: Phases,
        following: tuple[int, np.ndarray, Steps] | None = None,
    ) -> float:
        """Forward and backward for the images ``idx``, which sit at ``at`` in the epoch's arranged
        order (in descending reach, multiplied as ``steps``; ``start_epoch`` took their labels):
        the gradient times ``scale`` goes into ``grad`` (``first``: the batch's first chunk) or is
        added to it. Returns the chunk's summed data loss; ``tally`` keeps what the epoch's
        accuracy and error need. ``following``: the next chunk's place, images (arranged) and
        products, whose worker rows a worker may gather ahead while this thread computes the loss
        and the deltas."""
        k = len(idx)
        ahead, self.ahead = self.ahead, None
        split = self.products if self.products is not None and self.products.active else None
        if self.products is not None:
            self.flip ^= 1
        self.chunk = Chunk(data, idx, steps, self.inputs[self.flip][:k], params)
        cut = steps.worker_row if split is not None else None
        if cut is not None:
            # each thread gathers and multiplies its own groups' rows; the calling thread then takes
            # its rows through the other layers while the workers finish
            whole_deeper = not self._deeper_cut(k, cut)
            mine = [partial(self._first_layer_rows, steps.forward(0, steps.plan.worker_group), 0, cut)]
            if not whole_deeper:
                mine.append(partial(self._forward_rows, 0, cut))
            theirs = [
                partial(self._first_layer_rows, groups, groups[0][0], groups[-1][1], gathered=ahead == at)
                for groups in deal(steps.forward(steps.plan.worker_group), split.parts - 1)
                if groups
            ]
            split.spread([partial(_in_turn, mine), *theirs])
            self._forward_rows(0 if whole_deeper else cut, k)
        else:
            self._first_layer_rows(steps.forward(), 0, k, phases)
            self._forward_rows(0, k)
        phases.lap("forward")

        losses = []

        def deltas() -> None:
            losses.append(self._loss_and_output_delta(self.acts[-1][:k], at, scale))
            phases.lap("loss")
            self._hidden_deltas(k)

        if cut is not None and following is not None:
            split.spread([deltas, partial(self._gather_ahead, data, *following)])
        else:
            deltas()
        (loss,) = losses
        target = grad if first else self.part
        self._weight_gradients(target)
        if not first:
            grad.flat += self.part.flat
        phases.lap("backward")
        return loss

    def _deeper_cut(self, k: int, cut: int) -> bool:
        """Whether the deeper layers' forward products of a chunk of ``k`` rows may run in the row
        blocks before and after ``cut`` (found once per layout: a row cut changes no sum, but the
        BLAS kernel's edge blocks may add in another order)."""
        key = (k, cut)
        if key not in self.deeper_cuts:
            weights, fan_in, bounds = self.chunk.params.weights, self.fan_in, (0, cut, k)
            self.deeper_cuts[key] = all(
                self.products.reproduces(self.acts[i - 1][:k, : fan_in[i]], weights[i][: fan_in[i]], bounds)
                for i in range(1, len(weights))
            )
        return self.deeper_cuts[key]

    def _gather_ahead(self, data: TrainData, at: int, idx: np.ndarray, steps: Steps) -> None:
        """Gather the rows of the next chunk (at ``at``, images ``idx`` arranged, multiplied as
        ``steps``) that the workers will multiply, into the input buffer it will use."""
        cut = steps.worker_row
        if cut is None:
            return
        k = len(idx)
        xb = self.inputs[self.flip ^ 1][:k]
        raw = None if self.raw_inputs is None else self.raw_inputs[cut:k]
        groups = [(a - cut, b - cut, columns) for a, b, columns in steps.forward(steps.plan.worker_group)]
        data.gather(idx[cut:k], xb[cut:k], raw, groups)
        self.ahead = at

    def _first_layer_rows(
        self,
        groups: list[tuple[int, int, int]],
        lo: int,
        hi: int,
        phases: Phases | None = None,
        gathered: bool = False,
    ) -> None:
        """Rows ``lo:hi`` of the chunk gathered (unless ``gathered`` ahead) and multiplied by the
        first layer's weights, as the ``groups`` (row start, row stop, columns) that cover them."""
        chunk = self.chunk
        rows = slice(lo, hi)
        xb = chunk.xb
        if not gathered:
            raw = None if self.raw_inputs is None else self.raw_inputs[rows]
            chunk.data.gather(chunk.idx[rows], xb[rows], raw, [(a - lo, b - lo, k) for a, b, k in groups])
        if phases is not None:
            phases.lap("gather")
        w, z = chunk.params.weights[0], self.acts[0]
        for a, b, columns in groups:
            np.matmul(xb[a:b, :columns], w[:columns], out=z[a:b])

    def _forward_rows(self, lo: int, hi: int) -> None:
        """Rows ``lo:hi`` from the first layer's products through every layer to the logits (in
        ``acts[-1]``)."""
        weights, biases = self.chunk.params.weights, self.chunk.params.biases
        last = len(weights) - 1
        hidden = act.FORWARD[self.config.activation]
        fan_in = self.fan_in
        rows = slice(lo, hi)
        a = self.acts[0][rows]  # the first layer's products, no bias added yet
        for i in range(last):
            z = self.acts[i][rows]
            if i:
                np.matmul(a[:, : fan_in[i]], weights[i][: fan_in[i]], out=z)  # (rows, out)
            z += biases[i]
            a = hidden(z)
        out = self.acts[last][rows]
        np.matmul(a[:, : fan_in[last]], weights[last][: fan_in[last]], out=out)  # (rows, classes) logits
        out += biases[last]

    def _hidden_deltas(self, k: int) -> None:
        """Every hidden layer's delta (in ``deltas``), from the output delta in ``acts[-1]``. Small
        products and elementwise passes: cut across threads, the hand-overs of the interpreter
        lock cost more than they save."""
        weights = self.chunk.params.weights
        backward = act.BACKWARD[self.config.activation]
        rows = slice(0, k)
        delta = self.acts[-1][rows]
        for i in range(len(weights) - 1, 0, -1):
            width = self.widths[i]
            d_below = self.deltas[i - 1][rows]
            np.matmul(delta[:, :width], weights[i][:, :width].T, out=d_below)  # (rows, in); zero pads
            delta = backward(self.acts[i - 1][rows], d_below, self.scratch[i - 1][rows])

    def _weight_gradients(self, target: ParamViews) -> None:
        """Every layer's weight and bias gradient into ``target``, from the deltas. The deeper
        layers' are multiplied while the other cores finish their share of the first layer's."""
        chunk = self.chunk
        k, steps, xb = len(chunk.idx), chunk.steps, chunk.xb
        # the pads' gradient entries are never written and stay zero
        delta = self.deltas[0][:k]  # (config: at least one hidden layer)
        # a BLAS product with a ones vector sums the rows faster than np.sum
        np.matmul(self.ones[:k], delta[:, : self.widths[0]], out=target.biases[0][: self.widths[0]])
        input_scale = self.working.input_scale
        if input_scale != 1:
            delta *= 1.0 / input_scale**2  # inputs u = s x, weights W / s: gradient (u.T delta) / s**2
        first = target.weights[0]
        reached = steps.columns[0]  # the first group's columns are the chunk's widest
        if reached < self.working.width:
            first[reached : self.working.width].fill(0)  # no image of the chunk has ink there

        def column_blocks(blocks: list[tuple[int, int, int]]) -> None:
            for lo, hi, rows in blocks:
                np.matmul(xb[:rows, lo:hi].T, delta[:rows], out=first[lo:hi])

        mine, theirs = steps.gradient()
        split = self.products
        if split is None or not split.active or not theirs:
            # one thread: the deeper layers' gradients first, while their deltas are still in cache
            # (the first layer's products stream the chunk's inputs through it)
            self._deeper_gradients(target)
            column_blocks(mine)
            column_blocks(theirs)
            return

        def own() -> None:
            column_blocks(mine)
            self._deeper_gradients(target)

        split.spread([own, *(partial(column_blocks, b) for b in deal(theirs, split.parts - 1) if b)])

    def _deeper_gradients(self, target: ParamViews) -> None:
        k = len(self.chunk.idx)
        last = len(self.widths) - 1
        for i in range(last, 0, -1):
            width, fan_in = self.widths[i], self.fan_in[i]
            delta = self.acts[-1][:k] if i == last else self.deltas[i][:k]
            np.matmul(self.ones[:k], delta[:, :width], out=target.biases[i][:width])
            np.matmul(self.acts[i - 1][:k, :fan_in].T, delta, out=target.weights[i][:fan_in])  # (in, out)

    def _loss_and_output_delta(self, out: np.ndarray, at: int, scale: float) -> float:
        """Turn the logits ``out`` of the chunk at ``at`` into ``scale`` * d loss / d logits in
        place; returns the summed loss and leaves the logits (and what the error needs) in ``tally``."""
        k, n_out = out.shape
        tally = self.tally
        tally.chunks.append((at, at + k))
        label_at = self.label_at[at : at + k]
        flat_out = out.reshape(-1)
        np.copyto(tally.logits[:, at : at + k], out.T)
        if self.config.output == "softmax":
            top = float(out.max())
            if top - float(out.min()) <= SHARED_SHIFT_RANGE:
                out -= top
            else:
                out -= out.max(axis=1, keepdims=True)
            zy = np.take(flat_out, label_at, out=tally.label_logit[at : at + k])
            np.exp(out, out=out)
            total = np.matmul(out, self.ones[:n_out], out=tally.exp_sum[at : at + k])
            loss = float(np.log(total).sum() - zy.sum())
            out *= (scale / total)[:, None]
            flat_out[label_at] -= scale  # scale * (p - onehot)
        else:
            logits = self.logits[:k]
            np.copyto(logits, out)
            act.sigmoid(out)
            # log-loss from the logits: sum softplus(z) - z[label], stable for any |z|
            loss = float(np.logaddexp(0, logits).sum() - np.take(logits.reshape(-1), label_at).sum())
            flat_out[label_at] -= 1  # d loss / d logits = p - onehot
            tally.errors.append(float(np.abs(out, out=self.scratch[-1][:k]).sum()))
            out *= scale
        return loss
