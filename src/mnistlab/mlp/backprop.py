"""Forward and backward passes over one chunk of a batch, in buffers allocated once per fit.

Weights are (in, out), so every product is a plain BLAS call on row-major buffers (transposes are
views); biases are added by broadcasting; activations are computed in place and their derivatives
taken from the kept outputs; the gradient with respect to the network's inputs is never computed.
The caller's factor (the learning rate over the batch size, for SGD) is folded into the output
delta, so the products deliver the scaled gradient with no extra pass over the parameters.
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
from .threads import RowSplit

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
        self.rows = rows
        # Each layer's units without the working layout's pads, and the length of each layer's
        # sums: its products add over the model's units of the layer below only (None: every input
        # column). The pads would add exact zeros, but a longer sum may take another BLAS path
        # and round differently.
        self.widths = model.config.sizes[1:]
        self.fan_in = [None, *self.widths[:-1]]
        # Two input buffers, used in turn: with two BLAS threads the other core may still hold the
        # lines of the one just multiplied, and writing the next chunk there makes them change hands.
        self.inputs = [np.empty((rows, data.n_core), dt) for _ in range(2)]
        self.flip = 0
        self.raw_inputs = np.empty((rows, data.n_core), np.uint8) if data.raw else None
        self.tail_inputs = np.empty((rows, data.n_tail), dt)
        self.raw_tail = np.empty((rows, data.n_tail), np.uint8) if data.raw else None
        self.tail_z = np.empty((rows, sizes[1]), dt)  # the tail columns' share of the first layer's z
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
        # the first layer's products on several cores, set by the trainer (None: one thread)
        self.products: RowSplit | None = None

    def _matmul(
        self, a: np.ndarray, b: np.ndarray, out: np.ndarray, meanwhile: Callable[[], Any] | None
    ) -> None:
        if self.products is not None:
            self.products.matmul(a, b, out, meanwhile)
            return
        np.matmul(a, b, out=out)
        if meanwhile is not None:
            meanwhile()

    def start_epoch(self, data: TrainData, order: np.ndarray) -> None:
        """Take the labels of the epoch's ``order`` (as arranged, see TrainData.arrange) at once."""
        labels = np.take(data.labels, order, out=self.tally.labels, mode="clip")
        np.add(self.row_offsets, labels, out=self.label_at)

    def run(
        self,
        data: TrainData,
        idx: np.ndarray,
        n_touch: int,
        at: int,
        params: ParamViews,
        grad: ParamViews,
        first: bool,
        scale: float,
        phases: Phases,
    ) -> float:
        """Forward and backward for the images ``idx``, which sit at ``at`` in the epoch's arranged
        order (the ``n_touch`` with ink in the tail columns first; ``start_epoch`` took their
        labels): the gradient times ``scale`` goes into ``grad`` (``first``: the batch's first
        chunk) or is added to it. Returns the chunk's summed data loss; ``tally`` keeps what the
        epoch's accuracy and error need."""
        cfg = self.config
        k = len(idx)
        if self.products is not None:
            self.flip ^= 1
        raw = None if self.raw_inputs is None else self.raw_inputs[:k]
        xb = data.gather(idx, self.inputs[self.flip][:k], raw)  # (k, core columns)
        if n_touch:
            raw_tail = None if self.raw_tail is None else self.raw_tail[:n_touch]
            # (n_touch, tail columns)
            xt = data.gather_tail(idx[:n_touch], self.tail_inputs[:n_touch], raw_tail)
        phases.lap("gather")

        weights, biases = params.weights, params.biases
        last = len(weights) - 1
        hidden = act.FORWARD[cfg.activation]
        fan_in = self.fan_in
        a = xb
        for i in range(last):
            z = self.acts[i][:k]
            if i:
                np.matmul(a[:, : fan_in[i]], weights[i][: fan_in[i]], out=z)  # (k, out)
            else:  # the tail's share is multiplied while the other cores finish theirs
                tail = partial(np.matmul, xt, params.tail, out=self.tail_z[:n_touch]) if n_touch else None
                self._matmul(a, weights[0], z, tail)
                if n_touch:
                    z[:n_touch] += self.tail_z[:n_touch]
            z += biases[i]
            a = hidden(z)
        out = self.acts[last][:k]
        np.matmul(a[:, : fan_in[last]], weights[last][: fan_in[last]], out=out)  # (k, classes) logits
        out += biases[last]
        phases.lap("forward")

        loss = self._loss_and_output_delta(out, at, scale)
        phases.lap("loss")

        target = grad if first else self.part
        backward = act.BACKWARD[cfg.activation]
        input_scale = self.working.input_scale
        delta = out
        for i in range(last, -1, -1):
            # the pads' gradient entries are never written and stay zero
            width = self.widths[i]
            below = (self.acts[i - 1][:k] if i else xb)[:, : fan_in[i]]
            # a BLAS product with a ones vector sums the rows faster than np.sum
            np.matmul(self.ones[:k], delta[:, :width], out=target.biases[i][:width])
            if i == 0 and input_scale != 1:
                delta *= 1.0 / input_scale**2  # inputs u = s x, weights W / s: gradient (u.T delta) / s**2
            if not i:  # as in the forward pass, the tail's product overlaps the other cores' share
                if self.working.n_tail and not n_touch:
                    target.tail.fill(0)
                tail = partial(np.matmul, xt.T, delta[:n_touch], out=target.tail) if n_touch else None
                self._matmul(below.T, delta, target.weights[0], tail)
            else:
                np.matmul(below.T, delta, out=target.weights[i][: fan_in[i]])  # (in, out)
                d_below = self.deltas[i - 1][:k]
                np.matmul(delta[:, :width], weights[i][:, :width].T, out=d_below)  # (k, in); zero pads
                delta = backward(self.acts[i - 1][:k], d_below, self.scratch[i - 1][:k])
        if not first:
            grad.flat += self.part.flat
        phases.lap("backward")
        return loss

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
