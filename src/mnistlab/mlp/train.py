"""Mini-batch SGD for the NumPy MLP, written for speed.

Where the time goes, and what is done about it (see README, "NumPy MLP"):

* The matrix products dominate. Weights are (in, out) so every product is a plain BLAS call on
  row-major buffers (transposes are views, never copies); biases are added by broadcasting, no
  bias row is appended to the inputs; the gradient with respect to the network's inputs is never
  computed.
* The first layer's products skip zeros that MNIST-like data has in bulk: blank input columns are
  left out, and rarely inked ones are multiplied only for the rows that have ink there (see
  _TrainData); on MNIST the two largest products shrink by a third. Bias gradients are BLAS
  products with a ones vector, 4x faster than ``np.sum`` over rows.
* Every buffer is allocated once per fit and written with ``out=``; activations are computed in
  place and their derivatives are taken from the kept outputs.
* The batch gather: ``np.take(..., mode="clip", out=buffer)`` copies the shuffled rows (raw
  uint8 where the caller passes raw images) into a small buffer that stays in cache for the
  products that read it right away, two buffers used in turn so that with two BLAS threads the
  other core is not still holding the lines being written. (``mode="raise"`` buffers the copy;
  pre-shuffling the whole training set each epoch writes 188 MB to memory and reads it back,
  measured slower.) Under unit scaling the first layer's weights are kept divided by 255, so raw
  pixel values need no division. Large batches are processed in chunks of ``CHUNK`` rows whose
  gradients are summed, which is the same arithmetic with cache-sized buffers.
* The learning rate and 1/batch are folded into the output delta, so the products deliver
  ``lr * gradient`` and momentum keeps ``lr * velocity`` (rescaled when the schedule changes
  the rate): PyTorch's SGD arithmetic with fewer passes over the parameters.
* Parameters, velocity and gradient sit in flat buffers stacked as rows, so the whole update is
  one BLAS product of a 2x3 matrix with the stack, written into a second stack (see _update).
* Nothing large is allocated per batch or per epoch, and setting up avoids whole-split
  temporaries: freshly touched memory costs about 2 ms per MB on these virtual machines.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError, DataError, TrainingDiverged
from . import activations as act
from .config import MLPConfig
from .model import MLP
from .threads import ThreadChoice, blas_threads

# Rows per chunk of a batch; batches up to this size are one chunk. Picked by timing chunk sizes
# at batch 20000: big enough for efficient products, small enough for the chunk's buffers to
# stay in cache.
CHUNK = 500

PHASES = ("gather", "forward", "cost", "backward", "update")

# Images per block of the per-epoch evaluation: fewer NumPy calls than training chunks, buffers
# that still fit in cache.
EVAL_BLOCK = 1024


def learning_rate(config: MLPConfig, epoch: int) -> float:
    """The learning rate of 0-based ``epoch`` under the config's schedule."""
    lr = config.lr
    if config.schedule == "seed":
        for i in range(1, epoch + 1):
            lr /= 1.0 + config.decay * i
        return lr
    if config.schedule == "step":
        return lr * config.gamma ** (epoch // config.step_size)
    if config.schedule == "cosine":
        return config.lr_min + (lr - config.lr_min) * 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))
    return lr


@dataclass
class EvalSet:
    inputs: np.ndarray  # (N, input_size): the model's dtype, or raw uint8 values when ``raw``
    labels: np.ndarray  # (N,) intp
    raw: bool = False

    def preprocessed(self, model: MLP) -> np.ndarray:
        if not self.raw:
            return self.inputs
        return model.to_input_matrix(model.preprocess(self.inputs.reshape(len(self.inputs), *model.preprocess.mean.shape)))


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


def is_raw(inputs: np.ndarray) -> bool:
    """uint8 (N, H, W) arrays are raw images that the model's preprocessing turns into inputs."""
    return isinstance(inputs, np.ndarray) and inputs.dtype == np.uint8 and inputs.ndim == 3


def check_data(model: MLP, inputs: np.ndarray, labels: np.ndarray, what: str, keep_raw: bool = False) -> EvalSet:
    """Validate and convert a split: raw uint8 images, or preprocessed (N, 28, 28) / (N, input_size).
    With ``keep_raw``, raw images of a float32 model stay raw (a quarter of the memory), flattened."""
    if keep_raw and is_raw(inputs) and model.dtype == np.float32:
        if inputs.shape[1:] != model.preprocess.mean.shape or inputs[0].size != model.config.input_size:
            model.to_input_matrix(model.preprocess(inputs[:1]))  # raises the one-line shape error
        flat = inputs.reshape(len(inputs), -1)
        return EvalSet(flat, _check_labels(model, labels, len(flat), what), raw=True)
    x = model.to_input_matrix(model.to_inputs(inputs) if is_raw(inputs) else inputs)
    return EvalSet(x, _check_labels(model, labels, len(x), what))


