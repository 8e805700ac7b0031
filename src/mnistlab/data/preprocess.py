"""Pixel preprocessing, fitted on the training split only and saved with every model.

A ``Preprocessor`` maps raw images (N, 28, 28) with pixel values 0..255 (uint8 or float) to the
float32 inputs a model sees, of the same shape. The same object is applied to test images and to
a digit drawn on the web page, so every image goes through exactly what the training data did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

KINDS = ("standard", "unit", "none")
# "affine": per-pixel mean and scale set by an imported model (its own rescaling folded in), never fitted
LOADABLE_KINDS = KINDS + ("affine",)


@dataclass(frozen=True)
class Preprocessor:
    kind: str
    mean: np.ndarray  # (28, 28) float32; zeros for "unit"/"none"
    scale: np.ndarray  # (28, 28) float32; inputs are (pixels - mean) / scale

    @classmethod
    def fit(cls, kind: str, train_images: np.ndarray) -> Preprocessor:
        """Fit on the training images only: test statistics must never leak into the model."""
        if kind not in KINDS:
            raise ConfigError(f"unknown preprocessing {kind!r}; choose one of: {', '.join(KINDS)}")
        shape = train_images.shape[1:]
        if kind == "standard":
            pixels = train_images.reshape(len(train_images), -1).astype(np.float64)
            mean = pixels.mean(axis=0)
            std = pixels.std(axis=0)
            # Pixels that never vary (MNIST's corners) get scale 1, as scikit-learn's StandardScaler
            # does: dividing by ~0 would blow up any stroke drawn there later.
            std[std < 1e-8] = 1.0
            return cls(kind, mean.reshape(shape).astype(np.float32), std.reshape(shape).astype(np.float32))
        zeros = np.zeros(shape, np.float32)
        scale = np.full(shape, 255.0 if kind == "unit" else 1.0, np.float32)
        return cls(kind, zeros, scale)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.shape[-2:] != self.mean.shape:
            shape = ", ".join(map(str, self.mean.shape))
            if images.shape[-1:] == (self.mean.size,):  # rows of flattened pixels, as from fetch_openml
                raise ConfigError(
                    f"images have shape {images.shape[-2:]}: rows of {self.mean.size} pixels; the model "
                    f"takes (N, {shape}) images, so pass images.reshape(-1, {shape})"
                )
            raise ConfigError(
                f"images have shape {images.shape[-2:]} but the model was trained on {self.mean.shape}; "
                "resize them first"
            )
        return ((images.astype(np.float32) - self.mean) / self.scale).astype(np.float32, copy=False)

    def invert(self, inputs: np.ndarray) -> np.ndarray:
        """Model inputs back to pixel values (float, not clipped): for showing OIPs as images."""
        return np.asarray(inputs, np.float32) * self.scale + self.mean

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"kind": np.array(self.kind), "mean": self.mean, "scale": self.scale}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Preprocessor:
        try:
            kind = str(arrays["kind"])
            mean, scale = arrays["mean"].astype(np.float32), arrays["scale"].astype(np.float32)
        except KeyError as exc:
            raise ConfigError(f"preprocessing parameters lack {exc}; the run is incomplete") from None
        if kind not in LOADABLE_KINDS or mean.shape != scale.shape:
            raise ConfigError(f"preprocessing parameters are invalid (kind {kind!r}); the run is corrupt")
        return cls(kind, mean, scale)
