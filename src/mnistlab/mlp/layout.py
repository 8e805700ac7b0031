"""How the trainer lays out the inputs and the parameters so that the first layer skips zeros.

Three ideas live here (docs/performance.md, "MLP internals", says what each one saves):

* The column split (``TrainData``). Input columns that are zero in every training image (MNIST's
  blank border) are *inactive*: they add exact zeros to every product and their weights get no
  data gradient, so the products skip them. Of the rest, columns inked in few images form a
  *tail* kept only for the images that have ink there; the others are the dense *core*. The first
  layer multiplies the core columns for the whole chunk and the tail columns only for the chunk's
  images that touch them (put first, so those products read leading row blocks). The sums are the
  same; only their order (hence float rounding) differs.
* The working layout (``WorkingLayout``). During a fit the parameters live in a copy whose
  first-layer rows are ordered core, tail, inactive, so every product reads a contiguous slice,
  and whose hidden layers are padded to widths BLAS multiplies faster, with units that stay zero.
* The unit-scaling fold. With one scale s for all columns and no centering (``preprocess="unit"``,
  s = 255), inputs are u / s for raw values u: the working first-layer weights, their velocity and
  their gradient are kept divided by s, so raw uint8 values are multiplied as they are and no
  chunk is ever divided. The update's arithmetic is linear, so it is unchanged by the fold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import activations as act
from .inputs import check_data
from .model import MLP, layer_views

# split="auto" tries these tail thresholds (fractions of images with the column nonzero) and prices
# each with a cost model in units of one row x column of the dense product: a tail row x column costs
# TAIL_ROW_COST (small products plus adding them into the chunk's), handling a tail at all costs
# TAIL_OVERHEAD per chunk. Both were fitted to timings on MNIST at batch 500 (docs/performance.md).
TAIL_THRESHOLDS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1)
TAIL_ROW_COST = 1.5
TAIL_OVERHEAD = 12_000
# Column frequencies are estimated on this many evenly spaced images (counting every image costs
# more than the estimate needs); which images touch the tail is then found exactly.
FREQUENCY_SAMPLE = 4096
# Images per block when finding which images touch the tail, so no whole-split temporary is made.
SCAN_BLOCK = 8192
# Working hidden widths are rounded up to a multiple of this (see WorkingLayout): BLAS kernels work
# in blocks of columns, and OpenBLAS' float32 kernels run products 72 columns wide faster than 70.
PAD_WIDTH = 8


def preprocess_into(
    out: np.ndarray, raw: np.ndarray, mean: np.ndarray | None, scale: np.ndarray | None
) -> np.ndarray:
    """``(raw - mean) / scale`` into ``out`` with ``Preprocessor``'s arithmetic (None: that step is
    not needed). The cast comes first, then same-dtype arithmetic: a mixed uint8/float32 ufunc runs
    buffered, which is slower."""
    np.copyto(out, raw)
    if mean is not None:
        np.subtract(out, mean, out=out)
    if scale is not None:
        np.divide(out, scale, out=out)
    return out


class TrainData:
    """The training split as the batch loop reads it: the core columns of every image, the tail
    columns of the images that touch them, and the labels.

    Raw uint8 images stay raw (a quarter of the memory traffic of float32) and are preprocessed
    chunk by chunk with ``Preprocessor.__call__``'s arithmetic (bit-identical to preprocessing
    everything first), except under unit scaling, where they stay raw (``input_scale`` > 1).
    ``split`` picks the tail threshold: "auto" (the cheapest by the cost model above), a fraction
    of images (a column is tail when fewer images than that have it nonzero) or None (no tail).
    """

    def __init__(
        self, model: MLP, inputs: np.ndarray, labels: np.ndarray, split: float | str | None, chunk: int
    ) -> None:
        checked = check_data(model, inputs, labels, "training data", keep_raw=True)
        flat = checked.inputs
        pre = model.preprocess
        self.labels = checked.labels
        self.raw = checked.raw
        self.n = len(flat)
        if self.raw:
            zero_input = pre(np.zeros((1, *pre.mean.shape), np.uint8)).reshape(-1)
        else:
            zero_input = np.zeros(flat.shape[1], flat.dtype)
        # a raw zero that preprocessing turns into a nonzero input is not a zero input
        zero_maps_to_zero = zero_input == 0
        active = flat.any(axis=0) | ~zero_maps_to_zero
        tail = tail_columns(flat, zero_maps_to_zero & active, int(np.count_nonzero(active)), split, chunk)
        self.core = np.flatnonzero(active & ~tail)
        self.tail = np.flatnonzero(tail)
        self.inactive = np.flatnonzero(~active)
        self.n_core = len(self.core)
        self.n_tail = len(self.tail)
        # np.take copies columns faster than fancy indexing
        self.rows = flat if self.n_core == flat.shape[1] else np.take(flat, self.core, axis=1)
        self.touches: np.ndarray | None = None  # (n,) bool: image has ink in a tail column
        self.touch_fraction = 0.0
        self.tail_rows = np.empty((0, self.n_tail), flat.dtype)  # tail columns of the touching images
        self.tail_row_of = np.empty(0, np.intp)  # (n,) row in tail_rows, -1 for images with no ink there
        if self.n_tail:
            self._find_tail_rows(flat)
        self.input_scale = 1.0  # s of the unit-scaling fold; 1 when not folded
        self.centered = False
        self.mean: np.ndarray | None = None  # raw data: per core column
        self.scale: np.ndarray | None = None  # raw data, not folded: per core column
        self.tail_scale: np.ndarray | None = None  # raw data, not folded: per tail column
        if self.raw:
            mean, scale = pre.mean.reshape(-1), pre.scale.reshape(-1)
            self.centered = bool(mean[self.core].any())  # the tail's means are 0: zero maps to zero
            self.mean = np.ascontiguousarray(mean[self.core])
            if not self.centered and np.all(scale == scale[0]):
                self.input_scale = float(scale[0])
            else:
                self.scale = np.ascontiguousarray(scale[self.core])
                self.tail_scale = np.ascontiguousarray(scale[self.tail])

    def _find_tail_rows(self, flat: np.ndarray) -> None:
        # block by block: a tail-column copy of the whole split would be fresh memory, which costs
        # more than the copying itself on a freshly started process
        self.touches = np.empty(self.n, bool)
        kept = []
        for start in range(0, self.n, SCAN_BLOCK):
            cols = np.take(flat[start : start + SCAN_BLOCK], self.tail, axis=1)
            touches = np.any(cols, axis=1, out=self.touches[start : start + SCAN_BLOCK])
            kept.append(cols[touches])
        self.tail_rows = np.concatenate(kept)
        self.touch_fraction = float(np.mean(self.touches))
        touching = np.flatnonzero(self.touches)
        self.tail_row_of = np.full(self.n, -1, np.intp)
        self.tail_row_of[touching] = np.arange(len(touching))

    def arrange(
        self, order: np.ndarray, starts: np.ndarray, keys: np.ndarray
    ) -> tuple[np.ndarray, list[int]]:
        """The epoch's ``order`` with each chunk's images (chunks begin at ``starts``; ``keys`` is
        ``chunk_keys`` of them) reordered so that those with ink in the tail columns come first,
        otherwise in order, and how many they are per chunk: the tail products then read a leading
        block of rows. One stable sort per epoch instead of a few small NumPy calls per chunk."""
        if not self.n_tail:
            return order, [0] * len(starts)
        touch = self.touches[order]
        # a touching image's key is one less than the others' of its chunk, and above the chunk before
        arranged = np.take(order, np.argsort(keys - touch, kind="stable"))
        return arranged, np.add.reduceat(touch, starts, dtype=np.intp).tolist()

    def gather(self, idx: np.ndarray, out: np.ndarray, raw_buf: np.ndarray | None) -> np.ndarray:
        """The chunk's core columns, preprocessed."""
        if not self.raw:
            return np.take(self.rows, idx, axis=0, out=out, mode="clip")
        raw = np.take(self.rows, idx, axis=0, out=raw_buf, mode="clip")
        return preprocess_into(out, raw, self.mean if self.centered else None, self.scale)

    def gather_tail(self, idx: np.ndarray, out: np.ndarray, raw_buf: np.ndarray | None) -> np.ndarray:
        """The tail columns of the images ``idx`` (all of which touch the tail), preprocessed."""
        rows = self.tail_row_of[idx]
        if not self.raw:
            return np.take(self.tail_rows, rows, axis=0, out=out, mode="clip")
        raw = np.take(self.tail_rows, rows, axis=0, out=raw_buf, mode="clip")
        return preprocess_into(out, raw, None, self.tail_scale)

    def summary(self) -> dict[str, float]:
        """How the columns were split (``Trainer.layout``, shown by ``describe_layout``)."""
        return {
            "core": self.n_core,
            "tail": self.n_tail,
            "tail_rows": self.touch_fraction,
            "blank": len(self.inactive),
        }