class _TrainData:
    """The training split as the batch loop reads it: shuffled rows gathered into chunk buffers.

    Input columns that are zero in every training image (MNIST's blank border: 67 of 784 pixels)
    are left out: they add exact zeros to every product and their weights get no data gradient,
    so the products skip them (8.5% of the work). Raw uint8 images are kept as they are (a quarter
    of the memory traffic of float32) and preprocessed chunk by chunk, with the very arithmetic of
    ``Preprocessor.__call__`` (bit-identical to preprocessing everything first), except under unit
    scaling, where the values stay raw and the trainer divides the first layer's weights instead.

    Of the remaining columns, those that are nonzero in few images (MNIST: the ring around the
    digits) form a *tail* block, kept only for the images that have any ink there. The first
    layer's products then run over the dense *core* columns for the whole chunk and over the tail
    columns for just the chunk's rows that touch it (put first in the chunk, see ``arrange``, so
    the tail products read and write leading row blocks): on MNIST at batch 500, 234 of 717 columns are
    tail and 22% of the images touch them, so the largest two products shrink by a quarter. The
    sums are the same; only their order (hence float rounding) differs. ``split`` picks the tail
    threshold: "auto" (the cheapest by a cost model measured on this engine), a fraction of images
    (a column is tail when fewer images than that have it nonzero) or None (no tail).
    """

    def __init__(self, model: MLP, inputs: np.ndarray, labels: np.ndarray, split: float | str | None, chunk: int) -> None:
        checked = check_data(model, inputs, labels, "training data", keep_raw=True)
        flat, self.labels, raw = checked.inputs, checked.labels, checked.raw
        pre = model.preprocess
        zero_input = pre(np.zeros((1, *pre.mean.shape), np.uint8)).reshape(-1) if raw else np.zeros(flat.shape[1], flat.dtype)
        self.raw = raw
        self.n = len(flat)
        # a raw zero that preprocessing turns into a nonzero input is not a zero input
        zero_maps_to_zero = zero_input == 0
        active = flat.any(axis=0) | ~zero_maps_to_zero
        tail = _tail_columns(flat, zero_maps_to_zero & active, int(np.count_nonzero(active)), split, chunk)
        core = active & ~tail
        self.core = np.flatnonzero(core)
        self.tail = np.flatnonzero(tail)
        self.inactive = np.flatnonzero(~active)
        self.width = len(self.core)
        self.n_tail = len(self.tail)
        # np.take copies columns 3x faster than fancy indexing
        self.rows = flat if self.width == flat.shape[1] else np.take(flat, self.core, axis=1)
        self.touches = None  # images with ink in the tail columns (the others' tail columns are exact zeros)
        self.touching = 0.0
        if self.n_tail:
            # block by block: a tail-column copy of the whole split would be fresh memory, which
            # costs more than the copying itself on a freshly started process
            self.touches = np.empty(self.n, bool)
            kept = []
            for start in range(0, self.n, 8192):
                cols = np.take(flat[start : start + 8192], self.tail, axis=1)
                touches = np.any(cols, axis=1, out=self.touches[start : start + 8192])
                kept.append(cols[touches])
            self.tail_rows = np.concatenate(kept)
            self.touching = float(np.mean(self.touches))
            # row of each image in tail_rows, or -1 for images with no ink in the tail columns
            touching = np.flatnonzero(self.touches)
            self.tail_of = np.full(self.n, -1, np.intp)
            self.tail_of[touching] = np.arange(len(touching))
        # With one scale s for all columns and no centering (unit scaling: s = 255), inputs are
        # u / s for raw values u: the trainer then multiplies raw values with first-layer weights
        # kept divided by s, and no chunk is divided (see Trainer).
        self.input_scale = 1.0
        if raw:
            mean, scale = pre.mean.reshape(-1), pre.scale.reshape(-1)
            self.centered = bool(mean[self.core].any())  # the tail's means are 0: zero maps to zero
            self.mean = np.ascontiguousarray(mean[self.core])
            if not self.centered and np.all(scale == scale[0]):
                self.input_scale = float(scale[0])
                self.scale = self.tail_scale = None
            else:
                self.scale, self.tail_scale = np.ascontiguousarray(scale[self.core]), np.ascontiguousarray(scale[self.tail])

    def arrange(self, idx: np.ndarray) -> tuple[np.ndarray, int]:
        """The chunk's images reordered so that the ``m`` with ink in the tail columns come first,
        and ``m``: the tail products then read a leading block of rows."""
        if not self.n_tail:
            return idx, 0
        touch = self.touches[idx]
        first = idx[touch]
        return np.concatenate([first, idx[~touch]]), len(first)

    def gather(self, idx: np.ndarray, out: np.ndarray, raw_buf: np.ndarray | None) -> np.ndarray:
        """The chunk's core columns, preprocessed."""
        if not self.raw:
            return np.take(self.rows, idx, axis=0, out=out, mode="clip")
        raw = np.take(self.rows, idx, axis=0, out=raw_buf, mode="clip")
        return _preprocess_into(out, raw, self.mean if self.centered else None, self.scale)

    def gather_tail(self, idx: np.ndarray, out: np.ndarray, raw_buf: np.ndarray | None) -> np.ndarray:
        """The tail columns of the chunk's first ``len(idx)`` images (those with ink there), preprocessed."""
        rows = self.tail_of[idx]
        if not self.raw:
            return np.take(self.tail_rows, rows, axis=0, out=out)
        return _preprocess_into(out, np.take(self.tail_rows, rows, axis=0, out=raw_buf), None, self.tail_scale)


