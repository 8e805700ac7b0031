"""The one interface that both engines implement and that all analysis code uses.

Conventions (both engines, same names, shapes and meaning):

* *images* are raw pixels, shape (N, 28, 28), values 0..255 (uint8 or float). A model applies its
  own fitted ``preprocess`` to them.
* *inputs* are what the first layer sees: ``model.preprocess(images)``, float32 (N, 28, 28).
* ``activations`` returns conv maps as (N, C, H, W) and dense layers as (N, units), batch first.
  Activations are taken after the layer's nonlinearity. ``output`` holds class probabilities.
* Layer names: MLP ``hidden1``, ``hidden2``, ..., ``output``; CNN ``conv1``, ``pool1``, ...,
  ``flatten``, ``dense1``, ..., ``output``.
* Layer roles (``layer_roles``), which tell analysis code what a layer is without guessing from
  its name: ``map`` (learned feature maps, (C, H, W)), ``vector`` (learned units, the output
  included), ``pass-through`` (pooling, flatten: a rearrangement or summary of the layer before).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence

import numpy as np

from .data.preprocess import Preprocessor
from .errors import ConfigError


class InspectableModel(ABC):
    kind: str
    preprocess: Preprocessor

    @abstractmethod
    def layer_names(self) -> list[str]:
        """Names of the layers whose activations can be asked for, input to output."""

    @abstractmethod
    def activations_from_inputs(self, inputs: np.ndarray, layers: Sequence[str]) -> dict[str, np.ndarray]:
        """Activations of the named layers for preprocessed inputs (N, 28, 28)."""

    @abstractmethod
    def input_gradient(
        self, inputs: np.ndarray, layer: str, units: Sequence[int] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Objective values (N,) and their gradients d objective / d inputs, (N, 28, 28).

        Item i's objective is the activation of unit ``units[i]`` of ``layer``: for a conv or pool
        layer the mean of map ``units[i]``, for a dense layer node ``units[i]`` (for ``output``,
        the probability of that class). One call handles a whole batch of different units, which
        is what lets activation maximization optimize many maps at once.
        """

    # ----- optional: what attribution (Grad-CAM, sanity checks) needs beyond the above -----

    def layer_gradient(
        self, inputs: np.ndarray, layer: str, units: Sequence[int] | np.ndarray, wrt: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like ``input_gradient``, but with respect to the activations of layer ``wrt`` (at or below
        ``layer``): objective values (N,), the activations of ``wrt`` and d objective / d those
        activations, both shaped as ``activations`` returns them ((N, C, H, W) or (N, units))."""
        raise ConfigError(
            f"{type(self).__name__} gives no gradients with respect to a layer; Grad-CAM needs them"
        )

    def layers_with_weights(self) -> list[str]:
        """The layers that own parameters, input to output (the steps of a cascading randomization)."""
        raise ConfigError(
            f"{type(self).__name__} cannot list its weighted layers; the sanity check needs them"
        )

    def with_random_weights(self, layers: Iterable[str], seed: int = 0) -> InspectableModel:
        """A copy whose named layers hold freshly initialized weights (the engine's own initializer,
        drawn from ``seed``); the other layers keep this model's weights, and this model is untouched."""
        raise ConfigError(
            f"{type(self).__name__} cannot re-initialize its weights; the sanity check needs that"
        )

    # ----- shared behaviour built on the methods above -----

    def layer_roles(self) -> dict[str, str]:
        """{layer name: "map" | "vector" | "pass-through"}, input to output.

        This default reads the role off each activation's shape (one blank image), which is right
        for models without pass-through layers (the MLP); models that have them say so themselves.
        """
        probe = self.activations_from_inputs(
            self.to_inputs(np.zeros((1, 28, 28), np.uint8)), self.layer_names()
        )
        return {name: "map" if np.ndim(values) == 4 else "vector" for name, values in probe.items()}

    def check_layers(self, layers: Iterable[str] | str | None) -> list[str]:
        """Validate layer names; None means all. An unknown name lists the valid ones."""
        valid = self.layer_names()
        if layers is None:
            return list(valid)
        if isinstance(layers, str):
            layers = [layers]
        layers = list(layers)
        unknown = [name for name in layers if name not in valid]
        if unknown:
            raise ConfigError(f"unknown layer {unknown[0]!r}; valid layers: {', '.join(valid)}")
        return layers

    def to_inputs(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim == 2:
            images = images[None]
        if images.ndim == 3:
            return self.preprocess(images)
        raise ConfigError(f"expected images of shape (N, 28, 28), got {images.shape}")

    def activations(
        self, images: np.ndarray, layers: Iterable[str] | str | None = None
    ) -> dict[str, np.ndarray]:
        """Activations of the named layers (all when None) for raw images (N, 28, 28)."""
        names = self.check_layers(layers)
        return self.activations_from_inputs(self.to_inputs(images), names)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 10) for raw images (N, 28, 28)."""
        return self.activations(images, ["output"])["output"]

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.predict_proba(images).argmax(axis=1)
