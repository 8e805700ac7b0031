"""Small NumPy models that implement InspectableModel, for the inspect/viz tests.

They never touch the real engines: a conv net (conv -> max pool -> flatten -> dense -> output)
and an MLP (hidden -> output), with hand-written forward passes and exact backward passes, so
input gradients can be checked by finite differences and analysis results against planted units.

The planted story (``planted_convnet`` + ``planted_arrays``): every "4" has a bright square in the
top-left corner, no "9" has one; both 4s and half of the 9s have a bright square in the middle.
Conv map 0 is a brightness detector, so its top-left positions are active in all 4s and no 9
(red) and its middle positions in all 4s and some 9s (yellow). Dense node 0 sums map 0 over the
top-left region: the most discriminative node between 4 and 9.
"""

from __future__ import annotations

import numpy as np

from mnistlab.data import Dataset, Preprocessor
from mnistlab.model_api import InspectableModel

CORNER = (slice(3, 9), slice(3, 9))  # the square only 4s have (pixel rows, cols)
MIDDLE = (slice(12, 18), slice(12, 18))  # the square all 4s and some 9s have


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _softmax_backward(p: np.ndarray, grad_p: np.ndarray) -> np.ndarray:
    return p * (grad_p - (grad_p * p).sum(axis=1, keepdims=True))


class TinyConvNet(InspectableModel):
    """conv1 (C 3x3 valid, relu) -> pool1 (max 2) -> flatten -> dense1 (relu) -> output (softmax)."""

    kind = "cnn"

    def __init__(self, kernels, conv_bias, w1, b1, w2, b2, preprocess: Preprocessor | None = None):
        self.k = np.asarray(kernels, np.float64)  # (C, 3, 3)
        self.kb = np.asarray(conv_bias, np.float64)  # (C,)
        self.w1, self.b1 = np.asarray(w1, np.float64), np.asarray(b1, np.float64)  # (C*13*13, H), (H,)
        self.w2, self.b2 = np.asarray(w2, np.float64), np.asarray(b2, np.float64)  # (H, 10), (10,)
        self.preprocess = preprocess or Preprocessor.fit("unit", np.zeros((1, 28, 28), np.uint8))

    def layer_names(self):
        return ["conv1", "pool1", "flatten", "dense1", "output"]

    def layer_roles(self):
        return {
            "conv1": "map", "pool1": "pass-through", "flatten": "pass-through", "dense1": "vector",
            "output": "vector",
        }

    # ----- forward with caches -----
    def _forward(self, x):
        x = np.asarray(x, np.float64)
        n = len(x)
        patches = np.stack(
            [x[:, dy : dy + 26, dx : dx + 26] for dy in range(3) for dx in range(3)], axis=1
        )  # (N, 9, 26, 26)
        z1 = (
            np.einsum("nkhw,ck->nchw", patches, self.k.reshape(len(self.k), 9)) + self.kb[None, :, None, None]
        )
        a1 = np.maximum(z1, 0)
        windows = a1.reshape(n, -1, 13, 2, 13, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, -1, 13, 13, 4)
        arg = windows.argmax(axis=-1)
        p1 = np.take_along_axis(windows, arg[..., None], axis=-1)[..., 0]
        f = p1.reshape(n, -1)
        z2 = f @ self.w1 + self.b1
        h = np.maximum(z2, 0)
        out = _softmax(h @ self.w2 + self.b2)
        acts = {"conv1": a1, "pool1": p1, "flatten": f, "dense1": h, "output": out}
        return acts, {"z1": z1, "arg": arg, "z2": z2}

    def activations_from_inputs(self, inputs, layers):
        acts, _ = self._forward(inputs)
        return {name: acts[name].astype(np.float32) for name in self.check_layers(layers)}

    def input_gradient(self, inputs, layer, units):
        self.check_layers(layer)
        acts, cache = self._forward(inputs)
        n = len(inputs)
        units = np.asarray(units, int)
        rows = np.arange(n)
        target = acts[layer]
        grad = np.zeros_like(target)
        if target.ndim == 4:
            values = target[rows, units].mean(axis=(1, 2))
            grad[rows, units] = 1.0 / (target.shape[2] * target.shape[3])
        else:
            values = target[rows, units]
            grad[rows, units] = 1.0
        order = self.layer_names()
        for name in reversed(order[: order.index(layer) + 1]):
            if name == "output":
                grad = _softmax_backward(acts["output"], grad) @ self.w2.T
            elif name == "dense1":
                grad = (grad * (cache["z2"] > 0)) @ self.w1.T
            elif name == "flatten":
                grad = grad.reshape(acts["pool1"].shape)
            elif name == "pool1":
                full = np.zeros(acts["pool1"].shape + (4,))
                np.put_along_axis(full, cache["arg"][..., None], grad[..., None], axis=-1)
                c = full.shape[1]
                grad = full.reshape(n, c, 13, 13, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, 26, 26)
            elif name == "conv1":
                gz = grad * (cache["z1"] > 0)
                gx = np.zeros((n, 28, 28))
                for dy in range(3):
                    for dx in range(3):
                        gx[:, dy : dy + 26, dx : dx + 26] += np.einsum("nchw,c->nhw", gz, self.k[:, dy, dx])
                grad = gx
        return values.astype(np.float32), grad.astype(np.float32)