def _preprocess_into(out: np.ndarray, raw: np.ndarray, mean: np.ndarray | None, scale: np.ndarray | None) -> np.ndarray:
    """``(raw - mean) / scale`` into ``out`` with ``Preprocessor``'s arithmetic (None: that step is
    not needed). The cast comes first, then same-dtype arithmetic: a mixed uint8/float32 ufunc runs
    buffered, 20% slower."""
    np.copyto(out, raw)
    if mean is not None:
        np.subtract(out, mean, out=out)
    if scale is not None:
        np.divide(out, scale, out=out)
    return out


# split="auto" tries these tail thresholds (fractions of images with the column nonzero) and
# prices each with costs measured on MNIST at batch 500, in units of one row x column of the dense
# product: a tail row x column costs 1.5 (small products and adding them into the chunk's),
# and handling a tail at all costs 12,000 per chunk (24 columns at batch 500). The optimum is flat
# between 0.5% and 2% (161-164 ms per epoch against 200 without a tail).
TAIL_THRESHOLDS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1)
TAIL_ROW_COST = 1.5
TAIL_OVERHEAD = 12_000
# Column frequencies are estimated on this many evenly spaced images (counting all 60,000 MNIST
# images costs 27 ms); which images touch the tail is then found exactly.
_SAMPLE = 4096


