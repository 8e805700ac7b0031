"""Does an attribution map explain the model, or only the image? (Adebayo et al., "Sanity Checks
for Saliency Maps", NeurIPS 2018.)

Cascading randomization: the weights of the top layer are re-initialized, then those of the next
layer down as well, and so on to the first; after each step the map is computed again, for the
same images and the same target as the trained model's map, and compared with it by Spearman's
rank correlation per image. A method that explains the model gives maps that fall apart (a
correlation near 0) once the layers it depends on are random; a map that stays the same mostly
shows the image (its edges, its ink).

Correlations are taken of the maps' absolute values (which pixels matter) and of the signed maps.
A map that is constant (Grad-CAM of a layer gone silent) has no rank order: its correlation is NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..model_api import InspectableModel
from .attribution import CHUNK, Attribution, as_images, attribute_target, resolve_target


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of a 1-D array, ties sharing their mean rank (as Spearman's rho needs)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + ends - 1) / 2)[inverse.reshape(-1)]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two arrays of the same size (NaN when either is constant)."""
    ra, rb = average_ranks(np.ravel(a)), average_ranks(np.ravel(b))
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


@dataclass
class SanityResult:
    method: str
    layers: list[str]  # the cascade, top first: step k has layers[: k + 1] randomized
    trained: Attribution = field(repr=False)
    randomized: list[Attribution] = field(repr=False)  # one per step
    rank_correlation: np.ndarray = field(repr=False)  # (steps, N) of |map| against the trained |map|
    signed_rank_correlation: np.ndarray = field(repr=False)  # (steps, N) of the signed maps
    seed: int = 0

    def table(self) -> list[dict[str, Any]]:
        """One row per step: the layer randomized last and the mean correlations over the images
        whose maps have a rank order (NaN when none has: every map constant)."""
        return [
            {"randomized down to": layer, "spearman |map|": _defined_mean(self.rank_correlation[k]),
             "spearman signed": _defined_mean(self.signed_rank_correlation[k]),
             "undefined": int(np.isnan(self.rank_correlation[k]).sum())}
            for k, layer in enumerate(self.layers)
        ]


def _defined_mean(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def cascading_randomization(
    model: InspectableModel,
    images: np.ndarray,
    target: Any = None,
    method: str = "gradient",
    *,
    seed: int = 0,
    **options: Any,
) -> SanityResult:
    """Maps of ``method`` for the trained model and after each step of cascading randomization."""
    images = as_images(images)
    proba = np.concatenate([model.predict_proba(images[s : s + CHUNK]) for s in range(0, len(images), CHUNK)])
    resolved = resolve_target(target, proba)  # the trained model's classes, kept for the random ones
    layers = list(reversed(model.layers_with_weights()))
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no weighted layers to randomize")
    trained = attribute_target(model, images, resolved, method, **options)
    randomized, absolute, signed = [], [], []
    for k in range(len(layers)):
        random_model = model.with_random_weights(layers[: k + 1], seed=seed)
        result = attribute_target(random_model, images, resolved, method, **options)
        randomized.append(result)
        absolute.append([spearman(np.abs(a), np.abs(b)) for a, b in zip(trained.maps, result.maps)])
        signed.append([spearman(a, b) for a, b in zip(trained.maps, result.maps)])
    return SanityResult(method, layers, trained, randomized, np.array(absolute), np.array(signed), seed)
