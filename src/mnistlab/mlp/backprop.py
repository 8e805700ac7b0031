"""Forward and backward passes over one chunk of a batch, in buffers allocated once per fit.

Weights are (in, out), so every product is a plain BLAS call on row-major buffers (transposes are
views); biases are added by broadcasting; activations are computed in place and their derivatives
taken from the kept outputs; the gradient with respect to the network's inputs is never computed.
The caller's factor (the learning rate over the batch size, for SGD) is folded into the output
delta, so the products deliver the scaled gradient with no extra pass over the parameters.
The first layer multiplies each chunk as a staircase of products (mlp/staircase.py). With several
threads (``products``) the threads divide that list of products; a worker gathers the next chunk
while the calling thread computes the loss and the deltas, and each thread updates the parameters
whose gradient it computed. The small NumPy calls of the loss and the deltas stay on the calling
thread, where they overlap a worker's long calls: cut across threads, each would hand the
interpreter lock back and forth.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from . import activations as act
from .layout import ParamViews, TrainData, WorkingLayout
from .model import MLP
from .profile import Phases
from .staircase import Steps
from .tally import Tally
from .threads import RowSplit, deal

# Softmax and cross-entropy are unchanged by a shift per row. One shift for a whole chunk is a
# scalar subtraction; it is safe while every logit lies within this much of the top one (every
# exp stays a normal float32), else each row is shifted by its own max.
SHARED_SHIFT_RANGE = 60.0


def _end_to_end(flat: np.ndarray, rows: int, widths: list[int]) -> list[np.ndarray]:
    """(rows, width) arrays, one per width, that lie one after the other in ``flat``."""
    ends = np.cumsum([0, *widths]) * rows
    return [flat[a:b].reshape(rows, w) for a, b, w in zip(ends, ends[1:], widths)]


def _in_turn(jobs: list[Callable[[], Any]]) -> None:
    for job in jobs:
        job()


def _after(event: threading.Event, job: Callable[[], Any]) -> None:
    event.wait()
    job()


class Chunk:
    """The chunk a ``Backprop.run`` is working on: its images (in descending reach), their
    first-layer products (``steps``), their gathered inputs and the parameters they are multiplied
    with; the buffers' views of its rows and the parameters' slices, looked up once per chunk."""

    def __init__(
        self,
        data: TrainData,
        idx: np.ndarray,
        steps: Steps,
        xb: np.ndarray,
        params: ParamViews,
        views: RowViews,
        slices: ParamSlices,
    ) -> None:
        self.data, self.idx, self.steps, self.xb, self.params = data, idx, steps, xb, params
        self.views, self.slices = views, slices


class RowViews:
    """The layer buffers' views for rows ``lo:hi`` of a chunk, made once per fit: slicing them anew
    for every chunk costs about as much as a small elementwise pass. Index i is layer i (the first
    hidden layer is 0); ``delta[i]`` is d loss / d z of layer i (the output's is its ``acts``)."""

    def __init__(self, backprop: Backprop, lo: int, hi: int) -> None:
        rows, fan_in, widths = slice(lo, hi), backprop.fan_in, backprop.widths
        self.acts = [a[rows] for a in backprop.acts]
        # each layer's inputs over the model's units of the layer below (the first layer's: None)
        self.inputs = [None, *(a[:, :f] for a, f in zip(self.acts, fan_in[1:]))]
        self.inputs_t = [None, *(a.T for a in self.inputs[1:])]
        self.delta = [*(d[rows] for d in backprop.deltas), self.acts[-1]]
        self.flat_output = self.acts[-1].reshape(-1)
        self.delta_units = [d[:, :w] for d, w in zip(self.delta, widths)]  # the model's units only
        self.derivatives = [d[rows] for d in backprop.derivatives]
        self.ones = backprop.ones[: hi - lo]
        # each output row's factor, as a column that multiplies the rows and as the vector it holds
        self.row_factor = backprop.row_factor[rows]
        self.row_factors = self.row_factor[:, 0]


class ParamSlices:
    """The slices of one ParamViews buffer (parameters or a gradient) over the model's units, made
    once per fit for the reason RowViews gives. Index i is layer i."""

    def __init__(self, views: ParamViews, fan_in: list[int | None], widths: tuple[int, ...]) -> None:
        self.views = views  # kept alive, so that its id keys no other buffer's slices
        self.fan_weights = [w[:f] for w, f in zip(views.weights, fan_in)]  # rows of the model's inputs
        # (out, in) over the model's outputs: the backward product's
        self.back_weights = [w[:, :u].T for w, u in zip(views.weights, widths)]
        self.biases = [b[:u] for b, u in zip(views.biases, widths)]


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
        self.class_ones = self.ones[: sizes[-1]]  # sums each output row
        self.row_factor = np.empty((rows, 1), dt)
        self.rows = rows
        # The hidden layers' outputs (computed in place) lie end to end, and so do their derivatives:
        # for a whole chunk one pass computes every hidden layer's derivative.
        self.hidden_outputs = np.empty(rows * sum(sizes[1:-1]), dt)
        self.hidden_derivatives = np.empty_like(self.hidden_outputs)
        self.acts = [*_end_to_end(self.hidden_outputs, rows, sizes[1:-1]), np.empty((rows, sizes[-1]), dt)]
        self.derivatives = _end_to_end(self.hidden_derivatives, rows, sizes[1:-1])
        self.deltas = [np.empty((rows, s), dt) for s in sizes[1:-1]]  # d loss / d z of hidden layers
        self.output_scratch = np.empty((rows, sizes[-1]), dt)
        # the second layer's weights (model units out, working units in) divided by the input scale
        self.scaled_weights = np.empty((self.widths[1], sizes[1]), dt)
        self.logits = np.empty((rows, sizes[-1]), dt)
        # the gradient of a batch's later chunks, added into the optimizer's
        self.part: ParamViews | None = working.views(np.zeros(working.size, dt)) if summed else None
        self.updated = False  # whether the last ``run`` updated the parameters (see run)
        # several cores, set by the trainer (None: one thread): the threads divide each chunk's
        # first-layer products (see staircase)
        self.products: RowSplit | None = None
        self.chunk: Chunk | None = None
        # where in the epoch's order the next chunk begins that a worker gathered ahead
        # into the input buffer it will use
        self.ahead: int | None = None
        # per (chunk length, thread boundary): whether the deeper layers' forward products, cut there,
        # reproduce the whole ones (see RowSplit.reproduces)
        self.deeper_cuts: dict[tuple[int, int], bool] = {}
        self.row_views: dict[tuple[int, int], RowViews] = {}  # per (lo, hi)
        self.param_slices: dict[int, ParamSlices] = {}  # per id of a ParamViews

    def start_epoch(self, data: TrainData, order: np.ndarray) -> None:
        """Take the labels of the epoch's ``order`` (as arranged, see Staircase.arrange) at once."""
        labels = np.take(data.labels, order, out=self.tally.labels, mode="clip")
        np.add(self.row_offsets, labels, out=self.label_at)
        self.tally.start_epoch()
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
        update: Callable[[int, int], None] | None = None,
    ) -> float:
        """Forward and backward for the images ``idx``, which sit at ``at`` in the epoch's arranged
        order (in descending reach, multiplied as ``steps``; ``start_epoch`` took their labels):
        the gradient times ``scale`` goes into ``grad`` (``first``: the batch's first chunk) or is
        added to it. Returns the chunk's check value (see _loss_and_output_delta); ``tally`` keeps
        its loss and what the epoch's accuracy and error need. ``following``: the next chunk's
        place, images (arranged) and products, which a worker may gather ahead while this thread
        computes the loss and the deltas. ``update``: the optimizer's ``range_step``
        for a batch of this one chunk; where the threads divide the weight gradient, each updates
        the parameters whose gradient it computed and ``updated`` is set (else the caller steps)."""
        k = len(idx)
        self.updated = False
        ahead, self.ahead = self.ahead, None
        split = self.products if self.products is not None and self.products.active else None
        if self.products is not None:
            self.flip ^= 1
        xb = self.inputs[self.flip][:k]
        self.chunk = Chunk(data, idx, steps, xb, params, self._views(0, k), self._slices(params))
        if split is None:
            # one thread: the same calls in turn, without the hand-over's event, jobs and closures
            self._first_layer_rows(steps.forward(), 0, k, phases)
            self._forward_rows(0, k)
            phases.lap("forward")
            loss = self._loss_and_output_delta(at, scale)
            phases.lap("loss")
            self._hidden_deltas(k)
            self._gradients_alone(grad if first else self.part, *steps.gradient())
            if not first:
                grad.flat += self.part.flat
            phases.lap("backward")
            return loss
        cut = steps.worker_row
        if cut is not None:
            # each thread multiplies its own groups' rows (gathered ahead, or by itself now) and, where
            # the deeper layers may be cut there, takes them through the other layers
            whole_deeper = not self._deeper_cut(k, cut)
            gathered = ahead == at
            own_groups = steps.forward(0, steps.plan.worker_group)
            mine = [partial(self._first_layer_rows, own_groups, 0, cut, gathered=gathered)]
            if not whole_deeper:
                mine.append(partial(self._forward_rows, 0, cut))
            theirs = [
                [partial(self._first_layer_rows, groups, groups[0][0], groups[-1][1], gathered=gathered)]
                for groups in deal(steps.forward(steps.plan.worker_group), split.parts - 1)
                if groups
            ]
            # one worker takes its own rows on through the other layers (long products, few small
            # calls, while the calling thread multiplies); several: the calling thread does
            own_deeper = not whole_deeper and len(theirs) == 1
            if own_deeper:
                theirs[0].append(partial(self._forward_rows, cut, k))
            split.spread([partial(_in_turn, mine), *(partial(_in_turn, jobs) for jobs in theirs)])
            if not own_deeper:
                self._forward_rows(0 if whole_deeper else cut, k)
        else:
            self._first_layer_rows(steps.forward(), 0, k, phases)
            self._forward_rows(0, k)
        phases.lap("forward")

        own, workers = self._weight_gradients(grad if first else self.part, update, split)
        # one hand-over for both: a worker gathers the next chunk while this thread computes the
        # deltas, then the workers multiply their share of the gradient
        ready = threading.Event()
        jobs = [partial(_after, ready, job) for job in workers]
        if cut is not None and following is not None:
            jobs[:1] = [partial(_in_turn, [partial(self._gather_ahead, data, *following), *jobs[:1]])]
        losses = []

        def caller() -> None:
            try:
                losses.append(self._loss_and_output_delta(at, scale))
                phases.lap("loss")
                self._hidden_deltas(k)
            finally:  # a worker must not wait for deltas that will not come (spread raises)
                ready.set()
            own()

        if jobs:
            split.spread([caller, *jobs])
        else:
            caller()
        (loss,) = losses
        self.updated = bool(workers) and update is not None
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
        """Gather the next chunk (at ``at``, images ``idx`` arranged, multiplied as ``steps``) into
        the input buffer it will use, so that its forward pass on every thread is products only."""
        if steps.worker_row is None:
            return
        k = len(idx)
        raw = None if self.raw_inputs is None else self.raw_inputs[:k]
        data.gather(idx, self.inputs[self.flip ^ 1][:k], raw, steps.forward())
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

    def _views(self, lo: int, hi: int) -> RowViews:
        views = self.row_views.get((lo, hi))
        if views is None:
            views = self.row_views[lo, hi] = RowViews(self, lo, hi)
        return views

    def _slices(self, params: ParamViews) -> ParamSlices:
        slices = self.param_slices.get(id(params))
        if slices is None:
            slices = self.param_slices[id(params)] = ParamSlices(params, self.fan_in, self.widths)
        return slices

    def _forward_rows(self, lo: int, hi: int) -> None:
        """Rows ``lo:hi`` from the first layer's products through every layer to the logits (in
        ``acts[-1]``)."""
        chunk = self.chunk
        views = chunk.views if hi - lo == len(chunk.idx) else self._views(lo, hi)
        weights, biases = chunk.slices.fan_weights, chunk.params.biases
        hidden = act.FORWARD[self.config.activation]
        last = len(biases) - 1
        for i, z in enumerate(views.acts):  # the first layer's z: its products, no bias added yet
            if i:
                np.matmul(views.inputs[i], weights[i], out=z)  # (rows, out)
            z += biases[i]
            if i < last:
                hidden(z)

    def _hidden_deltas(self, k: int) -> None:
        """Every hidden layer's delta (in ``deltas``), from the output delta in ``acts[-1]``. Small
        products and elementwise passes: cut across threads, the hand-overs of the interpreter
        lock cost more than they save."""
        views, weights = self.chunk.views, self.chunk.slices.back_weights
        derivatives = self._hidden_derivatives(views, k)
        input_scale = self.working.input_scale
        for i in range(len(weights) - 1, 0, -1):
            d_below = views.delta[i - 1]
            above = weights[i]
            if i == 1 and input_scale != 1:
                # inputs u = s x, weights W / s: the first layer's gradient is (u.T delta) / s**2; the
                # division goes into a copy of the small weight matrix, not a pass over the delta
                above = np.multiply(above, 1.0 / input_scale**2, out=self.scaled_weights)
            np.matmul(views.delta_units[i], above, out=d_below)  # (rows, in); zero pads
            np.multiply(d_below, derivatives[i - 1], out=d_below)

    def _hidden_derivatives(self, views: RowViews, k: int) -> list[np.ndarray]:
        """f'(z) of every hidden layer for the chunk's ``k`` rows, from the layers' outputs: for a
        whole chunk in one pass over all hidden layers (end to end in memory), else layer by layer."""
        derivative = act.DERIVATIVE[self.config.activation]
        if k == self.rows:
            derivative(self.hidden_outputs, self.hidden_derivatives)
        else:
            for a, d in zip(views.acts, views.derivatives):
                derivative(a, d)
        return views.derivatives

    def _weight_gradients(
        self, target: ParamViews, update: Callable[[int, int], None] | None, split: RowSplit | None
    ) -> tuple[Callable[[], None], list[Callable[[], None]]]:
        """The jobs that put every layer's weight and bias gradient into ``target``, once the deltas
        are in: the calling thread's, and the workers' (none: one thread, or nothing to share). The
        calling thread multiplies the deeper layers' while the workers multiply their share of the
        first layer's. With workers and ``update``, each thread then updates the parameters whose
        gradient it computed."""
        working, steps = self.working, self.chunk.steps
        mine, theirs = steps.gradient()
        if split is None or not theirs:
            return partial(self._gradients_alone, target, mine, theirs), []

        # first-layer weight rows lo:hi are the flat parameters lo * units : hi * units
        units, cut, reached = target.weights[0].shape[1], theirs[0][0], steps.columns[0]

        def own() -> None:
            self._first_layer_bias(target)
            self._column_blocks(target, mine)
            self._deeper_gradients(target)
            if update is not None:  # every parameter but the rows the workers' blocks cover
                update(0, cut * units)
                update(reached * units, working.n_weights)
                update(working.n_weights, working.size)

        def worker(blocks: list[tuple[int, int, int]]) -> None:
            self._column_blocks(target, blocks)
            if update is not None:  # a run of whole rows, in column order
                update(blocks[0][0] * units, blocks[-1][1] * units)

        return own, [partial(worker, b) for b in deal(theirs, split.parts - 1) if b]

    def _gradients_alone(
        self, target: ParamViews, mine: list[tuple[int, int, int]], theirs: list[tuple[int, int, int]]
    ) -> None:
        """Every gradient on one thread: the deeper layers' first, while their deltas are still in
        cache (the first layer's products stream the chunk's inputs through it)."""
        self._first_layer_bias(target)
        self._deeper_gradients(target)
        self._column_blocks(target, mine)
        self._column_blocks(target, theirs)

    def _first_layer_bias(self, target: ParamViews) -> None:
        """The first layer's bias gradient, and zeros in the weight rows of columns no image of the
        chunk reaches (the pads' gradient entries are never written and stay zero)."""
        working, views = self.working, self.chunk.views
        bias = self._slices(target).biases[0]
        # a BLAS product with a ones vector sums the rows faster than np.sum
        np.matmul(views.ones, views.delta_units[0], out=bias)
        if working.input_scale != 1:
            # the first layer's delta came divided by the square (see _hidden_deltas)
            np.multiply(bias, working.input_scale**2, out=bias)
        reached = self.chunk.steps.columns[0]  # the first group's columns are the chunk's widest
        if reached < working.width:
            target.weights[0][reached : working.width].fill(0)

    def _column_blocks(self, target: ParamViews, blocks: list[tuple[int, int, int]]) -> None:
        """The first layer's weight gradient in the column ``blocks`` (first column, end column, rows)."""
        xb, first = self.chunk.xb, target.weights[0]
        delta = self.chunk.views.delta[0]  # (config: at least one hidden layer)
        for lo, hi, rows in blocks:
            np.matmul(xb[:rows, lo:hi].T, delta[:rows], out=first[lo:hi])

    def _deeper_gradients(self, target: ParamViews) -> None:
        views, grads = self.chunk.views, self._slices(target)
        for i in range(len(self.widths) - 1, 0, -1):
            np.matmul(views.ones, views.delta_units[i], out=grads.biases[i])
            np.matmul(views.inputs_t[i], views.delta[i], out=grads.fan_weights[i])  # (in, out)

    def _loss_and_output_delta(self, at: int, scale: float) -> float:
        """Turn the logits (``acts[-1]``) of the chunk at ``at`` into ``scale`` * d loss / d logits in
        place, and leave the logits, the chunk's loss (or what it needs) and what the error needs in
        ``tally``. Returns the chunk's check value: its summed loss where that may be inf or NaN
        (the trainer stops there), else 0.0."""
        views = self.chunk.views
        out = views.acts[-1]
        k = len(out)
        tally = self.tally
        label_at = self.label_at[at : at + k]
        flat_out = views.flat_output
        np.copyto(tally.logits[:, at : at + k], out.T)
        if self.config.output == "softmax":
            # the ufuncs' reductions called straight: ndarray.max goes through a Python wrapper
            top = float(np.maximum.reduce(flat_out))
            shared = top - float(np.minimum.reduce(flat_out)) <= SHARED_SHIFT_RANGE
            if shared:
                # every exp in range, so the loss is finite: the tally computes it after the epoch
                out -= top
            else:
                out -= out.max(axis=1, keepdims=True)
                zy = np.take(flat_out, label_at, out=tally.label_logit[at : at + k])
            np.exp(out, out=out)
            total = np.matmul(out, self.class_ones, out=tally.exp_sum[at : at + k])
            loss = None if shared else float(np.log(total).sum() - zy.sum())
            tally.add_chunk(at, at + k, loss, top if shared else None)
            np.divide(scale, total, out=views.row_factors)
            out *= views.row_factor
            flat_out[label_at] -= scale  # scale * (p - onehot)
        else:
            logits = self.logits[:k]
            np.copyto(logits, out)
            act.sigmoid(out)
            # log-loss from the logits: sum softplus(z) - z[label], stable for any |z|
            loss = float(np.logaddexp(0, logits).sum() - np.take(logits.reshape(-1), label_at).sum())
            tally.add_chunk(at, at + k, loss)
            flat_out[label_at] -= 1  # d loss / d logits = p - onehot
            tally.errors.append(float(np.abs(out, out=self.output_scratch[:k]).sum()))
            out *= scale
        return 0.0 if loss is None else loss
