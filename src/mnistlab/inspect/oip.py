"""Optimal input patterns (OIPs): activation maximization by gradient ascent on the input image.

For each requested unit (a conv map's mean activation, or a dense node's value) an image starts as
noise at several length scales (the seed's multi-scale initial fluctuations: smooth blobs plus
fine grain) and climbs the unit's input gradient with normalized steps (each step moves the image
by the same root-mean-square amount, whatever the gradient's size) for a fixed number of steps.
All units are optimized together as one batch through ``model.input_gradient``, so 128 maps cost
about as many forward/backward passes as one.

The ascent runs in pixel space (0..255, clipped every step) so step sizes mean the same whatever
the model's preprocessing, and the result is an image a person can look at. Each unit's start
noise comes from its own seed stream ``(seed, unit)``: the pattern of map 5 is the same whether it
is optimized alone or with 127 others.

A unit whose gradient is exactly zero at the start (a ReLU map silent for the noise) cannot climb;
it gets up to ``restarts`` fresh starts of other kinds (bright blobs on black or brighter noise,
and faint pen strokes on black, like the parts of a digit), several at a time, keeps the faintest
one it responds to, and stays listed in ``dead`` if none helps: often it is silent for every real
image too (a dead ReLU map).

The fade toward black (``decay``) shrinks with the step size, so the final small steps still climb.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from ..model_api import InspectableModel
from ..numbers import parse_number_list
from .activations import layer_shapes

SIZE = 28
RESTART_VARIANTS = 8  # starts tried at once for each silent unit at each restart


@dataclass
class OIPResult:
    layer: str
    units: np.ndarray  # (N,)
    images: np.ndarray = field(repr=False)  # (N, 28, 28) float32 pixel values 0..255
    start: np.ndarray = field(repr=False)  # (N,) objective at the (last) starting noise
    final: np.ndarray = field(repr=False)  # (N,) objective after the last step
    trace: np.ndarray = field(repr=False)  # (steps + 1, N) objective before each step, then the final
    seed: int = 0
    steps: int = 0
    seconds: float = 0.0
    unit_kind: str = "node"  # "map" when the layer's units are feature maps (a map's mean), else "node"

    @property
    def dead(self) -> np.ndarray:
        """Units that never responded: no gradient at any start, objective still at (or below) zero."""
        return (self.final <= 1e-7) & (np.abs(self.final - self.start) <= 1e-7)

    def gain(self) -> np.ndarray:
        """final / start where the start is positive, else inf (or nan for a unit that stayed at zero)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(self.start > 0, self.final / np.where(self.start > 0, self.start, 1), np.inf)
        g[self.dead] = np.nan
        return g

    def reached(self, factor: float = 10.0) -> np.ndarray:
        """Units whose final activation is at least ``factor`` times the start (from zero: any rise)."""
        return ~self.dead & (
            (self.final >= factor * self.start) | ((self.start <= 0) & (self.final > self.start))
        )

    def table(self) -> list[dict]:
        gains = self.gain()
        return [{"unit": int(u), "start": float(s), "final": float(f), "gain": float(g), "dead": bool(d)}
                for u, s, f, g, d in zip(self.units, self.start, self.final, gains, self.dead)]


def _upsample_bilinear(grid: np.ndarray, size: int) -> np.ndarray:
    """(N, m, m) -> (N, size, size), corners aligned: a smooth field whose features are size/(m-1) wide."""
    n, m, _ = grid.shape
    if m == size:
        return grid
    t = np.linspace(0, m - 1, size)
    i0 = np.minimum(np.floor(t).astype(int), m - 2)
    w = (t - i0)[None, :]
    rows = grid[:, i0, :] * (1 - w)[..., None] + grid[:, i0 + 1, :] * w[..., None]  # (N, size, m)
    return rows[:, :, i0] * (1 - w)[:, None, :] + rows[:, :, i0 + 1] * w[:, None, :]


def _stream(seed: int, unit: int, attempt: int, variant: int) -> np.random.Generator:
    key = [int(seed), int(unit), int(attempt)] + ([int(variant)] if variant else [])
    return np.random.default_rng(key)


def multiscale_noise(
    units: Sequence[int], scales: Sequence[float] = (1, 2, 4, 7), *, seed: int = 0, attempt: int = 0,
    variants: int = 1,
) -> np.ndarray:
    """Zero-mean, unit-std noise (N * variants, 28, 28): a sum of equally weighted fields with
    features about ``s`` pixels wide for each ``s`` in ``scales``; ``variants`` different fields per
    unit, one unit's after another. Each depends only on (seed, unit, attempt, variant)."""
    if not scales or any(s < 1 or s > SIZE for s in scales):
        raise ConfigError(f"length scales must be between 1 and {SIZE} pixels, got {list(scales)}")
    out = np.empty((len(units) * variants, SIZE, SIZE))
    for k, (unit, variant) in enumerate(itertools.product(units, range(variants))):
        rng = _stream(seed, unit, attempt, variant)
        field_sum = np.zeros((1, SIZE, SIZE))
        for s in scales:
            m = max(2, int(round(SIZE / s)) + 1) if s > 1 else SIZE
            field_sum += _upsample_bilinear(rng.standard_normal((1, m, m)), SIZE)
        field_sum -= field_sum.mean()
        out[k] = field_sum[0] / (field_sum.std() + 1e-12)
    return out