class TinyMLP(InspectableModel):
    """hidden1 (relu) -> output (softmax), on flattened inputs."""

    kind = "mlp"

    def __init__(self, w1, b1, w2, b2, preprocess: Preprocessor | None = None):
        self.w1, self.b1 = np.asarray(w1, np.float64), np.asarray(b1, np.float64)
        self.w2, self.b2 = np.asarray(w2, np.float64), np.asarray(b2, np.float64)
        self.preprocess = preprocess or Preprocessor.fit("unit", np.zeros((1, 28, 28), np.uint8))

    def layer_names(self):
        return ["hidden1", "output"]

    def _forward(self, x):
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        z = x @ self.w1 + self.b1
        h = np.maximum(z, 0)
        return x, z, h, _softmax(h @ self.w2 + self.b2)

    def activations_from_inputs(self, inputs, layers):
        _, _, h, p = self._forward(inputs)
        acts = {"hidden1": h, "output": p}
        return {name: acts[name].astype(np.float32) for name in self.check_layers(layers)}

    def input_gradient(self, inputs, layer, units):
        self.check_layers(layer)
        _, z, h, p = self._forward(inputs)
        rows, units = np.arange(len(inputs)), np.asarray(units, int)
        if layer == "output":
            grad = np.zeros_like(p)
            grad[rows, units] = 1.0
            grad_h = _softmax_backward(p, grad) @ self.w2.T
            values = p[rows, units]
        else:
            grad_h = np.zeros_like(h)
            grad_h[rows, units] = 1.0
            values = h[rows, units]
        grad_x = (grad_h * (z > 0)) @ self.w1.T
        return values.astype(np.float32), grad_x.reshape(len(inputs), 28, 28).astype(np.float32)


# ----- the planted story -----

def planted_arrays(
    n_per_class: int = 12, seed: int = 0, n_test_per_class: int | None = None
) -> dict[str, np.ndarray]:
    """Train/test arrays in the layout of mnistlab.data (uint8 images, uint8 labels)."""
    rng = np.random.default_rng(seed)

    def make(n):
        images, labels = [], []
        for label in range(10):
            for i in range(n):
                img = rng.integers(0, 40, (28, 28)).astype(np.float64)  # dim background texture
                img[22:26, 2 + 2 * label : 4 + 2 * label] = (
                    120  # a dim class tag, below the detector's threshold
                )
                if label == 4:
                    img[CORNER] = 255
                    img[MIDDLE] = 255
                elif label == 9 and i % 2 == 0:
                    img[MIDDLE] = 255
                images.append(img.astype(np.uint8))
                labels.append(label)
        return np.stack(images), np.array(labels, np.uint8)

    train_images, train_labels = make(n_per_class)
    test_images, test_labels = make(n_test_per_class or n_per_class)
    return {"train_images": train_images, "train_labels": train_labels,
            "test_images": test_images, "test_labels": test_labels}


def planted_dataset(n_per_class: int = 12, seed: int = 0) -> Dataset:
    a = planted_arrays(n_per_class, seed)
    return Dataset("mnist", a["train_images"], a["train_labels"], a["test_images"], a["test_labels"],
                   tuple(str(d) for d in range(10)), "synthetic")


def planted_convnet(filters: int = 4, hidden: int = 6, seed: int = 0) -> TinyConvNet:
    rng = np.random.default_rng(seed)
    kernels = rng.normal(0, 0.3, (filters, 3, 3))
    bias = rng.normal(0, 0.05, filters)
    kernels[0] = 1.0 / 9  # map 0: local brightness (inputs are 0..1)
    bias[0] = -0.6  # only bright squares pass: the background and the class tags stay at 0
    w1 = rng.normal(0, 0.01, (filters * 13 * 13, hidden))
    corner = np.zeros((filters, 13, 13))
    corner[0, 1:4, 1:4] = 1.0  # pool1 positions covering the corner square
    w1[:, 0] = corner.ravel()
    b1 = np.zeros(hidden)
    w2 = rng.normal(0, 0.1, (hidden, 10))
    w2[0, 4] += 3.0  # node 0 votes for "4"
    return TinyConvNet(kernels, bias, w1, b1, w2, np.zeros(10))


def planted_mlp(hidden: int = 8, seed: int = 0) -> TinyMLP:
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.02, (784, hidden))
    corner = np.zeros((28, 28))
    corner[CORNER] = 1.0 / 36
    w1[:, 0] = corner.ravel()
    b1 = np.zeros(hidden)
    b1[0] = -0.5
    w2 = rng.normal(0, 0.1, (hidden, 10))
    w2[0, 4] += 3.0
    return TinyMLP(w1, b1, w2, np.zeros(10))


def numeric_gradient(
    model: InspectableModel, inputs: np.ndarray, layer: str, units, eps: float = 1e-4
) -> np.ndarray:
    """Central differences of the input_gradient objective, for checking it (float64 forward)."""
    x = np.asarray(inputs, np.float64)
    grads = np.zeros_like(x)
    units = np.asarray(units)

    def objective(z):
        acts = model._forward(z)
        if isinstance(acts, tuple) and isinstance(acts[0], dict):
            target = acts[0][layer]
        else:
            target = {"hidden1": acts[2], "output": acts[3]}[layer]
        rows = np.arange(len(z))
        t = target[rows, units]
        return t.reshape(len(z), -1).mean(axis=1)

    for r in range(28):
        for c in range(28):
            up, down = x.copy(), x.copy()
            up[:, r, c] += eps
            down[:, r, c] -= eps
            grads[:, r, c] = (objective(up) - objective(down)) / (2 * eps)
    return grads
