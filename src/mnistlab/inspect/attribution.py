"""Attribution maps: which pixels of an image raise or lower a class probability, for any model
behind the InspectableModel interface (the NumPy MLP, the PyTorch CNN, imported models).

The *objective* is a class probability p(c), or for a pair "a,b" the difference p(a) - p(b) (what
made the network say 4 and not 9). Maps are in pixel space: the derivative with respect to the raw
0..255 pixels, so a map means the same whatever preprocessing the model fitted. Methods:

* ``gradient``: d objective / d pixel (saliency, signed).
* ``gradient-x-input``: pixel * gradient, the first-order share of each pixel against a black image.
* ``ig``: integrated gradients (Sundararajan et al. 2017) on the straight path from ``baseline`` (a
  pixel level or an image; default black) to the image, Gauss-Legendre quadrature with ``steps``
  points (Captum's default rule). Completeness says the map sums to f(image) - f(baseline); the
  result reports how far the quadrature misses that (``completeness_error``).
* ``smoothgrad``: the mean gradient over ``samples`` copies with Gaussian noise of ``noise`` pixel
  levels (Smilkov et al. 2017), drawn from ``seed``.
* ``occlusion``: a ``window`` x ``window`` square set to ``baseline``, slid by ``stride``; each
  pixel gets the mean drop of the objective over the windows that cover it (Zeiler and Fergus
  2014). It needs only probabilities, so it works for any model that gives them.
* ``gradcam``: a map layer's activations weighted by the spatial mean of the objective's gradient
  with respect to them, summed over channels, negative parts cut (Selvaraju et al. 2017), then
  stretched bilinearly to 28x28.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..model_api import InspectableModel
from .activations import is_conv, last_conv_layer, layer_shapes

SIZE = 28
CHUNK = 256  # images per model call: bounded memory for IG's and SmoothGrad's expanded batches
# Each method's options and their defaults; the one place that lists what a method accepts.
METHODS: dict[str, dict[str, Any]] = {
    "gradient": {},
    "gradient-x-input": {},
    "ig": {"baseline": 0.0, "steps": 50},
    "smoothgrad": {"samples": 16, "noise": 0.15 * 255, "seed": 0},
    "occlusion": {"window": 4, "stride": 2, "baseline": 0.0},
    "gradcam": {"layer": None},
}
# One backward pass (or a small fixed batch of them) per image: fast enough to follow a pen live.
LIVE_METHODS = ("gradient", "gradient-x-input", "smoothgrad", "gradcam")


@dataclass(frozen=True)
class Target:
    """What is explained for each image: p(positive[i]), minus p(negative[i]) when negative is given."""

    positive: np.ndarray  # (N,) int
    negative: np.ndarray | None = None  # (N,) int

    def repeat(self, k: int) -> Target:
        """Each image's target k times in a row, for a batch of k variants per image."""
        return Target(
            np.repeat(self.positive, k), None if self.negative is None else np.repeat(self.negative, k)
        )

    def take(self, rows: slice | np.ndarray) -> Target:
        return Target(self.positive[rows], None if self.negative is None else self.negative[rows])

    def describe(self, i: int = 0, names: Sequence[str] | None = None) -> str:
        name = (lambda c: str(names[c])) if names else str
        text = f"p({name(int(self.positive[i]))})"
        return text if self.negative is None else f"{text} - p({name(int(self.negative[i]))})"


@dataclass
class Attribution:
    method: str
    target: Target
    images: np.ndarray = field(repr=False)  # (N, 28, 28) float32 pixels 0..255
    maps: np.ndarray = field(repr=False)  # (N, 28, 28) float32; positive: raises the objective
    objective: np.ndarray = field(repr=False)  # (N,) the objective at each image
    options: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    baseline_objective: np.ndarray | None = field(
        default=None, repr=False
    )  # ig: the objective at the baseline
    completeness_error: np.ndarray | None = field(
        default=None, repr=False
    )  # ig: sum(map) - (f(x) - f(baseline))
    layer: str | None = None  # gradcam: the layer it weighted
    layer_maps: np.ndarray | None = field(default=None, repr=False)  # gradcam: (N, h, w) before upsampling

    def relative_completeness_error(self) -> np.ndarray:
        """|completeness error| / |f(x) - f(baseline)| per image (integrated gradients only)."""
        if self.completeness_error is None or self.baseline_objective is None:
            raise ConfigError(f"completeness applies to integrated gradients, not to {self.method}")
        gap = np.abs(self.objective - self.baseline_objective)
        return np.abs(self.completeness_error) / np.maximum(gap, 1e-12)