def pen_strokes(units: Sequence[int], *, seed: int = 0, attempt: int = 0, variants: int = 1) -> np.ndarray:
    """Pixel images (N * variants, 28, 28), 0..255: one to three straight pen strokes (about 3 pixels
    wide, 6 to 20 long, at any angle) in ink on a black background, like the parts of a digit. Each
    depends only on (seed, unit, attempt, variant)."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    out = np.zeros((len(units) * variants, SIZE, SIZE))
    for k, (unit, variant) in enumerate(itertools.product(units, range(variants))):
        rng = _stream(seed, unit, attempt, variant)
        for _ in range(rng.integers(1, 4)):
            centre, angle, length = rng.uniform(4, SIZE - 4, 2), rng.uniform(0, np.pi), rng.uniform(6, 20)
            direction = np.array([np.cos(angle), np.sin(angle)])
            dx, dy = cols - centre[0], rows - centre[1]  # from the stroke's middle
            along = np.clip(dx * direction[0] + dy * direction[1], -length / 2, length / 2)
            distance = np.hypot(dx - along * direction[0], dy - along * direction[1])
            out[k] = np.maximum(out[k], np.clip(1.5 - distance / 1.2, 0, 1))
    return 255 * out


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return x
    radius = max(1, int(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(x, ((0, 0), (radius, radius), (0, 0)), mode="reflect")
    x = sum(k[i] * pad[:, i : i + x.shape[1], :] for i in range(len(k)))
    pad = np.pad(x, ((0, 0), (0, 0), (radius, radius)), mode="reflect")
    return sum(k[i] * pad[:, :, i : i + x.shape[2]] for i in range(len(k)))


def parse_units(text: str | None, count: int) -> list[int]:
    """'0-127', '3,5,9', '0-7,12' or None (all) -> unit indices, checked against the layer's size."""
    if text is None or str(text).strip() in ("", "all"):
        return list(range(count))
    units = parse_number_list([text], what="unit", example="0-127")
    bad = [u for u in units if not 0 <= u < count]
    if bad:
        raise ConfigError(f"unit {bad[0]} does not exist: the layer has {count} (0..{count - 1})")
    return units


