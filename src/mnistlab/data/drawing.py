"""Turn a free-hand drawing into an image that looks like an MNIST digit.

MNIST's digits were made this way (LeCun et al.): the ink's bounding box was scaled, keeping its
aspect ratio, to fit a 20x20 box with anti-aliasing (hence the grey edges), and that box was
placed in a 28x28 field so that the centre of mass of the ink sits at the field's centre. A model
trained on MNIST has only ever seen digits of that size and position; a digit drawn small in a
corner of a canvas is far outside what it learnt, so drawings go through the same steps.

Measured on MNIST's test split, the centre of mass in pixel-index coordinates is (13.99, 14.01)
with a spread of 0.29: an integer shift that puts it at index 14, which is what we do.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

FIELD = 28
BOX = 20
MAX_SIDE = 1024  # a canvas larger than this is a mistake, not a drawing
INK_THRESHOLD = 0.02  # fraction of the brightest ink below which a pixel counts as background


def normalize_drawing(drawing: np.ndarray, *, box: int = BOX, field: int = FIELD) -> np.ndarray:
    """A drawing (H, W), ink high (0..255, background 0), as a (field, field) float32 MNIST-style image.

    Steps: crop to the ink's bounding box; scale it (area averaging, aspect ratio kept) so the
    longer side is ``box`` pixels; place it in a ``field`` x ``field`` image with the ink's centre
    of mass at pixel (field // 2, field // 2); stretch the grey levels so the darkest ink is 255.
    An empty drawing gives an all-zero image.
    """
    image = check_drawing(drawing)
    if not 0 < box <= field:
        raise ConfigError(f"box {box} must be between 1 and the field size {field}")
    peak = float(image.max())
    if peak <= 0:
        return np.zeros((field, field), np.float32)
    image = image / peak  # darkest ink 1 first: a faint (even subnormal) drawing must not overflow below
    ink = image > INK_THRESHOLD
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    crop = image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]

    h, w = crop.shape
    scale = box / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    small = _area_matrix(h, new_h) @ crop @ _area_matrix(w, new_w).T  # (new_h, new_w)
    small *= 255.0 / small.max()

    mass = small.sum()
    com_y = (small.sum(axis=1) @ np.arange(new_h)) / mass
    com_x = (small.sum(axis=0) @ np.arange(new_w)) / mass
    # floor(x + 0.5), not round(): Python rounds ties to even, which would move symmetric shapes by parity.
    top = int(np.clip(np.floor(field // 2 - com_y + 0.5), 0, field - new_h))
    left = int(np.clip(np.floor(field // 2 - com_x + 0.5), 0, field - new_w))
    out = np.zeros((field, field), np.float32)
    out[top : top + new_h, left : left + new_w] = small
    return out


def check_drawing(drawing: np.ndarray) -> np.ndarray:
    """The drawing as float64 (H, W) after checking shape, size and the 0..255 range (else ConfigError)."""
    image = np.asarray(drawing)
    if image.ndim != 2:
        raise ConfigError(f"a drawing must be a 2-D array (height, width), got shape {image.shape}")
    h, w = image.shape
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise ConfigError(f"a drawing must be between 1x1 and {MAX_SIDE}x{MAX_SIDE} pixels, got {h}x{w}")
    if image.dtype.kind not in "uif" and image.dtype != np.bool_:
        raise ConfigError(f"a drawing must hold numbers, got dtype {image.dtype}")
    image = image.astype(np.float64)
    if not np.isfinite(image).all():
        raise ConfigError("a drawing must not contain NaN or infinite values")
    if image.min() < 0 or image.max() > 255:
        raise ConfigError(
            f"drawing values must lie in 0..255 (ink high), got {image.min():g}..{image.max():g}"
        )
    return image


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights: output pixel j averages the input span [j, j+1) * n_in / n_out.

    Each weight is the overlap of input pixel i with that span, so shrinking averages (the
    anti-aliasing MNIST has) and enlarging repeats pixels; every row sums to 1.
    """
    step = n_in / n_out
    starts = np.arange(n_out)[:, None] * step  # (n_out, 1)
    lo = np.maximum(starts, np.arange(n_in)[None, :])
    hi = np.minimum(starts + step, np.arange(n_in)[None, :] + 1)
    return np.clip(hi - lo, 0, None) / step
