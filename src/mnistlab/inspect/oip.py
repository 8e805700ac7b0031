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
it gets up to ``restarts`` fresh starts of another kind (bright blobs on black, like the strokes
of a digit), and stays listed in ``dead`` if none helps: often it is silent for every real image
too (a dead ReLU map).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from ..model_api import InspectableModel
from ..numbers import parse_number_list
from .activations import layer_shapes

SIZE = 28


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


def multiscale_noise(
    units: Sequence[int], scales: Sequence[float] = (1, 2, 4, 7), *, seed: int = 0, attempt: int = 0
) -> np.ndarray:
    """Zero-mean, unit-std noise (N, 28, 28): a sum of equally weighted fields with features about
    ``s`` pixels wide for each ``s`` in ``scales``. Item k depends only on (seed, units[k], attempt)."""
    if not scales or any(s < 1 or s > SIZE for s in scales):
        raise ConfigError(f"length scales must be between 1 and {SIZE} pixels, got {list(scales)}")
    out = np.empty((len(units), SIZE, SIZE))
    for k, unit in enumerate(units):
        rng = np.random.default_rng([int(seed), int(unit), int(attempt)])
        field_sum = np.zeros((1, SIZE, SIZE))
        for s in scales:
            m = max(2, int(round(SIZE / s)) + 1) if s > 1 else SIZE
            field_sum += _upsample_bilinear(rng.standard_normal((1, m, m)), SIZE)
        field_sum -= field_sum.mean()
        out[k] = field_sum[0] / (field_sum.std() + 1e-12)
    return out


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
    steps: int = 100,
    step_size: float = 6.0,
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

    def start_pixels(attempt: int, which: np.ndarray) -> np.ndarray:
        noise = multiscale_noise(units_arr[which], scales, seed=seed, attempt=attempt)
        if attempt == 0:
            return np.clip(base + amplitude * noise, 0, 255)
        if attempt % 2:
            # Bright blobs on a black background, closer to the strokes of a digit: this wakes
            # many maps that grey noise leaves silent.
            return np.clip(-100 + 150 * noise, 0, 255)
        # Brighter and brighter grey noise, for units that need much ink before they respond.
        level = base + (230 - base) * attempt / max(2, restarts)
        return np.clip(level + amplitude * noise, 0, 255)

    x = start_pixels(0, everyone)
    values, grads = value_and_grad(x, everyone)
    for attempt in range(1, restarts + 1):
        silent = np.flatnonzero(~np.any(grads != 0, axis=(1, 2)))
        if silent.size == 0:
            break
        x[silent] = start_pixels(attempt, silent)
        values[silent], grads[silent] = value_and_grad(x[silent], silent)
    silent = ~np.any(grads != 0, axis=(1, 2))
    if silent.any() and restarts > 0:  # dead after every restart: show the first start, not the last try
        x[silent] = start_pixels(0, np.flatnonzero(silent))
        values[silent], grads[silent] = value_and_grad(x[silent], np.flatnonzero(silent))
    start = values.copy()
    trace = np.empty((steps + 1, n))
    for step in tqdm(range(steps), desc=f"OIP {layer}", disable=not progress, leave=False):
        trace[step] = values
        g = _gaussian_blur(grads, blur)
        # Pixels already at 0 or 255 that the gradient pushes further out cannot move: leave them
        # out of the step's norm, or they would soak up the whole step once a pattern saturates.
        g[((x >= 255) & (g > 0)) | ((x <= 0) & (g < 0))] = 0
        rms = np.sqrt(np.mean(g * g, axis=(1, 2), keepdims=True))
        # Steps shrink linearly to a tenth: long strides early, fine adjustment at the end.
        size = step_size * (1 - 0.9 * step / max(1, steps - 1))
        if decay:
            x = x * (1 - decay)  # fades what the unit does not need toward the black background
        x = np.clip(x + size * g / np.maximum(rms, 1e-12), 0, 255)  # a zero gradient moves nothing
        values, grads = value_and_grad(x, everyone)
    trace[steps] = values
    return OIPResult(layer, units_arr, x.astype(np.float32), start, values, trace, seed, steps,
                     time.perf_counter() - t0, "map" if len(shape) == 3 else "node")