def optimize_inputs(
    model: InspectableModel,
    layer: str,
    units: Sequence[int] | None = None,
    *,
    steps: int = 70,
    step_size: float = 9.0,
    scales: Sequence[float] = (1, 2, 4, 7),
    base: float = 40.0,
    amplitude: float = 30.0,
    blur: float = 0.5,
    decay: float = 0.01,
    seed: int = 0,
    restarts: int = 20,
    batch_size: int | None = None,
    progress: bool = False,
) -> OIPResult:
    """Maximize each unit's activation over the input image; see the module doc.

    ``step_size``, ``base`` and ``amplitude`` are in pixel levels (0..255): the start is
    ``base + amplitude * noise`` clipped to 0..255, and each step moves the image by ``step_size``
    (root mean square over its pixels). ``blur`` smooths each gradient (Gaussian sigma, pixels),
    which favours patterns a person can read over pixel-level speckle; ``decay`` shrinks every
    pixel by that share each step, so the parts of the start noise that the unit ignores fade to
    the background.
    """
    import time

    from tqdm.auto import tqdm

    model.check_layers(layer)
    shape = layer_shapes(model)[layer]
    count = shape[0]
    units_arr = np.asarray(list(range(count)) if units is None else list(units), dtype=np.int64)
    if units_arr.size == 0:
        raise ConfigError("no units to optimize")
    bad = units_arr[(units_arr < 0) | (units_arr >= count)]
    if bad.size:
        raise ConfigError(f"unit {int(bad[0])} does not exist: layer {layer!r} has {count} (0..{count - 1})")
    if steps < 1 or step_size <= 0:
        raise ConfigError(f"steps ({steps}) and step size ({step_size}) must be positive")
    scale = np.asarray(model.preprocess.scale, np.float64)
    n = len(units_arr)
    chunk = batch_size or n
    t0 = time.perf_counter()

    def value_and_grad(pixels: np.ndarray, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values, grads = [], []
        for i in range(0, len(which), chunk):
            inputs = model.to_inputs(pixels[i : i + chunk])
            v, g = model.input_gradient(inputs, layer, units_arr[which[i : i + chunk]])
            values.append(np.asarray(v, np.float64))
            grads.append(np.asarray(g, np.float64) / scale)  # d/d pixels = d/d inputs * d inputs/d pixels
        return np.concatenate(values), np.concatenate(grads)

    everyone = np.arange(n)

    def start_pixels(attempt: int, which: np.ndarray, variants: int = 1) -> np.ndarray:
        """``variants`` starts per unit of ``which``, one unit's after another: noise of the attempt's
        kind, and from the second half of the variants on, pen strokes."""
        noise_variants = max(1, variants // 2)
        units_here = units_arr[which]
        noise = multiscale_noise(units_here, scales, seed=seed, attempt=attempt, variants=noise_variants)
        if attempt == 0:
            starts = np.clip(base + amplitude * noise, 0, 255)
        elif attempt % 2:
            # Bright blobs on a black background: this wakes many maps that grey noise leaves silent.
            starts = np.clip(-100 + 150 * noise, 0, 255)
        else:
            # Brighter and brighter grey noise, for units that need much ink before they respond.
            level = base + (230 - base) * attempt / max(2, restarts)
            starts = np.clip(level + amplitude * noise, 0, 255)
        if variants == noise_variants:
            return starts
        # Faint pen strokes on black, the parts of a digit: they wake maps that want a stroke of one
        # orientation on a clean background, which no noise offers. Faint, so that the climb, not
        # the start, makes the pattern.
        stroke_variants = variants - noise_variants
        strokes = 0.5 * pen_strokes(units_here, seed=seed, attempt=attempt, variants=stroke_variants)
        per_unit = [starts.reshape(len(which), noise_variants, SIZE, SIZE),
                    strokes.reshape(len(which), stroke_variants, SIZE, SIZE)]
        return np.concatenate(per_unit, axis=1).reshape(-1, SIZE, SIZE)

    x = start_pixels(0, everyone)
    values, grads = value_and_grad(x, everyone)
    for attempt in range(1, restarts + 1):
        silent = np.flatnonzero(~np.any(grads != 0, axis=(1, 2)))
        if silent.size == 0:
            break
        # Several starts per silent unit in one batch (as cheap as a fraction of a step); the unit
        # keeps the one it responds to least, but responds: the climb, not the start, makes the pattern.
        tries = start_pixels(attempt, silent, RESTART_VARIANTS)
        tried_values, tried_grads = value_and_grad(tries, np.repeat(silent, RESTART_VARIANTS))
        responds = np.any(tried_grads != 0, axis=(1, 2)).reshape(silent.size, RESTART_VARIANTS)
        faintest = np.where(responds, tried_values.reshape(silent.size, -1), np.inf).argmin(1)  # 0 if none
        chosen = np.arange(silent.size) * RESTART_VARIANTS + faintest
        x[silent], values[silent], grads[silent] = tries[chosen], tried_values[chosen], tried_grads[chosen]
    silent = ~np.any(grads != 0, axis=(1, 2))
    if silent.any() and restarts > 0:  # dead after every restart: show the first start, not the last try
        x[silent] = start_pixels(0, np.flatnonzero(silent))
        values[silent], grads[silent] = value_and_grad(x[silent], np.flatnonzero(silent))
    start = values.copy()
    trace = np.empty((steps + 1, n))
    reach = np.ones((n, 1, 1))  # each unit's share of the step: halved after a step silenced it
    for step in tqdm(range(steps), desc=f"OIP {layer}", disable=not progress, leave=False):
        trace[step] = values
        g = _gaussian_blur(grads, blur)
        # Pixels already at 0 or 255 that the gradient pushes further out cannot move: leave them
        # out of the step's norm, or they would soak up the whole step once a pattern saturates.
        g[((x >= 255) & (g > 0)) | ((x <= 0) & (g < 0))] = 0
        rms = np.sqrt(np.mean(g * g, axis=(1, 2), keepdims=True))
        # Steps shrink linearly to a tenth: long strides early, fine adjustment at the end.
        size = step_size * (1 - 0.9 * step / max(1, steps - 1)) * reach
        moved = x
        if decay:
            # Fades what the unit does not need toward the black background, in proportion to the
            # step: a fixed fade outweighed the last, small steps and lowered most units' activation.
            moved = moved * (1 - decay * size / step_size)
        moved = np.clip(moved + size * g / np.maximum(rms, 1e-12), 0, 255)  # a zero gradient moves nothing
        new_values, new_grads = value_and_grad(moved, everyone)
        # A step that silences a responding unit (a faint start overshot) leaves it nothing to climb
        # from: that unit stays where it was and tries half the step next time, then grows back.
        lost = np.any(grads != 0, axis=(1, 2)) & ~np.any(new_grads != 0, axis=(1, 2))
        kept = ~lost
        reach[lost] /= 2
        reach[kept] = np.minimum(1.0, 2 * reach[kept])
        x[kept], values[kept], grads[kept] = moved[kept], new_values[kept], new_grads[kept]
    trace[steps] = values
    return OIPResult(layer, units_arr, x.astype(np.float32), start, values, trace, seed, steps,
                     time.perf_counter() - t0, "map" if len(shape) == 3 else "node")