def _tail_columns(flat: np.ndarray, eligible: np.ndarray, n_active: int, split: float | str | None, chunk: int) -> np.ndarray:
    """Boolean mask of the tail columns (see _TrainData) under ``split``: among the ``eligible``
    ones (active, and zero in the raw data means zero input), of ``n_active`` active columns."""
    n = len(flat)
    none = np.zeros(flat.shape[1], bool)
    if split is None or not eligible.any():
        return none
    sample = flat[:: max(1, n // _SAMPLE)]
    nonzero = sample != 0
    freq = nonzero.mean(axis=0)
    if split != "auto":
        return eligible & (freq < float(split))
    # An image touches the tail of threshold t when its rarest nonzero column is rarer than t:
    # the first inked one among the candidate columns sorted by frequency.
    candidates = np.flatnonzero(eligible & (freq < TAIL_THRESHOLDS[-1]))
    if not len(candidates):
        return none
    candidates = candidates[np.argsort(freq[candidates], kind="stable")]
    inked = np.take(nonzero, candidates, axis=1)
    first = inked.argmax(axis=1)
    rarity = np.where(inked[np.arange(len(inked)), first], freq[candidates][first], np.inf)
    rows = min(chunk, n)
    best_cost, best = rows * n_active, none
    for threshold in TAIL_THRESHOLDS:
        tail = eligible & (freq < threshold)
        n_tail = int(np.count_nonzero(tail))
        if not n_tail:
            continue
        touching = float(np.mean(rarity < threshold))
        cost = rows * (n_active - n_tail + TAIL_ROW_COST * touching * n_tail) + TAIL_OVERHEAD
        if cost < best_cost:
            best_cost, best = cost, tail
    return best


class _SplitEval:
    """An evaluation split laid out like the training data, so that the accuracy measured after
    every epoch reads the working parameters and skips the same zeros: columns in the working
    order, and the images with ink outside the core columns first (``m`` of them), so that the
    first layer multiplies all columns for those and the core columns for the rest (MNIST test
    set: 30% fewer multiply-adds). Raw images stay uint8 and are preprocessed block by block into
    cache-sized buffers. ``make`` returns None where the split would not pay (dense inputs)."""

    def __init__(self, rows: np.ndarray, m: int, labels: np.ndarray, block: int) -> None:
        self.rows, self.m, self.labels = rows, m, labels
        n = len(rows)
        # (start, stop, all columns?) blocks of at most ``block`` images, split where the core-only rows begin
        self.blocks = [(a, min(a + block, stop), stop == m) for start, stop in ((0, m), (m, n)) for a in range(start, stop, block)]
        self.mean: np.ndarray | None = None  # raw rows: preprocessing per block (None: not needed)
        self.scale: np.ndarray | None = None
        self.buffers: dict[int, np.ndarray] = {}  # raw rows: float block buffers by column count
        self.outputs: list[np.ndarray] = []  # per layer, a block's outputs

    @classmethod
    def make(cls, evalset: EvalSet, data: _TrainData, model: MLP, block: int) -> "_SplitEval | None":
        x = evalset.inputs
        if data.width == x.shape[1]:
            return None
        others = np.concatenate([data.tail, data.inactive])  # the working layout's order
        touch = np.take(x, others, axis=1).any(axis=1)
        m = int(np.count_nonzero(touch))
        if m > len(touch) // 2:
            return None
        order = np.concatenate([np.flatnonzero(touch), np.flatnonzero(~touch)])
        cols = np.concatenate([data.core, others])
        split = cls(np.take(np.take(x, order, axis=0), cols, axis=1), m, evalset.labels[order], block)
        # the working first-layer weights are the model's divided by input_scale (see _TrainData)
        if evalset.raw and data.input_scale == 1:
            mean, scale = model.preprocess.mean.reshape(-1)[cols], model.preprocess.scale.reshape(-1)[cols]
            split.mean = mean if mean.any() else None
            split.scale = scale
        elif not evalset.raw and data.input_scale != 1:
            split.rows *= data.input_scale
        if evalset.raw:
            split.buffers = {w: np.empty((block, w), np.float32) for w in (data.width, x.shape[1])}
        split.outputs = [np.empty((block, n_out), model.dtype) for _, n_out in model.shapes]
        return split

    def inputs(self, start: int, stop: int, width: int) -> np.ndarray:
        """Block ``start:stop`` of the first ``width`` columns, as the working weights expect it."""
        rows = self.rows[start:stop, :width]
        if self.rows.dtype != np.uint8:
            return rows
        mean = None if self.mean is None else self.mean[:width]
        scale = None if self.scale is None else self.scale[:width]
        return _preprocess_into(self.buffers[width][: stop - start], rows, mean, scale)


class _Phases:
    """The seed's hand-placed timers, as an option: seconds per phase of the batch loop."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.totals = dict.fromkeys(PHASES, 0.0)
        self._t = 0.0

    def start(self) -> None:
        if self.enabled:
            self._t = time.perf_counter()

    def lap(self, phase: str) -> None:
        if self.enabled:
            now = time.perf_counter()
            self.totals[phase] += now - self._t
            self._t = now

    def take(self) -> dict[str, float]:
        out = {f"time_{k}": round(v, 6) for k, v in self.totals.items()}
        self.totals = dict.fromkeys(PHASES, 0.0)
        return out


def describe_layout(layout: dict[str, float]) -> str:
    """How the first layer's products covered the input columns (``Trainer.layout``, see _TrainData)."""
    if not layout:
        return "input columns: all multiplied for every image"
    return (f"input columns: {layout['core']} for every image, {layout['tail']} rarely inked ones only for the "
            f"{100 * layout['tail_rows']:.0f}% of images with ink there, {layout['blank']} blank ones skipped")


class Trainer:
    """Owns the buffers of one fit: allocated once, reused by every batch.

    During a fit the parameters live in a working copy whose first-layer rows are ordered core
    input columns first, then tail columns, then the blank ones (see _TrainData), so the products
    use contiguous slices of W1; the
    model's own parameters are brought up to date at the end of every epoch (before callbacks,
    evaluation and early stopping look at them) and when training stops for any reason.
    """

    def __init__(self, model: MLP, *, chunk: int = CHUNK, split: float | str | None = "auto", adapt_threads: bool = True) -> None:
        self.model = model
        self.config = model.config
        self.chunk = int(chunk)
        if not (split is None or split == "auto" or (isinstance(split, (int, float)) and 0 < split <= 1)):
            raise ConfigError(f"split must be 'auto', None or a fraction in (0, 1], got {split!r}")
        self.split = split
        self.threads: int | None = None
        # with a limit above one thread, time one against all and keep the faster (see ThreadChoice)
        self.adapt_threads = adapt_threads
        self.thread_choice: ThreadChoice | None = None
        self.stopped_early = False
        self.best_epoch: int | None = None
        # How the last fit split the input columns (see _TrainData): for benchmarks and curiosity.
        self.layout: dict[str, float] = {}

    # ----- the working layout -----

    def _layout(self, data: _TrainData) -> None:
        m = self.model
        n_in, h1 = m.shapes[0]
        self.n_tail = data.n_tail
        # The working first-layer weights are the model's divided by input_scale (see _TrainData):
        # so are their velocity and gradient, which keeps the update's arithmetic unchanged.
        self.input_scale = data.input_scale
        self.n_first = n_in * h1
        if data.width == n_in:
            self.perm = None
        else:
            cols = np.arange(h1)
            rows = np.concatenate([data.core, data.tail, data.inactive])
            self.perm = np.concatenate([(rows[:, None] * h1 + cols).ravel(), np.arange(n_in * h1, len(m.params))])
        # gradient entries of the left-out rows: no product writes them, regularization must not pile up there
        self.blank = slice((data.width + self.n_tail) * h1, n_in * h1)

    def _views(self, flat: np.ndarray, width: int) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        """Views of a working-layout buffer: weights with the first layer's core rows only, biases,
        and the first layer's tail rows."""
        weights, biases = self.model._views(flat)
        h1 = self.model.shapes[0][1]
        weights[0] = flat[: width * h1].reshape(width, h1)
        return weights, biases, flat[width * h1 : (width + self.n_tail) * h1].reshape(self.n_tail, h1)

    def _model_space(self, flat: np.ndarray) -> np.ndarray:
        """A working-layout parameter or gradient buffer in the model's units (see _layout), in ``tmp``."""
        if self.input_scale == 1:
            return flat
        out = self.tmp
        np.copyto(out, flat)
        out[: self.n_first] *= self.input_scale
        return out

    def _sync(self) -> None:
        """Copy the working parameters into the model."""
        params = self._model_space(self.work)
        if self.perm is None:
            np.copyto(self.model.params, params)
        else:
            self.model.params[self.perm] = params

    def _use(self, k: int) -> None:
        """Make stack ``k`` the current parameters, velocity and gradient (see _update)."""
        self.current = k
        (self.work, self.vel, self.grad, self.w, self.b, self.w_tail,
         self.grad_w, self.grad_b, self.grad_tail) = self.stack_views[k]

    # ----- the batch loop -----

    def _allocate(self, batch: int, data: _TrainData) -> None:
        m = self.model
        dt = m.dtype
        c = min(batch, self.chunk)
        self.c = c
        sizes = m.config.sizes
        # Two input buffers, used in turn: with two BLAS threads the other core reads the one just
        # multiplied, and writing the next chunk into it makes every line change hands (the gather
        # ran 40% slower)
        self.xbs = [np.empty((c, data.width), dt) for _ in range(2)]
        self.flip = 0
        self.raw_buf = np.empty((c, data.width), np.uint8) if data.raw else None
        self.xt = np.empty((c, self.n_tail), dt)
        self.zt = np.empty((c, sizes[1]), dt)
        self.raw_tail = np.empty((c, self.n_tail), np.uint8) if data.raw else None
        self.yb = np.empty(c, np.intp)
        self.row_starts = np.arange(c) * sizes[-1]
        self.label_at = np.empty(c, np.intp)
        self.ones = np.ones(max(c, sizes[-1]), dt)
        self.acts = [np.empty((c, s), dt) for s in sizes[1:]]  # layer outputs, computed in place
        self.deltas = [np.empty((c, s), dt) for s in sizes[1:-1]]  # d cost / d z of hidden layers
        self.scratch = [np.empty((c, s), dt) for s in sizes[1:]]
        self.logits = np.empty((c, sizes[-1]), dt)
        # Two stacks of (parameters, velocity, gradient) in the working layout: an update reads one
        # and writes the next parameters and velocity into the other (see _update).
        self.stacks = np.zeros((2, 3, len(m.params)), dt)
        self.stack_views = []
        for params, vel, grad in self.stacks:
            self.stack_views.append((params, vel, grad, *self._views(params, data.width), *self._views(grad, data.width)))
        self.stacks[0, 0] = m.params if self.perm is None else m.params[self.perm]
        if self.input_scale != 1:
            self.stacks[0, 0, : self.n_first] /= self.input_scale
        self._use(0)
        self._coefficients: tuple[float, np.ndarray, np.ndarray] | None = None
        if c < batch:
            self.part = np.zeros_like(m.params)
            self.part_w, self.part_b, self.part_tail = self._views(self.part, data.width)
        self.tmp = np.empty_like(m.params)

    def _chunk(self, data: _TrainData, idx: np.ndarray, first: bool, scale: float, ph: _Phases):
        """Forward and backward for one chunk; returns (data cost sum, correct, abs error sum)."""
        cfg = self.model.config
        k = len(idx)
        idx, m = data.arrange(idx)  # the m images with ink in the tail columns first
        self.flip ^= 1  # see _allocate
        xb = data.gather(idx, self.xbs[self.flip][:k], None if self.raw_buf is None else self.raw_buf[:k])  # (k, core columns)
        yb = np.take(data.labels, idx, out=self.yb[:k], mode="clip")
        if m:
            xt = data.gather_tail(idx[:m], self.xt[:m], None if self.raw_tail is None else self.raw_tail[:m])
        ph.lap("gather")

        weights, biases = self.w, self.b
        last = len(weights) - 1
        hidden = act.FORWARD[cfg.activation]
        a = xb
        for i in range(last):
            z = self.acts[i][:k]
            np.matmul(a, weights[i], out=z)  # (k, out)
            if i == 0 and m:
                z[:m] += np.matmul(xt, self.w_tail, out=self.zt[:m])
            z += biases[i]
            a = hidden(z)
        out = self.acts[last][:k]
        np.matmul(a, weights[last], out=out)  # (k, classes) logits
        out += biases[last]
        ph.lap("forward")

        n_out = out.shape[1]
        label_at = np.add(self.row_starts[:k], yb, out=self.label_at[:k])  # flat index of each true class
        flat_out = out.reshape(-1)
        correct = int(np.count_nonzero(out.argmax(axis=1) == yb))
        if cfg.output == "softmax":
            # Softmax and cross-entropy are unchanged by a shift per row. One shift for the whole chunk
            # is a scalar subtraction; it is safe while every logit lies within 60 of the top one
            # (all exps stay normal floats), else the per-row max (a slow reduction over 10 columns).
            top = float(out.max())
            if top - float(out.min()) <= 60.0:
                out -= top
            else:
                out -= out.max(axis=1, keepdims=True)
            zy = np.take(flat_out, label_at)
            np.exp(out, out=out)
            total = np.matmul(out, self.ones[:n_out])
            cost = float(np.log(total).sum() - zy.sum())
            # |p - onehot| sums to 2 (1 - p_label) per row, since p sums to 1
            abs_err = 2.0 * (k - float((np.exp(zy) / total).sum()))
            out *= (scale / total)[:, None]
            flat_out[label_at] -= scale  # scale * (p - onehot)
        else:
            logits = self.logits[:k]
            np.copyto(logits, out)
            act.sigmoid(out)
            # log-loss from the logits: sum softplus(z) - z[label], stable for any |z|
            cost = float(np.logaddexp(0, logits).sum() - np.take(logits.reshape(-1), label_at).sum())
            flat_out[label_at] -= 1  # d cost / d logits = p - onehot
            abs_err = float(np.abs(out, out=self.scratch[last][:k]).sum())
            out *= scale
        ph.lap("cost")

        gw, gb, g_tail = (self.grad_w, self.grad_b, self.grad_tail) if first else (self.part_w, self.part_b, self.part_tail)
        backward = act.BACKWARD[cfg.activation]
        delta = out
        for i in range(last, -1, -1):
            below = self.acts[i - 1][:k] if i else xb
            np.matmul(self.ones[:k], delta, out=gb[i])  # a BLAS product sums over rows 4x faster than np.sum
            if i == 0 and self.input_scale != 1:
                delta *= 1.0 / self.input_scale**2  # inputs u = s x, weights W / s: gradient (u.T delta) / s**2
            np.matmul(below.T, delta, out=gw[i])  # (in, out)
            if i == 0 and self.n_tail:
                if m:
                    np.matmul(xt.T, delta[:m], out=g_tail)
                else:
                    g_tail.fill(0)
            if i:
                d_below = self.deltas[i - 1][:k]
                np.matmul(delta, weights[i].T, out=d_below)  # (k, in)
                delta = backward(below, d_below, self.scratch[i - 1][:k])
        if not first:
            self.grad += self.part
        ph.lap("backward")
        return cost, correct, abs_err

    def _update_matrices(self, lr: float) -> tuple[np.ndarray, np.ndarray]:
        """The update as a linear map of (parameters, velocity, gradient) to the next parameters and
        velocity, for the weights (with L2) and for the biases. The gradient arrives scaled by lr and
        the velocity is lr times PyTorch's momentum buffer (see the module notes); c = lr * l2.
        standard: v' = m v + g + c p, p' = p - v'; Nesterov: p' = p - (m v' + g + c p);
        seed: p' = p - (g + c p) - m v, v' = g + c p (the previous step, not a running sum)."""
        cfg = self.config
        m = cfg.momentum

        def rows(c: float) -> list[list[float]]:
            if cfg.momentum_form == "seed":
                return [[1 - c, -m, -1], [c, 0, 1]]
            if cfg.nesterov:
                return [[1 - c * (1 + m), -m * m, -(1 + m)], [c, m, 1]]
            return [[1 - c, -m, -1], [c, m, 1]]

        if self._coefficients is None or self._coefficients[0] != lr:
            dt = self.work.dtype
            self._coefficients = (lr, np.array(rows(lr * cfg.l2), dt), np.array(rows(0.0), dt))
        return self._coefficients[1], self._coefficients[2]

    def _update(self, lr: float) -> None:
        """One SGD step: a product of a 2x3 matrix with the current (parameters, velocity, gradient)
        stack, written into the other stack, which becomes current. One pass over memory in BLAS
        instead of seven NumPy passes: 2.3x faster on the default net."""
        cfg = self.config
        nw = self.model.n_weights
        if cfg.l1:
            tmp = self.tmp[:nw]
            np.sign(self.work[:nw], out=tmp)
            tmp *= lr * cfg.l1
            if self.input_scale != 1:
                tmp[: self.n_first] /= self.input_scale
            self.grad[:nw] += tmp
        weights, biases = self._update_matrices(lr)
        src, dst = self.stacks[self.current], self.stacks[1 - self.current]
        np.matmul(weights, src[:, :nw], out=dst[:2, :nw])
        np.matmul(biases, src[:, nw:], out=dst[:2, nw:])
        if cfg.l1:
            self.grad[self.blank] = 0  # no product writes there: the next gradient must find zeros
        self._use(1 - self.current)

    def _accuracy(self, evalset: EvalSet, split: _SplitEval | None) -> float:
        """The model's accuracy on ``evalset`` (argmax of the logits), after ``_sync``."""
        if split is None:
            return self.model.accuracy(evalset.inputs, evalset.labels)
        weights, biases = self.w, self.b
        n_in = split.rows.shape[1]
        width, h1 = weights[0].shape
        w_all = self.work[: n_in * h1].reshape(n_in, h1)  # all columns, working order
        hidden = act.FORWARD[self.config.activation]
        bufs = split.outputs
        correct = 0
        for start, stop, full in split.blocks:
            x = split.inputs(start, stop, n_in if full else width)
            z = np.matmul(x, w_all if full else weights[0], out=bufs[0][: stop - start])
            z += biases[0]
            logits = self.model.logits_from(hidden(z), weights, biases, start=1, bufs=bufs)
            correct += int(np.count_nonzero(logits.argmax(axis=1) == split.labels[start:stop]))
        return correct / len(split.labels)

    def _reg_cost(self) -> float:
        cfg = self.config
        w = self.work[: self.model.n_weights]
        w1, s = w[: self.n_first], self.input_scale  # the model's first-layer weights are s * w1
        cost = 0.0
        if cfg.l2:
            squares = float(np.dot(w, w))
            if s != 1:
                squares += (s * s - 1) * float(np.dot(w1, w1))
            cost += 0.5 * cfg.l2 * squares
        if cfg.l1:
            size = float(np.abs(w, out=self.tmp[: len(w)]).sum())
            if s != 1:
                size += (s - 1) * float(self.tmp[: len(w1)].sum())
            cost += cfg.l1 * size
        return cost

    def _prepare(self, inputs: np.ndarray, labels: np.ndarray, batch: int | None) -> _TrainData:
        data = _TrainData(self.model, inputs, labels, self.split, self.chunk)
        self.layout = {"core": data.width, "tail": data.n_tail, "tail_rows": data.touching, "blank": len(data.inactive)}
        self._layout(data)
        self._allocate(min(batch or data.n, data.n), data)
        return data

    def loss_and_gradients(self, inputs: np.ndarray, labels: np.ndarray) -> tuple[float, float, dict[str, np.ndarray]]:
        """Mean data cost, regularization cost and the gradients of their sum, for one batch.

        The same code path as training (chunks and column trimming included), without an
        update: for checks against autograd and finite differences. Gradients are keyed like
        ``get_params()``.
        """
        data = self._prepare(inputs, labels, None)
        n = data.n
        cost = 0.0
        ph = _Phases(False)
        for cs in range(0, n, self.c):
            cost += self._chunk(data, np.arange(cs, min(cs + self.c, n)), cs == 0, 1.0 / n, ph)[0]
        reg = self._reg_cost()
        cfg, m = self.config, self.model
        nw = m.n_weights
        grad = self._model_space(self.grad).copy()
        params = self._model_space(self.work)
        if cfg.l2:
            grad[:nw] += cfg.l2 * params[:nw]
        if cfg.l1:
            grad[:nw] += cfg.l1 * np.sign(params[:nw])
        if self.perm is not None:
            grad[self.perm] = grad.copy()
        gw, gb = m._views(grad)
        out = {}
        for i, (w, b) in enumerate(zip(gw, gb), start=1):
            out[f"W{i}"], out[f"b{i}"] = w, b
        return cost / n, reg, out

    # ----- epochs -----

    def fit(
        self,
        inputs: np.ndarray,
        labels: np.ndarray,
        *,
        test: tuple[np.ndarray, np.ndarray] | None = None,
        val: tuple[np.ndarray, np.ndarray] | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
        profile: bool = False,
        threads: int | str | None = None,
    ) -> list[dict[str, Any]]:
        """Train for ``config.epochs`` epochs; returns one dict per epoch (nothing is printed).

        ``threads`` limits NumPy's BLAS threads during the fit: an int, "auto" (every core,
        see mnistlab.mlp.threads) or None (the BLAS default). Within a
        limit above one, the trainer uses one thread where that proves faster (``adapt_threads``,
        see mnistlab.mlp.threads.ThreadChoice; ``thread_choice.log`` says what it measured).

        ``inputs`` are preprocessed (N, 28, 28) or (N, input_size) arrays, or raw uint8 images
        (N, 28, 28) that the model's ``preprocess`` is applied to (less memory, faster); the same
        for ``test`` and ``val``. ``train_accuracy``, ``cost`` and ``mean_abs_error`` are averaged
        over the batches as they were trained (the weights move during the epoch, as in Keras'
        logs); ``test_accuracy`` and ``val_accuracy`` are measured after the epoch. With
        ``config.patience`` and a validation set, training stops early and the weights of the
        best validation epoch are restored. Raises TrainingDiverged on a NaN/inf cost, after
        restoring the last good (epoch-start) weights.
        """
        cfg = self.config
        if cfg.patience is not None and val is None:
            raise ConfigError("early stopping (patience) needs a validation set")
        test_set = check_data(self.model, *test, "test data", keep_raw=True) if test is not None else None
        val_set = check_data(self.model, *val, "validation data", keep_raw=True) if val is not None else None
        data = self._prepare(inputs, labels, cfg.batch_size)
        # Overflow only happens on the way to a NaN/inf cost, which is caught and reported.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"), blas_threads(threads) as (used, libs):
            self.threads = used
            adapt = used and used > 1 and libs and self.adapt_threads
            chooser = ThreadChoice(used, min(cfg.batch_size, data.n), libs) if adapt else None
            self.thread_choice = chooser
            try:
                return self._epochs(data, test_set, val_set, callback, _Phases(profile), chooser)
            finally:
                self._sync()

    def _epochs(self, data, test_set, val_set, callback, ph, chooser: ThreadChoice | None) -> list[dict[str, Any]]:
        cfg, m = self.config, self.model
        n = data.n
        batch = min(cfg.batch_size, n)
        rng = np.random.default_rng(cfg.seed)
        history: list[dict[str, Any]] = []
        splits = []
        for evalset in (test_set, val_set):
            split = _SplitEval.make(evalset, data, m, EVAL_BLOCK) if evalset is not None else None
            if evalset is not None and split is None and evalset.raw:
                evalset.inputs, evalset.raw = evalset.preprocessed(m), False  # for model.accuracy
            splits.append(split)
        test_split, val_split = splits
        if test_split is not None:
            self.layout["test_rest_rows"] = test_split.m / len(test_split.labels)
        good = self.work.copy()
        best_acc, best_params, waited = -1.0, None, 0
        prev_lr = None
        n_out = m.config.n_classes
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            lr = learning_rate(cfg, epoch)
            if prev_lr is not None and cfg.momentum_form == "standard" and lr != prev_lr:
                self.vel *= lr / prev_lr  # keep PyTorch's unscaled velocity the same
            prev_lr = lr
            np.copyto(good, self.work)
            if chooser is not None:
                chooser.start_epoch(epoch)
            order = rng.permutation(n)
            cost_sum = reg_sum = err_sum = 0.0
            correct = 0
            for start in range(0, n, batch):
                stop = min(start + batch, n)
                b = stop - start
                scale = lr / b
                batch_cost = 0.0
                started = time.perf_counter()
                ph.start()
                for cs in range(start, stop, self.c):
                    c_cost, c_correct, c_err = self._chunk(data, order[cs : min(cs + self.c, stop)], cs == start, scale, ph)
                    batch_cost += c_cost
                    correct += c_correct
                    err_sum += c_err
                reg = self._reg_cost() if (cfg.l1 or cfg.l2) else 0.0
                if not math.isfinite(batch_cost + reg):
                    np.copyto(self.work, good)
                    raise TrainingDiverged(
                        f"training diverged in epoch {epoch + 1} (cost is {batch_cost / b + reg}); kept the weights "
                        f"from the start of that epoch: lower the learning rate (now {lr:g})"
                    )
                cost_sum += batch_cost
                reg_sum += reg * b
                ph.lap("cost")
                self._update(lr)
                ph.lap("update")
                if chooser is not None:
                    chooser.batch_done(time.perf_counter() - started)
            if not np.isfinite(self.work).all():
                np.copyto(self.work, good)
                raise TrainingDiverged(
                    f"weights became NaN/inf in epoch {epoch + 1}; kept the weights from the start of that epoch: "
                    f"lower the learning rate (now {lr:g})"
                )
            self._sync()
            train_seconds = time.perf_counter() - t0
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "cost": (cost_sum + reg_sum) / n,
                "reg_cost": reg_sum / n,
                "train_accuracy": correct / n,
                "mean_abs_error": err_sum / (n * n_out),
                "lr": lr,
            }
            if test_set is not None:
                row["test_accuracy"] = self._accuracy(test_set, test_split)
            if val_set is not None:
                row["val_accuracy"] = self._accuracy(val_set, val_split)
            row["seconds"] = time.perf_counter() - t0
            row["train_seconds"] = train_seconds
            if ph.enabled:
                row.update(ph.take())
            history.append(row)
            if callback is not None:
                callback(row)
            if val_set is not None:
                if row["val_accuracy"] > best_acc:
                    best_acc, waited, self.best_epoch = row["val_accuracy"], 0, epoch + 1
                    if cfg.patience is not None:
                        best_params = self.work.copy()
                else:
                    waited += 1
                    if cfg.patience is not None and waited >= cfg.patience:
                        self.stopped_early = True
                        break
        if best_params is not None:
            np.copyto(self.work, best_params)
        return history


def train(
    model: MLP,
    inputs: np.ndarray,
    labels: np.ndarray,
    *,
    test: tuple[np.ndarray, np.ndarray] | None = None,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    profile: bool = False,
    chunk: int = CHUNK,
    split: float | str | None = "auto",
    threads: int | str | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` in place; returns the per-epoch history (see Trainer.fit)."""
    return Trainer(model, chunk=chunk, split=split).fit(
        inputs, labels, test=test, val=val, callback=callback, profile=profile, threads=threads
    )
