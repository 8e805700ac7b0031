"""The NumPy multilayer perceptron: parameters, inference and the inspection interface.

Parameters live in one flat buffer (all weights first, then all biases) with per-layer views, so
the optimizer updates every layer with a handful of NumPy calls and regularization can address
"the weights" as one contiguous slice. Weights are stored (in, out): a batch (N, in) times W is the
BLAS-friendly order for row-major batches, and no bias row is ever appended to the inputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from ..data.preprocess import Preprocessor
from ..errors import ConfigError, RunError
from ..model_api import InspectableModel
from . import activations as act
from .config import MLPConfig

# Inference runs in chunks of this many rows so that its buffers stay in cache.
INFER_CHUNK = 2048


def layer_views(
    flat: np.ndarray, shapes: Sequence[tuple[int, int]]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Weight (in, out) and bias (out,) views of each layer of ``shapes`` in a flat buffer that holds
    all weights first, then all biases."""
    weights, biases, pos = [], [], 0
    for n_in, n_out in shapes:
        weights.append(flat[pos : pos + n_in * n_out].reshape(n_in, n_out))
        pos += n_in * n_out
    for _, n_out in shapes:
        biases.append(flat[pos : pos + n_out])
        pos += n_out
    return weights, biases


class MLP(InspectableModel):
    """784-70-30-10 by default; layers ``hidden1`` .. ``hiddenK``, ``output``."""

    kind = "mlp"

    def __init__(
        self,
        config: MLPConfig | None = None,
        *,
        preprocess: Preprocessor | None = None,
        params: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.config = config or MLPConfig()
        self.dtype = np.dtype(self.config.dtype)
        sizes = self.config.sizes
        self.shapes = [(sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1)]
        n_weights = sum(a * b for a, b in self.shapes)
        n_biases = sum(b for _, b in self.shapes)
        self.n_weights = n_weights
        self.params = np.zeros(n_weights + n_biases, self.dtype)
        self.weights, self.biases = self._views(self.params)
        if params is None:
            self.initialize(self.config.seed)
        else:
            self.set_params(params)
        self.preprocess = preprocess or Preprocessor.fit("none", np.zeros((1, 28, 28), np.uint8))

    # ----- parameters -----

    def _views(self, flat: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per-layer weight (in, out) and bias (out,) views into a flat buffer of this layout."""
        return layer_views(flat, self.shapes)

    def initialize(self, seed: int) -> None:
        """He-normal for relu layers, Xavier-uniform (Glorot) for sigmoid/tanh; biases zero."""
        rng = np.random.default_rng(seed)
        last = len(self.shapes) - 1
        for i, (n_in, n_out) in enumerate(self.shapes):
            # with "auto" the output layer feeds softmax/sigmoid, whatever the hidden activation
            scheme = "xavier" if i == last and self.config.init == "auto" else self.config.init_for()
            if scheme == "he":
                w = rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)
            else:
                limit = np.sqrt(6.0 / (n_in + n_out))
                w = rng.uniform(-limit, limit, (n_in, n_out))
            self.weights[i][...] = w
            self.biases[i][...] = 0

    def get_params(self) -> dict[str, np.ndarray]:
        """Copies of the parameters as plain arrays: W1, b1, ..., the format of weights.npz."""
        out = {}
        for i, (w, b) in enumerate(zip(self.weights, self.biases), start=1):
            out[f"W{i}"] = w.copy()
            out[f"b{i}"] = b.copy()
        return out

    def set_params(self, params: Mapping[str, np.ndarray]) -> None:
        for i, (w, b) in enumerate(zip(self.weights, self.biases), start=1):
            for name, target in ((f"W{i}", w), (f"b{i}", b)):
                if name not in params:
                    raise RunError(
                        f"MLP weights lack {name!r}; the run is incomplete or not an MLP of this shape"
                    )
                value = np.asarray(params[name])
                if value.shape != target.shape:
                    raise RunError(
                        f"MLP weight {name} has shape {value.shape}, expected {target.shape}; "
                        "the weights do not match the config"
                    )
                target[...] = value

    @classmethod
    def from_run(cls, record) -> MLP:
        """Rebuild from a RunRecord (see mnistlab.runs.read_run)."""
        config = MLPConfig.from_dict(record.config)
        return cls(config, preprocess=Preprocessor.from_arrays(record.preprocess), params=record.weights)

    # ----- inference -----

    def layer_names(self) -> list[str]:
        return [f"hidden{i}" for i in range(1, len(self.shapes))] + ["output"]

    def to_input_matrix(self, inputs: np.ndarray) -> np.ndarray:
        """Preprocessed inputs (N, 28, 28) or (N, input_size) as a contiguous (N, input_size) array."""
        x = np.asarray(inputs)
        if x.ndim == 1:
            x = x[None]
        x = x.reshape(len(x), -1)
        if x.shape[1] != self.config.input_size:
            raise ConfigError(
                f"inputs have {x.shape[1]} values per image but the model expects {self.config.input_size}; "
                "check the image size"
            )
        return np.ascontiguousarray(x, dtype=self.dtype)

    def activations_from_inputs(self, inputs: np.ndarray, layers: Sequence[str]) -> dict[str, np.ndarray]:
        names = self.check_layers(layers)
        x = self.to_input_matrix(inputs)
        index = {name: i for i, name in enumerate(self.layer_names())}
        deepest = max((index[n] for n in names), default=-1)
        result = {n: np.empty((len(x), self.shapes[index[n]][1]), self.dtype) for n in names}
        for start in range(0, len(x), INFER_CHUNK):
            outs = self._forward_to(x[start : start + INFER_CHUNK], deepest)
            for n in names:
                result[n][start : start + INFER_CHUNK] = outs[index[n]]
        return result

    def _forward_to(self, x: np.ndarray, deepest: int) -> list[np.ndarray]:
        outs = []
        a = x
        last = len(self.shapes) - 1
        for i in range(deepest + 1):
            z = a @ self.weights[i]
            z += self.biases[i]
            a = (
                act.FORWARD[self.config.activation](z)
                if i < last
                else act.OUTPUT_FORWARD[self.config.output](z)
            )
            outs.append(a)
        return outs

    def accuracy(self, inputs: np.ndarray, labels: np.ndarray) -> float:
        """Fraction of correct argmax predictions on preprocessed inputs.

        Runs once per epoch during training, so it reuses its buffers and takes the argmax of the
        logits: softmax and sigmoid are monotonic, so that is the class of highest probability.
        """
        x = self.to_input_matrix(inputs)
        labels = np.asarray(labels)
        chunk = min(INFER_CHUNK, len(x))
        bufs = [np.empty((chunk, n_out), self.dtype) for _, n_out in self.shapes]
        correct = 0
        for start in range(0, len(x), chunk):
            logits = self.logits_from(x[start : start + chunk], self.weights, self.biases, bufs=bufs)
            correct += int(np.count_nonzero(logits.argmax(axis=1) == labels[start : start + chunk]))
        return correct / max(len(x), 1)

    def logits_from(
        self, a: np.ndarray, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray], *, start: int = 0,
        bufs: Sequence[np.ndarray] | None = None,
    ) -> np.ndarray:
        """Logits of the layers ``start``.. given layer ``start``'s input ``a``: hidden activations
        in place, the last layer left raw. ``weights``/``biases`` may be another layout's views
        (the trainer's working copy, whose padded widths hold zeros); each product sums over the
        model's units of the layer below only, as training does, so both give the same bits.
        ``bufs``, one per layer, saves the allocations."""
        hidden = act.FORWARD[self.config.activation]
        fan_in = self.config.sizes
        last = len(weights) - 1
        for i in range(start, last + 1):
            n = fan_in[i]
            z = np.matmul(a[:, :n], weights[i][:n], out=None if bufs is None else bufs[i][: len(a)])
            z += biases[i]
            a = hidden(z) if i < last else z
        return a

    # ----- gradients for analysis -----

    def input_gradient(
        self, inputs: np.ndarray, layer: str, units: Sequence[int] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Activation of unit ``units[i]`` of ``layer`` for item i, and its gradient w.r.t. the inputs.

        Exact backpropagation through the layers below ``layer`` (for ``output``, through the
        softmax or sigmoid to the class probability). Returns values (N,) and grads shaped like
        ``inputs`` ((N, 28, 28) for images).
        """
        inputs = np.asarray(inputs)
        values, grad_in, _ = self._backward(self.to_input_matrix(inputs), layer, units, stop=-1)
        shape = inputs.shape if inputs.ndim > 1 else (1, *inputs.shape)
        return values, grad_in.reshape(shape)

    def layer_gradient(
        self, inputs: np.ndarray, layer: str, units: Sequence[int] | np.ndarray, wrt: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``input_gradient`` objective's gradient w.r.t. the activations of layer ``wrt`` (at or
        below ``layer``), with those activations: values (N,), activations and gradients (N, units)."""
        names = self.layer_names()
        (wrt,) = self.check_layers([wrt])
        if names.index(wrt) > names.index(self.check_layers([layer])[0]):
            raise ConfigError(
                f"layer {wrt!r} comes after {layer!r}; the gradient needs a layer at or below it"
            )
        values, grad, outs = self._backward(self.to_input_matrix(inputs), layer, units, stop=names.index(wrt))
        return values, outs[names.index(wrt)], grad

    def _backward(
        self, x: np.ndarray, layer: str, units: Sequence[int] | np.ndarray, stop: int
    ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Values of unit ``units[i]`` of ``layer`` and their gradient w.r.t. the activations of layer
        ``stop`` (-1: the inputs), by exact backpropagation; also every activation up to ``layer``."""
        (layer,) = self.check_layers([layer])
        n = len(x)
        depth = self.layer_names().index(layer)
        width = self.shapes[depth][1]
        units = np.asarray(units).reshape(-1)
        if units.size == 1 and n > 1:
            units = np.full(n, int(units[0]))
        if units.shape != (n,):
            raise ConfigError(f"units must give one unit per input ({n}), got {units.size}")
        if (
            not np.issubdtype(units.dtype, np.integer)
            or units.min(initial=0) < 0
            or units.max(initial=0) >= width
        ):
            raise ConfigError(f"units must be integers in 0..{width - 1} for layer {layer!r}")
        outs = self._forward_to(x, depth)
        rows = np.arange(n)
        a = outs[depth]
        values = a[rows, units].copy()
        if stop == depth:  # d value / d its own layer's activations: one-hot
            grad = np.zeros_like(a)
            grad[rows, units] = 1
            return values, grad, outs
        # d value / d z of the chosen layer: only the chosen unit (or, through softmax, every logit).
        delta = np.zeros_like(a)
        if depth == len(self.shapes) - 1 and self.config.output == "softmax":
            delta -= a * values[:, None]
            delta[rows, units] += values
        else:
            name = self.config.output if depth == len(self.shapes) - 1 else self.config.activation
            delta[rows, units] = act.derivative(name, values)
        for i in range(depth, -1, -1):
            grad_in = delta @ self.weights[i].T  # (N, in): d value / d activations of layer i - 1
            if i == stop + 1:
                break
            delta = grad_in * act.derivative(self.config.activation, outs[i - 1])
        return values, grad_in, outs

    # ----- re-initialization, for the attribution sanity check -----

    def layers_with_weights(self) -> list[str]:
        return self.layer_names()

    def with_random_weights(self, layers, seed: int = 0) -> MLP:
        names = self.layer_names()
        fresh = MLP(dataclasses.replace(self.config, seed=seed))
        params = self.get_params()
        for name in self.check_layers(list(layers)):
            i = names.index(name)
            params[f"W{i + 1}"], params[f"b{i + 1}"] = fresh.weights[i], fresh.biases[i]
        return MLP(self.config, preprocess=self.preprocess, params=params)

    def __repr__(self) -> str:
        c = self.config
        return f"MLP({'-'.join(map(str, c.sizes))}, {c.activation}/{c.output}, {c.dtype})"