def chunk_keys(n: int, starts: np.ndarray) -> np.ndarray:
    """2 c + 1 at every position of chunk c (chunks begin at ``starts``), for ``TrainData.arrange``;
    16-bit where that holds it (NumPy sorts 16-bit keys by radix)."""
    dtype = np.int16 if 2 * len(starts) + 1 <= np.iinfo(np.int16).max else np.intp
    key = np.zeros(n, dtype)
    key[starts[1:]] = 2
    np.cumsum(key, out=key)
    key += 1
    return key


def tail_columns(
    flat: np.ndarray, eligible: np.ndarray, n_active: int, split: float | str | None, chunk: int
) -> np.ndarray:
    """Boolean mask of the tail columns under ``split``: among the ``eligible`` ones (active, and
    zero in the raw data means zero input), of ``n_active`` active columns."""
    n = len(flat)
    none = np.zeros(flat.shape[1], bool)
    if split is None or not eligible.any():
        return none
    sample = flat[:: max(1, n // FREQUENCY_SAMPLE)]
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


def describe_layout(layout: dict[str, float]) -> str:
    """How the first layer's products covered the input columns (``Trainer.layout``)."""
    if not layout:
        return "input columns: all multiplied for every image"
    return (
        f"input columns: {layout['core']} for every image, {layout['tail']} rarely inked ones only for the "
        f"{100 * layout['tail_rows']:.0f}% of images with ink there, {layout['blank']} blank ones skipped"
    )


@dataclass
class ParamViews:
    """Per-layer views of one flat working-layout buffer (parameters, a gradient, ...)."""

    flat: np.ndarray
    weights: list[np.ndarray]  # (in, out); the first layer's holds its core rows only
    biases: list[np.ndarray]  # (out,)
    tail: np.ndarray  # (n_tail, out of layer 1): the first layer's tail rows


class WorkingLayout:
    """Where each model parameter sits in the trainer's working copy, and in which units.

    Hidden layers are widened to a multiple of ``PAD_WIDTH`` units when the activation maps 0 to 0:
    a pad unit's weights start at zero and every gradient they get is an exact zero, so they stay
    zero and add exact zeros to every sum; the products are just shaped the way BLAS runs fastest.
    """

    def __init__(self, model: MLP, data: TrainData) -> None:
        self.model = model
        cfg = model.config
        sizes = list(cfg.sizes)
        zero = np.zeros(1, model.dtype)
        if len(sizes) > 2 and act.FORWARD[cfg.activation](zero)[0] == 0:
            sizes[1:-1] = [-(-width // PAD_WIDTH) * PAD_WIDTH for width in sizes[1:-1]]
        self.sizes = tuple(sizes)  # the working widths: input, padded hidden widths, outputs
        self.shapes = list(zip(self.sizes[:-1], self.sizes[1:]))
        n_in, h1 = self.shapes[0]
        self.n_core = data.n_core
        self.n_tail = data.n_tail
        self.input_scale = data.input_scale
        self.n_first = n_in * h1  # first-layer weights: the entries the unit-scaling fold divides
        self.n_weights = sum(a * b for a, b in self.shapes)
        self.size = self.n_weights + sum(b for _, b in self.shapes)
        # first-layer rows in working order: core, tail, inactive input columns
        rows = np.concatenate([data.core, data.tail, data.inactive])
        # working positions that hold a model parameter, and which one (None: the same layout)
        self.at: np.ndarray | None = None
        self.model_at: np.ndarray | None = None
        if self.sizes != cfg.sizes or data.n_core != n_in:
            self.at, self.model_at = self._placement(rows)
        # gradient entries of the inactive rows: no product writes them, so penalties must not pile up there
        self.blank = slice((data.n_core + data.n_tail) * h1, n_in * h1)

    def _placement(self, first_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        at, model_at = [], []
        pos = model_pos = 0
        for layer, ((n_in, n_out), (rows_here, width)) in enumerate(zip(self.model.shapes, self.shapes)):
            rows = first_rows if layer == 0 else np.arange(n_in)  # working row r holds model row rows[r]
            at.append((pos + np.arange(n_in)[:, None] * width + np.arange(n_out)).ravel())
            model_at.append((model_pos + rows[:, None] * n_out + np.arange(n_out)).ravel())
            pos += rows_here * width
            model_pos += n_in * n_out
        for (_, n_out), (_, width) in zip(self.model.shapes, self.shapes):
            at.append(pos + np.arange(n_out))
            model_at.append(model_pos + np.arange(n_out))
            pos += width
            model_pos += n_out
        return np.concatenate(at), np.concatenate(model_at)

    def views(self, flat: np.ndarray) -> ParamViews:
        weights, biases = layer_views(flat, self.shapes)
        h1 = self.sizes[1]
        weights[0] = flat[: self.n_core * h1].reshape(self.n_core, h1)
        tail = flat[self.n_core * h1 : (self.n_core + self.n_tail) * h1].reshape(self.n_tail, h1)
        return ParamViews(flat, weights, biases, tail)

    def first_layer(self, flat: np.ndarray) -> np.ndarray:
        """The first layer's weights, every column in working order: (input_size, working width)."""
        return flat[: self.n_first].reshape(-1, self.sizes[1])

    def from_model(self, out: np.ndarray) -> np.ndarray:
        """The model's parameters in the working layout and units, written into ``out``."""
        params = self.model.params
        if self.at is None:
            out[...] = params
        else:
            out.fill(0)
            out[self.at] = params[self.model_at]
        if self.input_scale != 1:
            out[: self.n_first] /= self.input_scale
        return out

    def in_model_units(self, flat: np.ndarray, scratch: np.ndarray) -> np.ndarray:
        """A working parameter or gradient buffer in the model's units (``scratch`` when they differ)."""
        if self.input_scale == 1:
            return flat
        np.copyto(scratch, flat)
        scratch[: self.n_first] *= self.input_scale
        return scratch

    def to_model_order(self, flat: np.ndarray) -> np.ndarray:
        """A new array: a buffer in model units reordered as the model's parameters."""
        if self.at is None:
            return flat.copy()
        out = np.empty_like(self.model.params)
        out[self.model_at] = flat[self.at]
        return out

    def write_model(self, flat: np.ndarray, scratch: np.ndarray) -> None:
        """Copy working parameters into the model."""
        params = self.in_model_units(flat, scratch)
        if self.at is None:
            np.copyto(self.model.params, params)
        else:
            self.model.params[self.model_at] = params[self.at]