def parse_target(target: Any, n_classes: int = 10) -> tuple[int, int | None] | None:
    """None (each image's predicted class), a class (4, "4") or a pair ("4,9", (4, 9)) -> (a, b or None)."""
    if target is None or (isinstance(target, str) and target.strip().lower() in ("", "predicted")):
        return None
    if isinstance(target, (int, np.integer)):
        parts = [int(target)]
    else:
        items = target.replace(" vs ", ",").split(",") if isinstance(target, str) else list(target)
        try:
            parts = [int(str(p).strip()) for p in items]
        except ValueError:
            raise ConfigError(
                f"target {target!r} is not a class or a pair of classes; give e.g. 4 or 4,9"
            ) from None
    if not 1 <= len(parts) <= 2:
        raise ConfigError(f"target {target!r} names {len(parts)} classes; give one class (4) or a pair (4,9)")
    bad = [c for c in parts if not 0 <= c < n_classes]
    if bad:
        raise ConfigError(f"target class {bad[0]} does not exist; classes are 0..{n_classes - 1}")
    if len(parts) == 2 and parts[0] == parts[1]:
        raise ConfigError(
            f"target pair {parts[0]},{parts[1]} names one class twice; give two different classes"
        )
    return parts[0], (parts[1] if len(parts) == 2 else None)


def resolve_target(target: Any, proba: np.ndarray) -> Target:
    """A Target for each image, given the model's probabilities (N, classes) for them."""
    n = len(proba)
    parsed = parse_target(target, proba.shape[1])
    if parsed is None:
        return Target(proba.argmax(axis=1).astype(np.int64))
    a, b = parsed
    return Target(np.full(n, a, np.int64), None if b is None else np.full(n, b, np.int64))


def as_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, np.float64)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or images.shape[1:] != (SIZE, SIZE) or len(images) == 0:
        raise ConfigError(f"expected images of shape (N, 28, 28) or (28, 28), got {images.shape}")
    return images


def objective_values(model: InspectableModel, pixels: np.ndarray, target: Target) -> np.ndarray:
    """The objective for each image (N,), from probabilities alone."""
    values = []
    for start in range(0, len(pixels), CHUNK):
        proba = np.asarray(model.predict_proba(pixels[start : start + CHUNK]), np.float64)
        t = target.take(slice(start, start + CHUNK))
        rows = np.arange(len(proba))
        v = proba[rows, t.positive]
        values.append(v if t.negative is None else v - proba[rows, t.negative])
    return np.concatenate(values)


def _chunks(model: InspectableModel, pixels: np.ndarray, target: Target):
    """(model inputs, their targets) for each block of CHUNK images."""
    for start in range(0, len(pixels), CHUNK):
        yield model.to_inputs(pixels[start : start + CHUNK]), target.take(slice(start, start + CHUNK))


def _for_classes(call, inputs: np.ndarray, target: Target):
    """``call(inputs, classes)`` for the target's positive classes and, for a pair, its negative ones:
    both through one call on a doubled batch, whose outputs come back split into the two halves."""
    if target.negative is None:
        return call(inputs, target.positive), None
    m = len(inputs)
    out = call(np.concatenate([inputs, inputs]), np.concatenate([target.positive, target.negative]))
    return tuple(o[:m] for o in out), tuple(o[m:] for o in out)


def objective_gradient(
    model: InspectableModel, pixels: np.ndarray, target: Target
) -> tuple[np.ndarray, np.ndarray]:
    """The objective (N,) and its gradient with respect to the pixels (N, 28, 28), float64
    (a pair's: the difference of its two classes' gradients)."""
    scale = np.asarray(model.preprocess.scale, np.float64)
    values, grads = [], []
    for inputs, t in _chunks(model, pixels, target):
        (v, g), negative = _for_classes(lambda x, units: model.input_gradient(x, "output", units), inputs, t)
        if negative is not None:
            v, g = v - negative[0], g - negative[1]
        values.append(np.asarray(v, np.float64))
        grads.append(
            np.asarray(g, np.float64).reshape(len(inputs), SIZE, SIZE) / scale
        )  # d/d pixel = d/d input / scale
    return np.concatenate(values), np.concatenate(grads)


# ----- the methods: each takes (model, images (N, 28, 28) float64, target, **its options) -----


def _gradient(model, images, target):
    values, grads = objective_gradient(model, images, target)
    return {"maps": grads, "objective": values}


def _gradient_x_input(model, images, target):
    values, grads = objective_gradient(model, images, target)
    return {"maps": images * grads, "objective": values}


