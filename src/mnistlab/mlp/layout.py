"""How the trainer lays out the inputs and the parameters so that the first layer skips zeros.

Three ideas live here (docs/performance.md, "MLP internals", says what each one saves):

* The column order (``TrainData``). Input columns that are zero in every training image (MNIST's
  blank border) are *inactive*: they add exact zeros to every product and their weights get no
  data gradient, so the products skip them. The others are ordered so that every image's ink
  ends early in its row for most images (``fewest_reached``; roughly by how often they are inked,
  most often first): the first layer multiplies each image's row only up to its last ink
  (``staircase``). The sums are the same; only their order (hence float rounding) differs.
* The working layout (``WorkingLayout``). During a fit the parameters live in a copy whose
  first-layer rows are in that column order (inactive ones last), so every product reads a
  leading block of them, and whose hidden layers are padded to widths BLAS multiplies faster,
  with units that stay zero.
* The unit-scaling fold. With one scale s for all columns and no centering (``preprocess="unit"``,
  s = 255), inputs are u / s for raw values u: the working first-layer weights, their velocity and
  their gradient are kept divided by s, so raw uint8 values are multiplied as they are and no
  chunk is ever divided. The update's arithmetic is linear, so it is unchanged by the fold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import activations as act
from . import staircase
from .inputs import check_data
from .model import MLP, layer_views

# Column frequencies are estimated on this many evenly spaced images (counting every image costs
# more than the estimate needs); each image's reach is then found exactly.
FREQUENCY_SAMPLE = 4096
# Columns inked in at least this share of the images are multiplied for every image, in their own
# order: nearly every image's ink reaches past them anyway, and inputs whose zeros are rare
# (preprocessed, centred) then take the same products as their raw form.
ALWAYS_FREQUENCY = 0.5
# Images per block when copying the columns and finding the reaches, so no whole-split temporary is made.
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


def fewest_reached(inked: np.ndarray) -> np.ndarray:
    """An order of the columns of ``inked`` (images x columns, bool; earlier columns preferred
    earlier among equals) that keeps the images' reaches short: built from the back, each place
    gets the column inked in the fewest images whose reach is not yet settled, and settles them.
    Ordering by frequency alone counts the images a later place has already settled."""
    back = np.ascontiguousarray(inked[:, ::-1])  # argmin's first minimum: the least preferred
    by_column = np.ascontiguousarray(back.T)
    as_bytes = back.view(np.uint8)
    counts = np.add.reduce(as_bytes, axis=0, dtype=np.int64)
    unsettled = np.ones(len(back), bool)
    placed = np.iinfo(np.int64).max
    picks = np.empty(back.shape[1], np.int64)
    for place in range(back.shape[1] - 1, -1, -1):
        column = int(counts.argmin())
        picks[place] = column
        settled = np.flatnonzero(unsettled & by_column[column])
        if len(settled):
            counts -= np.add.reduce(as_bytes[settled], axis=0, dtype=np.int64)
            unsettled[settled] = False
        counts[column] = placed
    return back.shape[1] - 1 - picks


class TrainData:
    """The training split as the batch loop reads it: each image's inputs in the working column
    order (``first_rows``: always-multiplied columns, the others in ``fewest_reached``'s order,
    then the inactive ones), its first ``width`` columns kept, how far its ink reaches
    (``levels``, see staircase) and the labels.

    Raw uint8 images stay raw (a quarter of the memory traffic of float32) and are preprocessed
    chunk by chunk with ``Preprocessor.__call__``'s arithmetic (bit-identical to preprocessing
    everything first), except under unit scaling, where they stay raw (``input_scale`` > 1).
    ``split`` says which columns every image multiplies whatever its ink: "auto" those whose zero
    is not a zero input (centred preprocessing) and those inked in at least ``ALWAYS_FREQUENCY`` of
    the images, a fraction f those inked in at least f of them (above ``ALWAYS_FREQUENCY``: as
    "auto"; the smaller, the fewer columns are skipped), None every active one (no staircase; the
    inactive columns are still skipped).
    """

    def __init__(self, model: MLP, inputs: np.ndarray, labels: np.ndarray, split: float | str | None) -> None:
        checked = check_data(model, inputs, labels, "training data", keep_raw=True)
        flat = checked.inputs
        pre = model.preprocess
        self.labels = checked.labels
        self.raw = checked.raw
        self.n, n_in = flat.shape
        if self.raw:
            zero_input = pre(np.zeros((1, *pre.mean.shape), np.uint8)).reshape(-1)
        else:
            zero_input = np.zeros(n_in, flat.dtype)
        # a raw zero that preprocessing turns into a nonzero input is not a zero input
        zero_maps_to_zero = zero_input == 0
        active = flat.any(axis=0) | ~zero_maps_to_zero
        sample = flat[:: max(1, self.n // FREQUENCY_SAMPLE)] != 0
        freq = sample.mean(axis=0)
        often = ALWAYS_FREQUENCY if split == "auto" else min(float(split or 0), ALWAYS_FREQUENCY)
        always = active & (~zero_maps_to_zero | (freq >= often) | (split is None))
        stair = np.flatnonzero(active & ~always)
        self.inactive = np.flatnonzero(~active)
        self.n_active = int(np.count_nonzero(active))
        self.n_always = int(np.count_nonzero(always))
        # the working layout's first-layer rows; a stable sort keeps equally inked columns in place
        by_frequency = stair[np.argsort(-freq[stair], kind="stable")]
        self.first_rows = np.concatenate(
            [np.flatnonzero(always), by_frequency[fewest_reached(sample[:, by_frequency])], self.inactive]
        )
        # the columns the products may read: the active ones, rounded up to whole column steps with
        # inactive ones (zero in every image)
        step = staircase.STEP
        self.width = min(-(-self.n_active // step) * step, n_in)
        cols = self.first_rows[: self.width]
        self.levels = np.empty(self.n, np.uint16)  # per image: how far its ink reaches (see staircase)
        if self.width == n_in and np.array_equal(cols, np.arange(n_in)):
            self.rows = flat
        else:
            self.rows = np.empty((self.n, self.width), flat.dtype)
        for start in range(0, self.n, SCAN_BLOCK):
            block = self.rows[start : start + SCAN_BLOCK]
            if self.rows is not flat:
                # block by block: np.take copies columns faster than fancy indexing, and a whole-split
                # temporary would be fresh memory, which costs more than the copying itself
                np.take(flat[start : start + SCAN_BLOCK], cols, axis=1, out=block)
            self.levels[start : start + SCAN_BLOCK] = staircase.reach_levels(block, self.n_always, self.width)
        self.input_scale = 1.0  # s of the unit-scaling fold; 1 when not folded
        self.centered = False
        self.mean: np.ndarray | None = None  # raw data: per column kept
        self.scale: np.ndarray | None = None  # raw data, not folded: per column kept
        if self.raw:
            mean, scale = pre.mean.reshape(-1), pre.scale.reshape(-1)
            self.centered = bool(mean[cols].any())
            self.mean = np.ascontiguousarray(mean[cols])
            if not self.centered and np.all(scale == scale[0]):
                self.input_scale = float(scale[0])
            else:
                self.scale = np.ascontiguousarray(scale[cols])

    def gather(
        self, idx: np.ndarray, out: np.ndarray, raw_buf: np.ndarray | None, groups: list[tuple[int, int, int]]
    ) -> None:
        """The images ``idx`` into ``out``, preprocessed: of the rows ``a:b`` of each of the
        ``groups`` (a, b, columns) only the first ``columns``, all the products read of them."""
        if not self.raw:
            np.take(self.rows, idx, axis=0, out=out, mode="clip")
            return
        raw = np.take(self.rows, idx, axis=0, out=raw_buf, mode="clip")
        mean = self.mean if self.centered else None
        scale = self.scale
        for a, b, columns in groups:
            preprocess_into(
                out[a:b, :columns],
                raw[a:b, :columns],
                None if mean is None else mean[:columns],
                None if scale is None else scale[:columns],
            )

    def summary(self) -> dict[str, float]:
        """How the columns are laid out (``Trainer.layout``, shown by ``describe_layout``)."""
        return {"active": self.n_active, "blank": len(self.inactive), "always": self.n_always}


def describe_layout(layout: dict[str, float]) -> str:
    """How the first layer's products covered the input columns (``Trainer.layout``)."""
    if not layout:
        return "input columns: all multiplied for every image"
    text = f"input columns: {layout['active']} active, {layout['blank']} blank ones skipped"
    if "columns_per_image" in layout:
        text += (
            f"; each chunk's rows in {layout['groups']} groups by how far their ink reaches, "
            f"{layout['columns_per_image']:.0f} columns per image on average "
            f"({layout['always']} for every image)"
        )
    if "test_columns_per_image" in layout:
        text += f"; the test pass {layout['test_columns_per_image']:.0f} per image"
    return text


@dataclass
class ParamViews:
    """Per-layer views of one flat working-layout buffer (parameters, a gradient, ...)."""

    flat: np.ndarray
    weights: list[np.ndarray]  # (in, out); the first layer's rows in the working column order
    biases: list[np.ndarray]  # (out,)


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
        self.width = data.width  # first-layer rows the products read (and write the gradient of)
        self.input_scale = data.input_scale
        self.n_first = n_in * h1  # first-layer weights: the entries the unit-scaling fold divides
        self.n_weights = sum(a * b for a, b in self.shapes)
        self.size = self.n_weights + sum(b for _, b in self.shapes)
        rows = data.first_rows  # first-layer rows in working order
        # working positions that hold a model parameter, and which one (None: the same layout)
        self.at: np.ndarray | None = None
        self.model_at: np.ndarray | None = None
        if self.sizes != cfg.sizes or not np.array_equal(rows, np.arange(n_in)):
            self.at, self.model_at = self._placement(rows)
        # gradient entries of the inactive rows past ``width``: no product writes them, so penalties
        # must not pile up there
        self.blank = slice(data.width * h1, n_in * h1)

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
        return ParamViews(flat, *layer_views(flat, self.shapes))

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