def _baseline_images(baseline: Any, images: np.ndarray) -> np.ndarray:
    base = np.asarray(baseline, np.float64)
    if base.ndim == 0 or base.shape in ((SIZE, SIZE), images.shape):
        return np.broadcast_to(base, images.shape)
    raise ConfigError(
        f"baseline must be a pixel level or a 28x28 image (or one per image), got shape {base.shape}"
    )


def gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Points in (0, 1) and their weights (summing to 1) for integrating over the path."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return (nodes + 1) / 2, weights / 2


def _integrated_gradients(model, images, target, *, baseline, steps):
    steps = _positive_int("steps", steps)
    base = _baseline_images(baseline, images)
    alphas, weights = gauss_legendre(steps)
    maps = np.empty_like(images)
    per_block = max(1, CHUNK // steps)
    for start in range(0, len(images), per_block):
        x, b = images[start : start + per_block], base[start : start + per_block]
        path = b[:, None] + alphas[None, :, None, None] * (x - b)[:, None]  # (n, steps, 28, 28)
        _, grads = objective_gradient(
            model, path.reshape(-1, SIZE, SIZE), target.take(slice(start, start + len(x))).repeat(steps)
        )
        maps[start : start + len(x)] = (x - b) * np.tensordot(
            grads.reshape(len(x), steps, SIZE, SIZE), weights, axes=([1], [0])
        )
    objective = objective_values(model, images, target)
    at_baseline = objective_values(model, np.ascontiguousarray(base), target)
    error = maps.sum(axis=(1, 2)) - (objective - at_baseline)
    return {
        "maps": maps, "objective": objective, "baseline_objective": at_baseline, "completeness_error": error,
    }


def _smoothgrad(model, images, target, *, samples, noise, seed):
    samples = _positive_int("samples", samples)
    if not float(noise) >= 0:
        raise ConfigError(f"noise must be a standard deviation in pixel levels (>= 0), got {noise}")
    rng = np.random.default_rng(seed)
    maps = np.empty_like(images)
    per_block = max(1, CHUNK // samples)
    for start in range(0, len(images), per_block):
        x = images[start : start + per_block]
        noisy = x[:, None] + float(noise) * rng.standard_normal((len(x), samples, SIZE, SIZE))
        _, grads = objective_gradient(
            model, noisy.reshape(-1, SIZE, SIZE), target.take(slice(start, start + len(x))).repeat(samples)
        )
        maps[start : start + len(x)] = grads.reshape(len(x), samples, SIZE, SIZE).mean(axis=1)
    return {"maps": maps, "objective": objective_values(model, images, target)}


def occlusion_windows(window: int, stride: int, size: int = SIZE) -> list[int]:
    """Start positions along one axis: every ``stride`` pixels, the last window cut at the border
    (Captum's Occlusion places its windows the same way)."""
    if not 1 <= window <= size or not 1 <= stride <= window:
        raise ConfigError(
            f"occlusion needs 1 <= stride <= window <= {size}, got window {window}, stride {stride}"
        )
    count = int(np.ceil((size - window) / stride)) + 1
    return [i * stride for i in range(count)]


def _occlusion(model, images, target, *, window, stride, baseline):
    window, stride = _positive_int("window", window), _positive_int("stride", stride)
    starts = occlusion_windows(window, stride)
    fill = _baseline_images(baseline, images)
    objective = objective_values(model, images, target)
    maps = np.zeros_like(images)
    counts = np.zeros((SIZE, SIZE))
    boxes = [(slice(r, r + window), slice(c, c + window)) for r in starts for c in starts]
    for box in boxes:
        counts[box] += 1
    for i in range(len(images)):
        occluded = np.repeat(images[i][None], len(boxes), axis=0)
        for k, box in enumerate(boxes):
            occluded[k][box] = fill[i][box]
        drops = objective[i] - objective_values(model, occluded, target.take(np.full(len(boxes), i)))
        for drop, box in zip(drops, boxes):
            maps[i][box] += drop
    return {"maps": maps / counts, "objective": objective}


def upsample_bilinear(maps: np.ndarray, size: int = SIZE) -> np.ndarray:
    """(N, h, w) -> (N, size, size), pixel centres aligned (torch's bilinear, align_corners=False)."""

    def axis(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(size) + 0.5) * (n_in / size) - 0.5, 0)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    r0, r1, wr = axis(maps.shape[1])
    c0, c1, wc = axis(maps.shape[2])
    rows = maps[:, r0, :] * (1 - wr)[None, :, None] + maps[:, r1, :] * wr[None, :, None]
    return rows[:, :, c0] * (1 - wc) + rows[:, :, c1] * wc


def map_layers(model: InspectableModel, shapes: dict[str, tuple[int, ...]] | None = None) -> list[str]:
    """Layers whose activations are maps (C, H, W): the layers Grad-CAM can weight."""
    shapes = shapes or layer_shapes(model)
    return [name for name in model.layer_names() if is_conv(shapes[name])]


def _gradcam(model, images, target, *, layer):
    shapes = layer_shapes(model)
    candidates = map_layers(model, shapes)
    if not candidates:
        raise ConfigError(f"gradcam needs a layer of maps (C, H, W); this {model.kind} has only "
                          f"{', '.join(model.layer_names())}: use gradient, ig, smoothgrad or occlusion")
    layer = layer or last_conv_layer(model) or candidates[-1]
    if layer not in candidates:
        raise ConfigError(
            f"gradcam needs a layer of maps; {layer!r} is not one. Map layers: {', '.join(candidates)}"
        )
    cams, values = [], []
    for inputs, t in _chunks(model, images, target):
        (v, acts, grads), negative = _for_classes(
            lambda x, units: model.layer_gradient(x, "output", units, layer), inputs, t
        )
        if (
            negative is not None
        ):  # the activations are the image's own; the objective and gradient are differences
            v, grads = v - negative[0], grads - negative[2]
        weights = np.asarray(grads, np.float64).mean(axis=(2, 3))  # (m, C): each map's importance
        cams.append(np.maximum(np.einsum("nc,nchw->nhw", weights, np.asarray(acts, np.float64)), 0))
        values.append(np.asarray(v, np.float64))
    layer_maps = np.concatenate(cams)
    return {
        "maps": upsample_bilinear(layer_maps), "objective": np.concatenate(values), "layer": layer,
        "layer_maps": layer_maps,
    }


_IMPLEMENTATIONS = {
    "gradient": _gradient,
    "gradient-x-input": _gradient_x_input,
    "ig": _integrated_gradients,
    "smoothgrad": _smoothgrad,
    "occlusion": _occlusion,
    "gradcam": _gradcam,
}


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive whole number, got {value!r}")
    return int(value)


def method_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """The method's options with defaults filled in; an unknown method or option lists the valid ones."""
    if method not in METHODS:
        raise ConfigError(f"unknown attribution method {method!r}; choose one of: {', '.join(METHODS)}")
    unknown = [k for k in options if k not in METHODS[method]]
    if unknown:
        valid = ", ".join(METHODS[method]) or "none"
        raise ConfigError(f"{method} has no option {unknown[0]!r}; its options: {valid}")
    return {**METHODS[method], **{k: v for k, v in options.items() if v is not None}}


def attribute_target(model: InspectableModel, images: np.ndarray, target: Target, method: str = "gradient",
                     **options: Any) -> Attribution:
    """``attribute`` for an already resolved per-image Target (the sanity check keeps the trained
    model's target while the weights change)."""
    chosen = method_options(method, options)
    images = as_images(images)
    t0 = time.perf_counter()
    parts = _IMPLEMENTATIONS[method](model, images, target, **chosen)
    maps = parts.pop("maps").astype(np.float32)
    return Attribution(method, target, images.astype(np.float32), maps, options=chosen,
                       seconds=time.perf_counter() - t0, **parts)


def attribute(model: InspectableModel, images: np.ndarray, target: Any = None, method: str = "gradient",
              **options: Any) -> Attribution:
    """Attribution maps of ``images`` (raw pixels, (N, 28, 28) or one (28, 28)) for ``target``.

    ``target``: None (each image's predicted class), a class (4) or a pair ("4,9": p(4) - p(9)).
    ``method`` and its options: see METHODS and the module doc.
    """
    method_options(method, options)  # a bad method or option fails before any model call
    images = as_images(images)
    proba = np.concatenate([model.predict_proba(images[s : s + CHUNK]) for s in range(0, len(images), CHUNK)])
    return attribute_target(model, images, resolve_target(target, proba), method, **options)



def attribute_each_class(
    model: InspectableModel, image: np.ndarray, method: str = "gradient", **options: Any
) -> Attribution:
    """One image's map for every class: row k explains p(k)."""
    image = as_images(image)[:1]
    n_classes = model.predict_proba(image).shape[1]
    return attribute_target(
        model, np.repeat(image, n_classes, axis=0), Target(np.arange(n_classes)), method, **options
    )
